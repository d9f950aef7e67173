"""The pages' login through the OpenID Connect provider (SSO, :mod:`ioc.auth.sso`; docs/security.md).

``/auth/sso/login`` sends the browser to the provider; ``/auth/sso/callback`` takes it back, checks who logged in
and opens the same kind of server-side session as a local login (cookie + CSRF token), so logging out, the idle
limit and the live feeds' closing work unchanged. Every refusal is a small page saying why, and opens no session.
"""

from __future__ import annotations

import html
import inspect
import logging
import re
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from ioc.api.deps import Role, get_pool, requires
from ioc.api.routes_auth import local_path, set_session_cookies
from ioc.auth import sso, store
from ioc.auth.model import OIDC_ACTOR
from ioc.auth.service import Authenticator, client_address

logger = logging.getLogger(__name__)
router = APIRouter(tags=["auth"])
DEFAULT_NEXT = "/ops"


@router.get("/api/auth/sso", dependencies=[requires(Role.PUBLIC)])
async def sso_status(request: Request) -> dict[str, Any]:
    """Whether the login page offers the login through the provider (and where it starts)."""
    client = _client(request)
    return {"enabled": client is not None and client.problem() is None, "login": "/auth/sso/login"}


@router.get("/auth/sso/login", include_in_schema=False, dependencies=[requires(Role.PUBLIC)])
async def sso_login(request: Request) -> Response:
    """Send the browser to the provider's login (``?next=``: a path on this site to land on afterwards)."""
    addr = client_address(request)
    next_path = request.query_params.get("next") or DEFAULT_NEXT
    if not local_path(next_path):
        next_path = DEFAULT_NEXT  # a link made to send people elsewhere after logging in
    try:
        client = _ready_client(request)
        url, cookie = await client.start(_redirect_uri(request), next_path)
    except sso.SsoError as err:
        logger.info("SSO login not started for %s: %s", addr, err.reason)
        return _page(err.status, "Không đăng nhập được / Login failed", err.reason)
    resp = RedirectResponse(url, status_code=303)
    resp.set_cookie(sso.FLOW_COOKIE, cookie, max_age=sso.FLOW_MAX_AGE_S, path=sso.CALLBACK_PATH, httponly=True,
                    secure=_auth(request).cookie_secure(request), samesite="lax")  # lax: the provider sends it back
    return resp


@router.get(sso.CALLBACK_PATH, include_in_schema=False, dependencies=[requires(Role.PUBLIC)])
async def sso_callback(request: Request) -> Response:
    """Where the provider sends the browser back: code -> ID token -> a session, then on to the ``next`` page."""
    auth, addr, query = _auth(request), client_address(request), request.query_params
    try:
        client = _ready_client(request)
        if not await _allowed(auth.allow_login_from(addr)):
            raise sso.SsoError(429, "too many login attempts from this address; wait a minute")
        error = query.get("error")
        if error:  # the person cancelled, or the provider would not log them in (no state from some providers)
            code = error if re.fullmatch(r"[a-z_]{1,40}", error) else "error"  # its description: anyone's words
            raise sso.SsoError(403 if code == "access_denied" else 400,
                               f"the identity provider did not log you in ({code})")
        flow = client.read_flow(request.cookies.get(sso.FLOW_COOKIE), query.get("state"))
        if not query.get("code"):
            raise sso.SsoError(400, "the provider's answer holds no code")
        who = await client.finish(flow, query["code"])
    except sso.SsoError as err:
        logger.info("login refused through the OIDC provider from %s: %s", addr, err.reason)
        return _forget_flow(_page(err.status, "Không đăng nhập được / Login failed", err.reason))
    actor = OIDC_ACTOR + who.name
    if who.role is Role.PUBLIC:
        logger.info("login refused for %s (sub %s) from %s: no IOC role in the provider's claims (claim %r, map "
                    "IOC_AUTH__OIDC_ROLE_MAP)", actor, who.subject[:64], addr, auth.config.oidc_role_claim)
        return _forget_flow(_page(403, "Chưa được cấp quyền / No access",
                                  f"The identity provider logged you in as {who.name!r}, but your account holds no "
                                  "IOC role (viewer, officer, supervisor or admin). Ask the IOC administrator to "
                                  "give you one at the provider."))
    async with get_pool(request).acquire() as conn:
        sid, csrf = await store.create_session(conn, auth.config.session_hours, oidc=(who.name, who.role))
    target = flow.next if local_path(flow.next) else DEFAULT_NEXT
    if auth.config.cookie_samesite == "strict":
        # A Strict session cookie set at the end of a redirect chain that began at the provider's site may not go
        # with the next navigation; a page of our own navigating onward is same-site.
        resp: Response = _page(200, "Đã đăng nhập / Logged in", "Continuing…", link=target, refresh=True)
    else:
        resp = RedirectResponse(target, status_code=303)
    set_session_cookies(request, resp, sid, csrf)
    logger.info("login: %s (%s) through the OIDC provider from %s", actor, who.role.label, addr)
    return _forget_flow(resp)


async def _allowed(verdict: Any) -> bool:
    # The login limiter is being moved to PostgreSQL (ioc/auth/throttle.py), where its checks are coroutines.
    return bool(await verdict) if inspect.isawaitable(verdict) else bool(verdict)


def _auth(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.auth
    return auth


def _client(request: Request) -> sso.SsoClient | None:
    """The app's SSO client (made on first use), ``None`` when the login through the provider is not configured."""
    client: sso.SsoClient | None = getattr(request.app.state, "sso", None)
    auth = _auth(request)
    if client is None and auth.oidc is not None and sso.configured(auth.config):
        client = request.app.state.sso = sso.SsoClient(auth.config, auth.oidc)
    return client


def _ready_client(request: Request) -> sso.SsoClient:
    client = _client(request)
    if client is None:
        raise sso.SsoError(404, "login through the identity provider is not configured here (IOC_AUTH__OIDC_ISSUER "
                                "and IOC_AUTH__OIDC_CLIENT_ID); log in with a local user")
    problem = client.problem()
    if problem is not None:
        logger.warning("SSO login asked for, but %s", problem)
        raise sso.SsoError(503, f"login through the identity provider is not fully configured: {problem}")
    return client


def _redirect_uri(request: Request) -> str:
    base = _auth(request).config.oidc_redirect_base or str(request.base_url)
    return base.rstrip("/") + sso.CALLBACK_PATH


def _forget_flow(resp: Response) -> Response:
    resp.delete_cookie(sso.FLOW_COOKIE, path=sso.CALLBACK_PATH)  # one login, one callback
    return resp


def _page(status: int, title: str, message: str, link: str = "/login", refresh: bool = False) -> HTMLResponse:
    """A small page in the login page's style (no script, no inline style: the CSP forbids both)."""
    href = html.escape(link, quote=True)
    meta = f'<meta http-equiv="refresh" content="0;url={href}">' if refresh else ""
    label = "Tiếp tục / Continue" if refresh else "Về trang đăng nhập / Back to the login page"
    kind = "error" if status >= 400 else "note"
    body = (f'<!doctype html><html lang="vi"><head><meta charset="utf-8">{meta}<title>IOC · {html.escape(title)}'
            '</title><link rel="icon" href="data:,"><link rel="stylesheet" href="/wall/ops.css"></head><body><main>'
            f'<div class="login card"><h2>{html.escape(title)}</h2><p class="{kind}" role="alert" id="sso-reason">'
            f'{html.escape(message)}</p><p><a class="button" href="{href}">{label}</a></p></div></main></body></html>')
    return HTMLResponse(body, status_code=status, headers={"Cache-Control": "no-store"})


__all__ = ["router"]
