"""The HTTP edge: allowed hosts, CORS allowlist, security headers (a strict CSP on the pages), a request
body cap, the login redirect of the pages, and /docs behind a setting. Installed by the app factory."""

from __future__ import annotations

import base64
import hashlib
import html
import logging
import re
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ioc.api.deps import Role, requires
from ioc.auth.config import AuthConfig
from ioc.auth.service import CSRF_HEADER, PAGE_PATHS

logger = logging.getLogger(__name__)

_LOGIN_REDIRECT = ('<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0;url=/login?next={next}">'
                   '<title>Log in</title><p><a href="/login?next={next}">Log in</a> to see this page.</p>')


def install(app: FastAPI, config: AuthConfig) -> None:
    """Add the middleware, the pages' login redirect and the docs routes to ``app``."""
    app.add_middleware(SecurityHeaders, csp=config.csp)
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    if config.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=config.cors_origins, allow_credentials=False,
                           allow_methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
                           allow_headers=["Authorization", "Content-Type", CSRF_HEADER])
    if config.allowed_hosts != ["*"]:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=config.allowed_hosts)

    @app.exception_handler(StarletteHTTPException)
    async def pages_go_to_login(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 401 and request.scope.get("method") == "GET" and request.url.path in PAGE_PATHS:
            here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
            return HTMLResponse(_LOGIN_REDIRECT.format(next=html.escape(quote(here, safe=""))), status_code=401)
        return await http_exception_handler(request, exc)

    if config.docs != "off":
        role = Role.PUBLIC if config.docs == "public" else Role.VIEWER

        @app.get("/openapi.json", include_in_schema=False, dependencies=[requires(role)])
        async def openapi() -> JSONResponse:
            return JSONResponse(app.openapi())

        @app.get("/docs", include_in_schema=False, dependencies=[requires(role)])
        async def docs() -> HTMLResponse:
            return swagger_page(app.title + " - API")

        @app.get("/docs/assets/{name}", include_in_schema=False, dependencies=[requires(role)])
        async def docs_asset(name: str) -> FileResponse:
            if name not in DOCS_ASSETS:
                raise StarletteHTTPException(404, "no such asset")
            return FileResponse(DOCS_ASSET_DIR / name, headers={"cache-control": "max-age=86400"})


# Swagger UI's own files, shipped in a wheel (fastapi-offline): /docs works in a control room cut off from the
# internet, and its page gets a CSP like the others (its one inline script allowed by its hash).
DOCS_ASSET_DIR = Path(str(resources.files("fastapi_offline") / "static"))
DOCS_ASSETS = frozenset({"swagger-ui-bundle.js", "swagger-ui.css", "favicon.png"})
_INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)


def swagger_page(title: str) -> HTMLResponse:
    """The Swagger UI page on the self-hosted assets, with a CSP that allows only its own inline script."""
    page = get_swagger_ui_html(openapi_url="/openapi.json", title=title,
                               swagger_js_url="/docs/assets/swagger-ui-bundle.js",
                               swagger_css_url="/docs/assets/swagger-ui.css",
                               swagger_favicon_url="/docs/assets/favicon.png")
    body = bytes(page.body).decode()
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(m.encode()).digest()).decode()}'"
                      for m in _INLINE_SCRIPT.findall(body))
    page.headers["content-security-policy"] = (
        f"default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
    return page


class SecurityHeaders:
    """Headers on every HTTP response; the CSP (no inline script or style, no framing) on HTML pages (the
    Swagger UI page brings its own, :func:`swagger_page`)."""

    def __init__(self, app: ASGIApp, csp: str) -> None:
        self.app, self.csp = app, csp.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def sender(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                extra = [(b"x-content-type-options", b"nosniff"), (b"referrer-policy", b"no-referrer"),
                         (b"x-frame-options", b"DENY"), (b"cross-origin-opener-policy", b"same-origin")]
                ctype = next((v for k, v in headers if k.lower() == b"content-type"), b"")
                if ctype.startswith(b"text/html"):  # a page that brings its own CSP keeps it
                    extra.append((b"content-security-policy", self.csp))
                headers += [(k, v) for k, v in extra if k not in names]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, sender)


class BodyLimit:
    """413 for a request body over ``max_bytes``: by its Content-Length, or while it streams in (the app
    then sees the client disconnect and whatever it answers is dropped)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope.get("headers", [])).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await _too_large(self.max_bytes)(scope, receive, send)
            return
        seen, started, refused = 0, False, False

        async def limited_receive() -> Message:
            nonlocal seen, refused
            if refused:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes and not started:
                    refused = True
                    await _too_large(self.max_bytes)(scope, receive, send)
                    return {"type": "http.disconnect"}
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if refused:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except Exception:
            if not refused:
                raise


def _too_large(max_bytes: int) -> Any:
    return JSONResponse({"detail": f"request body over {max_bytes} bytes"}, status_code=413)
