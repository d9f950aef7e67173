"""The text rule at the HTTP edge, for every route at once (:mod:`ingest.text` says what the rule is).

One app-level dependency checks each request's query string, path and JSON body before any handler runs,
so a route added tomorrow is covered without anyone remembering to: officers' notes, silence reasons,
roster names and anything else that reaches the database, a screen or a log line. A refused character is
a 422 naming it; nothing is half-applied. WebSocket messages go through :func:`bad_text_in_message`.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import HTTPException
from starlette.requests import HTTPConnection, Request

from ingest.text import TextError, check_text, find_bad_text


async def check_request_text(connection: HTTPConnection) -> None:
    """Refuse (422) a request whose path, query or JSON body holds text the rule refuses."""
    if connection.scope["type"] != "http":
        return  # WebSocket subscriptions are parsed by strict filters; their messages by bad_text_in_message
    try:
        check_text(connection.url.path, field="the path")
        for key, value in connection.query_params.multi_items():
            check_text(key, field="a query parameter name")
            check_text(value, field=f"query parameter {key!r}")
    except TextError as err:
        raise HTTPException(422, str(err)) from None
    if not isinstance(connection, Request):
        return
    if "json" not in connection.headers.get("content-type", ""):
        return
    body = await connection.body()  # cached by Starlette: the route reads the same bytes again
    if not body:
        return
    try:  # the stdlib parser, as FastAPI's own: it lets "\\ud800" escapes through, and those we must see
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return  # not JSON: the route's own validation answers 422
    found = find_bad_text(doc)
    if found:
        raise HTTPException(422, f"the request body contains {found}; text may not hold NUL, control "
                                 "characters, lone surrogates or bidirectional overrides")


def bad_text_in_message(doc: Any) -> str | None:
    """For WebSocket messages: why ``doc`` is refused by the text rule, or None."""
    found = find_bad_text(doc)
    return None if found is None else f"the message contains {found}"
