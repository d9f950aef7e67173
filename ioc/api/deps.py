"""Dependencies shared by every router: who is calling (``require_access``), the role a route needs
(``requires``), the database pool and backend."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, HTTPException, Request, WebSocket
from fastapi.params import Depends as DependsParam
from starlette.requests import HTTPConnection

from ioc.auth.model import AuthError, Principal, Role
from ioc.auth.secrets import same
from ioc.auth.service import CSRF_HEADER, PAGE_PATHS, PRINCIPAL_SCOPE_KEY, Authenticator, client_address
from storage.db import Backend, SchemaNotReady, read_backend

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: All a session waiting for its user's second factor may reach (IOC_AUTH__MFA_REQUIRED_ROLES); public routes too.
MFA_SETUP_PATHS = frozenset({"/api/auth/me", "/api/auth/logout", "/api/auth/mfa/setup", "/api/auth/mfa/confirm"})
MFA_SETUP_DETAIL = ("your role needs a second factor: set one up first (POST /api/auth/mfa/setup, then "
                    "/api/auth/mfa/confirm; the login page walks you through it)")
_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


async def require_access(connection: HTTPConnection) -> Principal | None:
    """Who is calling (``None``: anonymous). Every route depends on this one function, set on the app so that
    it runs first: the role the route declares (:func:`requires`) is checked here already, before anything
    reads the request's body. A route that declares no role is closed to all but admins."""
    route = connection.scope.get("route")
    declared = declared_role(route) if route is not None else None
    if declared is Role.PUBLIC:
        try:
            return await identify(connection)
        except HTTPException:
            return None
    principal = await identify(connection)
    needed = Role.ADMIN if declared is None else declared
    if principal is None:
        raise HTTPException(401, "log in or present a token", headers=_UNAUTHORIZED)
    if principal.mfa_pending and connection.scope["path"] not in MFA_SETUP_PATHS:
        # a page sends the browser back to the login page, which walks the user through the setup
        raise HTTPException(401 if connection.scope["path"] in PAGE_PATHS else 403, MFA_SETUP_DETAIL)
    if principal.role < needed:
        raise HTTPException(403, f"needs the {needed.label} role; you are {principal.role.label}"
                            + ("" if declared is not None else " (this route declares no role)"))
    await guard_state_change(connection, principal)
    return principal


async def identify(connection: HTTPConnection) -> Principal | None:
    """The caller; 401 for a credential that is presented but not valid."""
    auth: Authenticator | None = getattr(connection.app.state, "auth", None)
    if auth is None:
        raise HTTPException(503, "authentication is not set up in this app")
    try:
        return await auth.identify(connection)
    except AuthError as err:
        raise HTTPException(401, str(err), headers=_UNAUTHORIZED) from None


def _allowed(principal: Principal | None, role: Role) -> bool:
    return principal is not None and principal.role >= role


def requires(role: Role) -> DependsParam:
    """The role a route or router needs, declared where the route is declared:
    ``@router.get("/x", dependencies=[requires(Role.OFFICER)])``, or as a parameter to get the caller:
    ``me: Annotated[Principal, requires(Role.OFFICER)]``. Anonymous -> 401, lower role -> 403; a
    state-changing request on a cookie session also needs the session's CSRF token in ``X-CSRF-Token``,
    and counts against the action rate limit. Tests enumerate the app's routes and check each declares one."""

    async def check(connection: HTTPConnection) -> Principal | None:
        if role is Role.PUBLIC:
            try:
                return await identify(connection)
            except HTTPException:
                return None  # a stale credential does not lock anyone out of the login page
        principal = await identify(connection)
        if principal is None:
            raise HTTPException(401, "log in or present a token", headers=_UNAUTHORIZED)
        if principal.role < role:
            raise HTTPException(403, f"needs the {role.label} role; you are {principal.role.label}")
        await guard_state_change(connection, principal)
        return principal

    check.required_role = role  # type: ignore[attr-defined]  # read by the route-enumeration test
    return Depends(check)


async def guard_state_change(connection: HTTPConnection, principal: Principal) -> None:
    """A state-changing HTTP request (POST, PUT, PATCH, DELETE) on a cookie session needs the session's CSRF token
    in ``X-CSRF-Token``, and every one counts against the caller's action rate. Run by :func:`require_access` for
    every authenticated route, declared role or not, and by :func:`requires`; once per request."""
    if connection.scope["type"] != "http" or connection.scope["method"] in SAFE_METHODS:
        return
    if connection.scope.get(_GUARDED_SCOPE_KEY):
        return
    if principal.via == "session" and not _csrf_ok(connection, principal):
        raise HTTPException(403, "missing or wrong X-CSRF-Token header")
    if not await connection.app.state.auth.allow_action(principal):
        raise HTTPException(429, "too many requests; slow down")
    connection.scope[_GUARDED_SCOPE_KEY] = True


_GUARDED_SCOPE_KEY = "ioc.state_change_checked"


def _csrf_ok(connection: HTTPConnection, principal: Principal) -> bool:
    sent = connection.headers.get(CSRF_HEADER, "")
    return bool(sent and principal.csrf and same(sent, principal.csrf))


def connection_principal(connection: HTTPConnection) -> Principal | None:
    """The caller already identified for this request or WebSocket (by its route's role check)."""
    principal: Principal | None = connection.scope.get(PRINCIPAL_SCOPE_KEY)
    return principal


async def recheck(connection: HTTPConnection) -> Principal | None:
    """The caller of a long-lived connection looked up again (a WebSocket action after a logout, a password
    change, a disabled user or a revoked token is refused); ``None`` when the credential no longer holds."""
    connection.scope.pop(PRINCIPAL_SCOPE_KEY, None)
    try:
        return await identify(connection)
    except HTTPException:
        return None


async def websocket_origin(ws: WebSocket) -> None:
    """Refuse (403 at the handshake) a browser page from another origin: the page's own origin and
    ``IOC_AUTH__WS_ORIGINS`` are allowed; clients that send no Origin (not browsers) are too."""
    origin = ws.headers.get("origin")
    if origin is None:
        return
    config = ws.app.state.auth.config
    parts = urlsplit(origin)
    host = ws.headers.get("host", "")
    if (parts.netloc == host and parts.scheme in ("http", "https")) or origin in config.ws_origins:
        return
    raise HTTPException(403, f"WebSocket from origin {origin[:100]!r} refused")


@contextlib.asynccontextmanager
async def websocket_slot(ws: WebSocket) -> AsyncIterator[None]:
    """At most ``IOC_AUTH__WS_PER_CLIENT`` open feeds per client address (429 at the handshake beyond)."""
    auth: Authenticator = ws.app.state.auth
    key = client_address(ws)
    if auth.ws_open.get(key, 0) >= auth.config.ws_per_client:
        raise HTTPException(429, f"too many open feeds from {key} (IOC_AUTH__WS_PER_CLIENT)")
    auth.ws_open[key] = auth.ws_open.get(key, 0) + 1
    try:
        yield
    finally:
        left = auth.ws_open[key] - 1
        if left:
            auth.ws_open[key] = left
        else:
            del auth.ws_open[key]


def declared_role(route: Any) -> Role | None:
    """The role a route declares through :func:`requires` (its own or its router's), else ``None``."""
    if id(route) in _DECLARED:
        return _DECLARED[id(route)][1]
    dependant = getattr(route, "dependant", None)
    if dependant is None:
        return None
    stack, roles = [dependant], []
    while stack:
        dep = stack.pop()
        role = getattr(dep.call, "required_role", None)
        if role is not None:
            roles.append(role)
        stack.extend(dep.dependencies)
    found = max(roles) if roles else None
    _DECLARED[id(route)] = (route, found)  # the route is kept so that its id is never reused
    return found


_DECLARED: dict[int, tuple[Any, Role | None]] = {}


def iter_routes(routes: Any, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every route of an app or router as (full path, route), into included routers too."""
    for route in routes:
        inner = getattr(route, "original_router", None)  # FastAPI keeps included routers as one entry
        if inner is not None:
            yield from iter_routes(inner.routes, prefix + route.include_context.prefix)
        else:
            yield prefix + getattr(route, "path", ""), route


def get_pool(request: Request) -> Any:
    """The asyncpg pool, or 503 while the database is unavailable."""
    pool = request.app.state.pool
    if pool is None:
        raise HTTPException(503, "database not available yet")
    return pool


async def get_backend(request: Request) -> Backend:
    """The storage backend (read once from the database), or 503 while the schema is missing."""
    backend: Backend | None = request.app.state.backend
    if backend is None:
        async with get_pool(request).acquire() as conn:
            try:
                backend = await read_backend(conn)
            except SchemaNotReady as err:
                raise HTTPException(503, str(err)) from None
        request.app.state.backend = backend
    return backend


PoolDep = Annotated[Any, Depends(get_pool)]
BackendDep = Annotated[Backend, Depends(get_backend)]
CurrentPrincipal = Annotated[Principal | None, Depends(require_access)]

__all__ = ["BackendDep", "CurrentPrincipal", "PoolDep", "Principal", "Role", "connection_principal", "declared_role",
           "iter_routes", "recheck", "require_access", "requires", "websocket_origin", "websocket_slot"]
