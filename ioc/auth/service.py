"""Who is calling: one :class:`Authenticator` per app turns a request's credential into a Principal.

Credentials, in order: ``Authorization: Bearer <token>`` (an ``ioct_`` API token, else an OIDC JWT when
OIDC is configured), then the ``ioc_session`` cookie. A ``?token=`` query parameter is accepted only on the
WebSocket handshake and on the page routes (a wall display's link, exchanged at once for a session cookie).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from limits import RateLimitItem, parse
from starlette.requests import HTTPConnection

from ioc.auth import store
from ioc.auth.config import AuthConfig
from ioc.auth.model import AuthError, Principal
from ioc.auth.oidc import OidcVerifier
from ioc.auth.secrets import TOKEN_PREFIX
from ioc.auth.throttle import Throttle

logger = logging.getLogger(__name__)

SESSION_COOKIE = "ioc_session"
DEVICE_COOKIE = "ioc_device"  # a browser the user logged in from before (login route only)
CSRF_COOKIE = "ioc_csrf"
CSRF_HEADER = "x-csrf-token"
PAGE_PATHS = frozenset({"/", "/ops"})
PRINCIPAL_SCOPE_KEY = "ioc.principal"


class Authenticator:
    """Resolves credentials (cached on the request scope) and holds the rate limiters: counted in PostgreSQL
    across replicas when ``pool_of`` gives the app's pool, else (and while that fails) per process
    (ioc/auth/throttle.py)."""

    def __init__(self, config: AuthConfig, pool_of: Callable[[], Any] | None = None) -> None:
        self.config = config
        self.oidc = OidcVerifier(config) if config.oidc_issuer else None
        self.throttle = Throttle(pool_of)
        self._login_rate: RateLimitItem = parse(config.login_rate)
        self._login_address_rate: RateLimitItem = parse(config.login_rate_per_address)
        self._login_account_rate: RateLimitItem = parse(config.login_rate_per_account)
        self._action_rate: RateLimitItem = parse(config.action_rate)
        self.ws_open: dict[str, int] = {}

    async def identify(self, conn: HTTPConnection) -> Principal | None:
        """The caller, ``None`` when anonymous; :class:`AuthError` for a presented credential that is bad."""
        if PRINCIPAL_SCOPE_KEY in conn.scope:
            cached: Principal | None = conn.scope[PRINCIPAL_SCOPE_KEY]
            return cached
        principal = await self._identify(conn)
        conn.scope[PRINCIPAL_SCOPE_KEY] = principal
        return principal

    async def _identify(self, conn: HTTPConnection) -> Principal | None:
        kind, value = presented(conn) or ("", "")
        if kind == "bearer":
            return await self._from_bearer(conn, value)
        if kind == "session":
            async with _pool(conn).acquire() as db:
                # an ended session (idle too, if a person's) is simply anonymous
                return await store.session_principal(db, value, self.config.idle_timeout_min * 60.0)
        return None

    async def _from_bearer(self, conn: HTTPConnection, bearer: str) -> Principal:
        if bearer.startswith(TOKEN_PREFIX):
            async with _pool(conn).acquire() as db:
                principal = await store.token_principal(db, bearer)
            if principal is None:
                raise AuthError("unknown, expired or revoked API token")
            return principal
        if self.oidc is not None and bearer.count(".") == 2:
            return await self.oidc.verify(bearer)
        raise AuthError("unrecognised bearer token")

    async def allow_login_from(self, client: str) -> bool:
        """Per address, any user name (password spraying): checked first, before anything is looked up."""
        return await self.throttle.hit("login-address", self._login_address_rate, client)

    async def allow_login(self, client: str, username: str, known_device: bool = False) -> bool:
        """Per address and account, and per account from anywhere; the account as the login looks it up (``" Admin
        "`` is ``admin``), known or not, so that a refusal tells nothing about which names exist. A browser the
        user logged in from before (``known_device``) is not held by the per-account limit: someone hammering an
        officer's name from elsewhere does not lock the officer out (OWASP's device cookies)."""
        account = username.strip().lower()[:64]
        return (await self.throttle.hit("login", self._login_rate, client, account)
                and (known_device or await self.throttle.hit("login-account", self._login_account_rate, account)))

    async def allow_action(self, principal: Principal) -> bool:
        """State-changing requests and WebSocket actions per caller (its kind of credential and name)."""
        return await self.throttle.hit("action", self._action_rate, principal.via, principal.name)

    def cookie_secure(self, conn: HTTPConnection) -> bool:
        mode = self.config.cookie_secure
        return mode == "always" or (mode == "auto" and conn.url.scheme in ("https", "wss"))


def presented(conn: HTTPConnection) -> tuple[str, str] | None:
    """The credential a request or WebSocket presents, the one :meth:`Authenticator.identify` reads:
    ``("bearer", value)``, ``("session", cookie value)`` or ``None``."""
    bearer = _bearer(conn)
    if bearer is None and (conn.scope["type"] == "websocket" or conn.url.path in PAGE_PATHS):
        bearer = conn.query_params.get("token") or None
    if bearer is not None:
        return "bearer", bearer
    sid = conn.cookies.get(SESSION_COOKIE)
    return ("session", sid) if sid else None


def _bearer(conn: HTTPConnection) -> str | None:
    header = conn.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def _pool(conn: HTTPConnection) -> Any:
    from fastapi import HTTPException

    pool = conn.app.state.pool
    if pool is None:
        raise HTTPException(503, "database not available yet")
    return pool


def client_address(conn: HTTPConnection) -> str:
    return conn.client.host if conn.client else "unknown"
