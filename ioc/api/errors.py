"""The error answers every route may give, declared once for the OpenAPI schema (found by benchmarks.api_fuzz).

Every route can answer 401/403 (authentication and roles are app-wide), 413 (body cap), 422 (the text rule
and validation), 429 (rate limits) and 503 (database away), and most 404 or 409: declared here for all of
them at once, so the schema says what clients really get. A 422 from FastAPI's validation carries a list in
``detail``; our own 422s (the text rule, checks in routes) carry a sentence: the schema allows both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from pydantic import BaseModel, Field


class ErrorDetail(BaseModel):
    """An error answer: what went wrong, in words (or FastAPI's list of validation errors)."""

    detail: str | list[dict[str, Any]] = Field(description="the reason")


_ERROR = {"model": ErrorDetail}
COMMON_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {**_ERROR, "description": "Bad request"},
    401: {**_ERROR, "description": "No or invalid credential"},
    403: {**_ERROR, "description": "The caller's role may not do this"},
    404: {**_ERROR, "description": "Not found"},
    409: {**_ERROR, "description": "Conflicts with the current state"},
    413: {**_ERROR, "description": "Request body too large"},
    429: {**_ERROR, "description": "Rate limited"},
    503: {**_ERROR, "description": "Database or stage not available"},
}


def widen_validation_error(app: FastAPI) -> None:
    """Let the schema's 422 body hold a sentence as well as FastAPI's list of validation errors."""
    original: Callable[[], dict[str, Any]] = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = original()
        validation = schema.get("components", {}).get("schemas", {}).get("HTTPValidationError")
        if validation is not None:
            detail = validation["properties"]["detail"]
            validation["properties"]["detail"] = {"title": "Detail", "anyOf": [
                {k: v for k, v in detail.items() if k != "title"}, {"type": "string"}]}
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
