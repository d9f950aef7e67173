"""The control-room screens: the wall display at ``/``, the operator view at ``/ops`` (incident list,
incident and device pages, silences) and their static assets under ``/wall/`` (no build step)."""

from __future__ import annotations

import hashlib
import logging
import re
from pathlib import Path
from typing import Annotated
from urllib.parse import urlencode

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import RedirectResponse

from ioc.api.deps import PoolDep, Principal, Role, requires

logger = logging.getLogger(__name__)
router = APIRouter(tags=["wall"])

WALL_DIR = Path(__file__).resolve().parents[2] / "dashboards" / "wall"

# Only these types are served: a stray file in the folder (notes, backups) never leaks out.
CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
}
# One flat name, no leading dot: nothing like "..", "a/b" or ".env" can reach the file system.
_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,99}")


@router.get("/", include_in_schema=False)
async def wall_index(request: Request, pool: PoolDep, me: Annotated[Principal, requires(Role.VIEWER)]) -> Response:
    """The wall display page. ``/?token=<viewer token>`` (a wall's link) opens a session and drops the token."""
    return await _token_to_session(request, pool, me) or _serve("index.html", request)


@router.get("/ops", include_in_schema=False)
async def ops_index(request: Request, pool: PoolDep, me: Annotated[Principal, requires(Role.VIEWER)]) -> Response:
    """The operator view (its pages are addressed by the URL fragment: ``#/incidents/7``, ``#/devices/X``)."""
    return await _token_to_session(request, pool, me) or _serve("ops.html", request)


async def _token_to_session(request: Request, pool: PoolDep, me: Principal) -> Response | None:
    """A page opened with ``?token=``: exchange the API token for a session cookie and reload without it, so
    the token leaves the address bar and the history (the session ends when the token is revoked)."""
    if "token" not in request.query_params or me.token_id is None or me.via != "token":
        return None
    from ioc.api.routes_auth import set_session_cookies
    from ioc.auth import store

    async with pool.acquire() as conn:
        sid, csrf = await store.create_session(conn, request.app.state.auth.config.session_hours,
                                               token_id=me.token_id)
    rest = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
    response = RedirectResponse(request.url.path + (f"?{rest}" if rest else ""), status_code=303)
    set_session_cookies(request, response, sid, csrf)
    return response


def serve_page(name: str, request: Request) -> Response:
    """A file of the screens' folder (the login page uses it)."""
    return _serve(name, request)


@router.get("/wall/{name}", include_in_schema=False, dependencies=[requires(Role.PUBLIC)])
async def wall_asset(name: str, request: Request) -> Response:
    """A script, style sheet or image of the wall display."""
    return _serve(name, request)


def _serve(name: str, request: Request) -> Response:
    path = WALL_DIR / name
    media_type = CONTENT_TYPES.get(path.suffix.lower())
    if not _NAME_RE.fullmatch(name) or media_type is None or path.resolve().parent != WALL_DIR.resolve():
        raise HTTPException(404, "not found")
    try:
        body = path.read_bytes()  # a few small files: reading them per request keeps edits live
    except (FileNotFoundError, IsADirectoryError):
        raise HTTPException(404, "not found") from None
    # no-cache means "revalidate", so a new deploy shows up on the next reload; the ETag keeps that cheap.
    etag = '"' + hashlib.blake2b(body, digest_size=12).hexdigest() + '"'
    headers = {"Cache-Control": "no-cache", "ETag": etag, "X-Content-Type-Options": "nosniff"}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type=media_type, headers=headers)
