"""Large answers: read a few at a time, encoded off the event loop.

FastAPI validates a route's rows against its ``response_model`` and encodes them on the event loop: a
100,000-row telemetry answer held it ~0.9 s, and 32 such requests at once made another address's API call
take 6-9 s and a screen's snapshot time out. A route whose answer may be large reads its rows inside
:func:`heavy_slot`: at most ``AT_ONCE`` such answers are read and built at once, first come first served; a
caller (the authenticated name, else the address) may have ``PER_CALLER`` waiting or running, else 429; at most
``WAITING`` wait in all, else 503; both with ``Retry-After``; answers of at most ``LARGE_ROWS`` rows skip it. The
four are settings (``IOC_AUTH__HEAVY_AT_ONCE``, ``_PER_CALLER``, ``_WAITING``, ``_LARGE_ROWS``); the constants here
are their defaults. Telemetry answers with :func:`json_rows`: the rows as they are (its queries give exactly its
models' fields) encoded by orjson, on a worker thread when there are many: byte for byte what the model's
serialisation gives, ~12 times faster. Routes whose rows are free-form (alerts, incidents, findings, ...) or go
through a model answer with :func:`json_model`: pydantic's own validation and encoding, on a worker thread when
there are many (~70 ms for 5,000 alerts or 10,000 devices). The model stays the route's ``response_model`` for
the schema.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import orjson
from fastapi import HTTPException, Request, Response
from pydantic import TypeAdapter
from starlette.concurrency import run_in_threadpool

from ioc.api.deps import connection_principal
from ioc.auth.config import AuthConfig

_DEFAULTS = AuthConfig.model_fields
#: Defaults of ``IOC_AUTH__HEAVY_AT_ONCE``, ``_PER_CALLER``, ``_WAITING`` and ``_LARGE_ROWS`` (an app's settings win;
#: these serve a request without an app, e.g. in unit tests).
#: Large answers read and built at once, per process (each takes a database connection and a thread).
AT_ONCE: int = _DEFAULTS["heavy_at_once"].default
#: Large answers one caller may have waiting or being built (a screen asks one or two at a time).
PER_CALLER: int = _DEFAULTS["heavy_per_caller"].default
#: Large answers that may wait in all.
WAITING: int = _DEFAULTS["heavy_waiting"].default
#: Answers that may hold more rows than this (their ``limit``) take a slot.
LARGE_ROWS: int = _DEFAULTS["heavy_large_rows"].default
RETRY_AFTER_S = 2
#: Above this many rows an answer is encoded on a worker thread (under it the hop costs more than it saves).
THREAD_ROWS = 2000


@dataclass(frozen=True, slots=True)
class Limits:
    at_once: int
    per_caller: int
    waiting: int
    large_rows: int


def limits_of(request: Request) -> Limits:
    """The app's ``IOC_AUTH__HEAVY_*`` settings, else the module's defaults."""
    state = getattr(getattr(request, "app", None), "state", None)
    config = getattr(getattr(state, "auth", None), "config", None)
    if isinstance(config, AuthConfig):
        return Limits(config.heavy_at_once, config.heavy_per_caller, config.heavy_waiting, config.heavy_large_rows)
    return Limits(AT_ONCE, PER_CALLER, WAITING, LARGE_ROWS)


class _Gate:
    def __init__(self, at_once: int) -> None:
        self.slots = asyncio.Semaphore(at_once)
        self.waiting = 0
        self.by_caller: Counter[str] = Counter()


# One gate per event loop (a process serves from one) and per setting of the slots, so two apps in one test process
# with different settings do not share theirs.
_gates: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, _Gate]] = weakref.WeakKeyDictionary()


def _gate(at_once: int = 0) -> _Gate:
    """The loop's gate of ``at_once`` slots (0: the module's ``AT_ONCE``)."""
    at_once = at_once or AT_ONCE
    loop = asyncio.get_running_loop()
    gates = _gates.setdefault(loop, {})
    gate = gates.get(at_once)
    if gate is None:
        gate = gates[at_once] = _Gate(at_once)
    return gate


def _refuse(status: int, why: str) -> HTTPException:
    return HTTPException(status, why, headers={"Retry-After": str(RETRY_AFTER_S)})


def is_large(request: Request, rows: int) -> bool:
    """Whether an answer of ``rows`` rows takes a slot."""
    return rows > limits_of(request).large_rows


@contextlib.asynccontextmanager
async def heavy_slot(request: Request, rows: int) -> AsyncIterator[None]:
    """Hold one of the ``AT_ONCE`` slots for reading and building an answer of up to ``rows`` rows, when that is
    more than ``LARGE_ROWS`` (429/503 when too many wait)."""
    limits = limits_of(request)
    if rows <= limits.large_rows:
        yield
        return
    gate = _gate(limits.at_once)
    principal = connection_principal(request)
    caller = f"user:{principal.actor}" if principal else f"address:{request.client.host if request.client else '?'}"
    if gate.by_caller[caller] >= limits.per_caller:
        raise _refuse(429, f"you already have {limits.per_caller} large answers in progress; retry later")
    if gate.waiting >= limits.waiting:
        raise _refuse(503, "too many large answers are waiting to be built; retry later")
    gate.by_caller[caller] += 1
    try:
        gate.waiting += 1
        try:
            await gate.slots.acquire()
        finally:
            gate.waiting -= 1
        try:
            yield
        finally:
            gate.slots.release()
    finally:
        gate.by_caller[caller] -= 1
        if not gate.by_caller[caller]:
            del gate.by_caller[caller]


def _default(value: Any) -> Any:
    if isinstance(value, Decimal):  # e.g. sum() of integers: as the model's int/float field would give
        return int(value) if value == value.to_integral_value() else float(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


def encode_rows(rows: Sequence[dict[str, Any]]) -> bytes:
    """Rows as JSON, as pydantic would serialise them (times in UTC end in ``Z``, NaN and infinities null)."""
    return orjson.dumps(rows, default=_default, option=orjson.OPT_UTC_Z)


async def json_model(rows: Any, adapter: TypeAdapter[Any], headers: dict[str, str] | None = None,
                     size: int | None = None) -> Response:
    """A 200 answer of ``rows`` validated and encoded by ``adapter`` (as FastAPI's ``response_model`` would), on a
    worker thread when there are many (``size``: how many rows a document holds in all, default ``len(rows)``)."""
    def build() -> bytes:
        return adapter.dump_json(adapter.validate_python(rows))

    body = await run_in_threadpool(build) if (len(rows) if size is None else size) > THREAD_ROWS else build()
    return Response(body, media_type="application/json", headers=headers)


#: The free-form rows of most list routes.
ANY_ROWS: TypeAdapter[list[dict[str, Any]]] = TypeAdapter(list[dict[str, Any]])
#: A free-form document (an incident or alert with its lists).
ANY_DOC: TypeAdapter[dict[str, Any]] = TypeAdapter(dict[str, Any])


async def json_rows(rows: Sequence[dict[str, Any]], headers: dict[str, str] | None = None) -> Response:
    """A 200 answer of ``rows``, encoded on a worker thread when there are many."""
    body = await run_in_threadpool(encode_rows, rows) if len(rows) > THREAD_ROWS else encode_rows(rows)
    return Response(body, media_type="application/json", headers=headers)
