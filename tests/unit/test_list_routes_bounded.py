"""Every GET route answering a JSON array is bounded: a ``limit`` with a maximum, or a size fixed by construction.

The routes are read from the app's own OpenAPI document, so a list route added tomorrow without a bound fails
here without anyone listing it (one request must never build an unbounded answer on the event loop: issue #1).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.routing import APIRoute

from ioc.api.app import create_app
from ioc.api.deps import iter_routes
from ioc.settings import Settings

pytestmark = pytest.mark.unit

#: GET routes answering an array without a ``limit``, and why their size is bounded by construction.
BOUNDED_BY_CONSTRUCTION = {
    # one row per district of the city file, read once at start
    "/api/districts": "districts of the city file",
    # one row per (district, device kind): the city file's districts (and none) x the 3 device kinds
    "/api/summary": "districts x device kinds",
    # hours <= 12 and bucket_min >= 1 (their Query bounds): at most 720 buckets
    "/api/ui/kpis": "hours / bucket_min buckets, both bounded",
}
#: The largest ``limit`` a list route may accept (telemetry's raw points, served through the slots).
MAX_LIMIT = 100_000


def _is_array(schema: dict[str, Any] | None) -> bool:
    if not schema:
        return False
    return schema.get("type") == "array" or any(_is_array(s) for s in schema.get("anyOf", []) + schema.get("oneOf", []))


def _array_get_routes() -> dict[str, dict[str, Any]]:
    spec = create_app(Settings()).openapi()
    out = {}
    for path, ops in spec["paths"].items():
        op = ops.get("get")
        content = (op or {}).get("responses", {}).get("200", {}).get("content", {})
        if op and _is_array(content.get("application/json", {}).get("schema")):
            out[path] = {p["name"]: p.get("schema", {}) for p in op.get("parameters", []) if p["in"] == "query"}
    return out


def test_every_get_list_route_takes_a_bounded_limit_or_is_bounded_by_construction() -> None:
    routes = _array_get_routes()
    assert len(routes) > 15 and "/api/incidents/live" in routes and "/api/quarantine" in routes
    unbounded = {}
    for path, params in routes.items():
        if path in BOUNDED_BY_CONSTRUCTION:
            assert "limit" not in params, f"{path} takes a limit now: take it off BOUNDED_BY_CONSTRUCTION"
            continue
        limit = params.get("limit")
        if limit is None or not 1 <= limit.get("maximum", MAX_LIMIT + 1) <= MAX_LIMIT:
            unbounded[path] = limit
    assert not unbounded, f"GET list routes without a bounded limit (add one, or explain why not): {unbounded}"
    assert set(BOUNDED_BY_CONSTRUCTION) <= set(routes), "stale entries in BOUNDED_BY_CONSTRUCTION"


def _uses_slot(fn: Callable[..., Any], depth: int = 2) -> bool:
    """Whether ``fn`` (or a helper of its module it calls, ``depth`` deep) enters ``heavy_slot``."""
    names = fn.__code__.co_names
    if "heavy_slot" in names:
        return True
    helpers = (fn.__globals__.get(n) for n in names)
    return depth > 0 and any(inspect.isfunction(h) and h.__module__.startswith("ioc.api.") and _uses_slot(h, depth - 1)
                             for h in helpers)


def test_every_limited_list_route_reads_inside_a_heavy_slot() -> None:
    limited = {p for p, params in _array_get_routes().items() if "limit" in params}
    app = create_app(Settings())
    endpoints = {path: route.endpoint for path, route in iter_routes(app.routes)
                 if isinstance(route, APIRoute) and "GET" in (route.methods or ())}
    missing = sorted(p for p in limited if not _uses_slot(endpoints[p]))
    assert not missing, f"list routes whose large answers do not wait for a heavy_slot: {missing}"
