"""An event's ``detail``: kept whole where ingest stores it, carried bounded everywhere else.

A device may send a detail that fills the payload limit (256 KiB: 9,000 keys, 36,000 JSON nodes). Cleaning it
node by node (:func:`ingest.text.clean_json`) cost the event loop ~25 ms a message, holding it as a tree of
Python objects until its batch committed (about 3 MB each) cost as much again in garbage collection, and it
went whole into every alert's evidence, WebSocket frame and incident row (233 KB each). A detail of a
payload over :data:`VIEW_BYTES` therefore takes two forms:

* ``stored``: the whole detail as JSON text, the text rule applied to the text in one regex pass (no tree
  is built): what ``device_events.detail`` keeps (nothing accepted is lost);
* ``view``: its first keys and values up to :data:`VIEW_BYTES` (strings cut at :data:`VIEW_STRING`
  characters, nesting at :data:`VIEW_DEPTH`), with a ``_truncated`` entry saying how much the whole holds:
  what the record carries on (live frames, alert evidence, incidents).

A detail that fits in the view anyway is carried whole, as smaller payloads' details always are.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from ingest.text import clean_json, clean_scalar, clean_text

#: Payloads up to this many bytes have their detail cleaned and carried whole; a view holds about this much.
VIEW_BYTES = 16 * 1024
#: Longest string (key or value) a view keeps, in characters.
VIEW_STRING = 1024
#: Deepest nesting a view keeps (the rest reads "(nested too deep)").
VIEW_DEPTH = 16
#: What a view counts for a node besides its text (a number, brackets, a separator).
_NODE_COST = 8
#: The key of the marker a cut view carries.
TRUNCATED = "_truncated"

#: In JSON text written by orjson: an escaped backslash (kept, so what follows it is not read as an escape), or
#: a character the text rule refuses (:mod:`ingest.text`): a C0 control but tab/newline/CR (written as \u00XX,
#: \b, \f), DEL and C1 controls, bidirectional overrides (written as they are). No surrogate gets this far:
#: orjson neither reads nor writes a lone one.
_REFUSED_IN_JSON = re.compile(r'\\\\|\\u00(?:0[0-8bcef]|1[0-9a-f])|\\[bf]|[\x7f-\x9f\u202a-\u202e\u2066-\u2069]')
_REFUSED_HINT = re.compile(r'\\u00(?:0[0-8bcef]|1[0-9a-f])|\\[bf]|[\x7f-\x9f\u202a-\u202e\u2066-\u2069]')


def _replace(match: re.Match[str]) -> str:
    found = match.group()
    return found if found == "\\\\" else "\ufffd"


def clean_json_text(text: str) -> str:
    """JSON text (as orjson writes it) with every character the text rule refuses replaced by U+FFFD, as
    :func:`ingest.text.clean_json` does to the document's keys and strings."""
    if text.isascii() and "\\" not in text and "\x7f" not in text:  # the usual case, without a regex's pass
        return text
    return _REFUSED_IN_JSON.sub(_replace, text) if _REFUSED_HINT.search(text) else text


def bound_detail(detail: dict[str, Any], payload_bytes: int) -> tuple[dict[str, Any], str | None]:
    """(view, stored) of an event's raw (parsed, not yet cleaned) ``detail``; ``stored`` is None when the view
    holds it all (the record's detail is then what is stored)."""
    if payload_bytes <= VIEW_BYTES:
        return clean_json(detail), None
    walk = _View()
    view = walk.dict(detail, 0)
    if not walk.cut:
        return view, None
    try:
        stored = clean_json_text(orjson.dumps(detail).decode())
    except (TypeError, orjson.JSONEncodeError):  # the lenient parser's integers past 64 bits, lone surrogates
        stored = orjson.dumps(clean_json(detail)).decode()
    view[TRUNCATED] = {"detail_bytes": len(stored.encode()), "kept_bytes": VIEW_BYTES - walk.budget,
                       "whole_in": "device_events"}
    return view, stored


class _View:
    """A walk that cleans and keeps nodes until its budget is spent (``cut`` then says something was left)."""

    def __init__(self) -> None:
        self.budget = VIEW_BYTES
        self.cut = False

    def _text(self, value: str) -> str:
        if len(value) > VIEW_STRING:
            self.cut = True
        out = clean_text(value[:VIEW_STRING], multiline=True)
        self.budget -= _NODE_COST + len(out)
        return out

    def dict(self, doc: dict[Any, Any], depth: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in doc.items():
            if self.budget <= 0:
                self.cut = True
                break
            out[self._text(str(key))] = self.value(value, depth + 1)
        return out

    def value(self, doc: Any, depth: int) -> Any:
        if isinstance(doc, str):
            return self._text(doc)
        self.budget -= _NODE_COST
        if isinstance(doc, dict | list | tuple) and depth > VIEW_DEPTH:
            self.cut = True
            return "(nested too deep)"
        if isinstance(doc, dict):
            return self.dict(doc, depth)
        if isinstance(doc, list | tuple):
            out = []
            for item in doc:
                if self.budget <= 0:
                    self.cut = True
                    break
                out.append(self.value(item, depth + 1))
            return out
        return clean_scalar(doc)
