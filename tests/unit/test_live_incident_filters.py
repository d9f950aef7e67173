"""``/api/incidents/live`` takes the operator list's filters, each bounded: the OpenAPI document says so."""

from __future__ import annotations

from typing import Any

import pytest

from ioc.api.app import create_app
from ioc.settings import Settings

pytestmark = pytest.mark.unit


def test_live_incidents_filters_are_closed_sets_or_short_codes() -> None:
    spec = create_app(Settings()).openapi()
    op = spec["paths"]["/api/incidents/live"]["get"]
    params = {p["name"]: p["schema"] for p in op["parameters"] if p["in"] == "query"}
    assert set(params) == {"limit", "members_limit", "state", "severity", "category", "district"}
    assert params["limit"]["maximum"] == 5000 and params["members_limit"]["maximum"] == 1000

    def items(schema: dict[str, Any]) -> dict[str, Any]:
        return next(s for s in schema["anyOf"] if s.get("type") == "array")["items"]

    assert items(params["state"])["enum"] == ["open", "acknowledged"]  # the live states only
    ref = items(params["severity"])["$ref"].rsplit("/", 1)[1]  # unknown severities are refused (422)
    assert spec["components"]["schemas"][ref]["enum"] == ["critical", "major", "minor", "warning", "info"]
    for code in ("category", "district"):
        text = next(s for s in params[code]["anyOf"] if s.get("type") == "string")
        assert text["minLength"] == 1 and text["maxLength"] == 64
