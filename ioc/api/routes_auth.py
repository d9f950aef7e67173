"""Logging in and out of the pages, who am I, and the admin's users and API tokens (see docs/security.md)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated, Any, TypeVar
from urllib.parse import urlsplit

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel, ConfigDict, Field

from ioc.api.deps import PoolDep, Principal, Role, requires
from ioc.api.heavy import ANY_ROWS, heavy_slot, json_model
from ioc.api.routes_wall import serve_page
from ioc.auth import mfa, store
from ioc.auth import secrets as sec
from ioc.auth.service import CSRF_COOKIE, DEVICE_COOKIE, SESSION_COOKIE, Authenticator, client_address

logger = logging.getLogger(__name__)
T = TypeVar("T")
AccountsLimit = Annotated[int, Query(ge=1, le=10_000)]
router = APIRouter(tags=["auth"])
#: Password checks (Argon2, tens of ms of CPU each) run on their own two threads: on asyncio's default executor a
#: flood of logins queued the numeric detectors' flushes behind them. Beyond _MAX_WAITING_LOGINS waiting: 429.
_PASSWORDS = ThreadPoolExecutor(max_workers=2, thread_name_prefix="password-check")
_MAX_WAITING_LOGINS = 64
_waiting_logins = 0


class LoginRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64)
    password: str = Field(min_length=1, max_length=1024)
    otp: str | None = Field(None, max_length=64, description="a user with a second factor: the 6-digit code of "
                            "their authenticator app, or one of their recovery codes")


class UserCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    username: str = Field(min_length=1, max_length=64)
    role: str = Field(pattern="^(viewer|officer|supervisor|admin)$")
    password: str | None = Field(None, min_length=sec.MIN_PASSWORD, max_length=1024,
                                 description="default: a random one, returned once")
    display_name: str | None = Field(None, max_length=200)


class TokenCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100)
    role: str = Field(pattern="^(viewer|officer|supervisor|admin)$")
    days: float | None = Field(None, gt=0, le=3650, description="default IOC_AUTH__TOKEN_DAYS")


def _auth(request: Request) -> Authenticator:
    auth: Authenticator = request.app.state.auth
    return auth


@router.get("/login", include_in_schema=False, dependencies=[requires(Role.PUBLIC)])
async def login_page(request: Request) -> Response:
    """The login page (a form posting to /api/auth/login); its ``?next=`` must be a path on this site."""
    if not all(local_path(n) for n in request.query_params.getlist("next")):
        return RedirectResponse("/login", status_code=303)  # a link made to send people elsewhere after logging in
    return serve_page("login.html", request)


def local_path(target: str) -> bool:
    """True when a browser reads ``target`` as a path on this site. Browsers drop tabs and newlines from a URL and
    read ``\\`` as ``/``, so ``/<TAB>/evil`` and ``/\\evil`` are ``//evil``: another site."""
    cleaned = re.sub(r"[\t\n\r]", "", target).replace("\\", "/")
    return (cleaned.startswith("/") and not cleaned.startswith("//")
            and not any(ord(c) < 0x20 or c == "\x7f" for c in cleaned))


@router.post("/api/auth/login", dependencies=[requires(Role.PUBLIC)], response_model=None,
             responses={401: {"description": "wrong user name, password or code; ``mfa_required: true`` when the "
                              "password was right and the user's second factor's code is missing or wrong"}})
async def login(request: Request, response: Response, pool: PoolDep,
                body: LoginRequest) -> dict[str, Any] | JSONResponse:
    """Check a local user's password (and their second factor's code, when they have one: ``otp``) and open a
    session (HttpOnly cookie + a CSRF token for the pages). A user whose role needs a second factor and who has
    none gets a session that can only set one up (``mfa_setup_required: true``)."""
    auth = _auth(request)
    origin = request.headers.get("origin")
    if origin and not _same_origin(request, origin) and origin not in auth.config.cors_origins:
        raise HTTPException(403, "login from another site refused")
    if not await auth.allow_login_from(client_address(request)):
        raise HTTPException(429, "too many login attempts; wait a minute")
    device = request.cookies.get(DEVICE_COOKIE) or None
    async with pool.acquire() as conn:
        known = device is not None and await store.known_device(conn, device[:128], body.username)
    if not await auth.allow_login(client_address(request), body.username, known_device=known):
        raise HTTPException(429, "too many login attempts; wait a minute")
    async with pool.acquire() as conn:
        user = await store.user_for_login(conn, body.username)
    stored = user["password_hash"] if user else None
    global _waiting_logins
    if _waiting_logins >= _MAX_WAITING_LOGINS:
        raise HTTPException(429, "too many logins at once; try again in a moment")
    _waiting_logins += 1
    try:
        ok = await asyncio.get_running_loop().run_in_executor(_PASSWORDS, sec.verify_password, stored, body.password)
    finally:
        _waiting_logins -= 1
    if not ok or user is None or user["disabled"]:
        logger.info("login refused for %r from %s", body.username[:64], client_address(request))
        raise HTTPException(401, "wrong user name or password")
    async with pool.acquire() as conn:
        totp_active = await mfa.is_active(conn, user["id"])
    if totp_active:
        refused = await second_factor(request, pool, user["id"], body.otp)
        if refused is not None:
            logger.info("login refused for %r from %s: %s", user["username"], client_address(request), refused)
            return JSONResponse({"detail": refused, "mfa_required": True}, status_code=401)
    setup_required = not totp_active and user["role"] in auth.config.mfa_required_roles
    async with pool.acquire() as conn:
        if sec.needs_rehash(user["password_hash"]):
            await store.rehash_password(conn, user["id"], body.password)
        await store.note_login(conn, user["id"])
        sid, csrf = await store.create_session(conn, auth.config.session_hours, user_id=user["id"],
                                               mfa_pending=setup_required)
        days = auth.config.login_device_days
        remembered = await store.remember_device(conn, user["id"], days) if days > 0 and not known else None
    set_session_cookies(request, response, sid, csrf)
    if remembered is not None:  # sent back to the login route alone, never readable by a script
        response.set_cookie(DEVICE_COOKIE, remembered, max_age=int(days * 86400), path="/api/auth/login",
                            httponly=True, secure=auth.cookie_secure(request), samesite="strict")
    logger.info("login: %s (%s%s) from %s", user["username"], user["role"],
                ", second factor" if totp_active else ", must set up a second factor" if setup_required else "",
                client_address(request))
    return {"name": user["username"], "display_name": user["display_name"], "role": user["role"], "csrf": csrf,
            "mfa_setup_required": setup_required}


async def second_factor(request: Request, pool: Any, user_id: int, otp: str | None) -> str | None:
    """Why the code does not let this user in (``None``: it does): missing, wrong, or a step already used. A
    recovery code is used up by this."""
    if not otp or not otp.strip():
        return "enter the 6-digit code of your authenticator app (or a recovery code)"
    async with pool.acquire() as conn:
        if mfa.is_totp_code(otp):
            row = await mfa.state(conn, user_id)
            try:
                secret = mfa.unseal(row["secret"], user_id, mfa_key(request)) if row and row["secret"] else None
            except mfa.MfaKeyError as err:
                logger.error("second factor of user %d unreadable: %s", user_id, err)
                raise HTTPException(503, "the server cannot read second factors (IOC_AUTH__MFA_KEY); ask an "
                                    "administrator") from None
            step = mfa.matching_step(secret, otp) if secret else None
            if step is None:
                return "wrong code"
            return None if await mfa.use_step(conn, user_id, step) else "this code was used already; wait for the next"
        stored = await mfa.recovery_hashes(conn, user_id)
    found = await on_password_threads(mfa.find_recovery, stored, otp)
    async with pool.acquire() as conn:
        if found is None or not await mfa.use_recovery(conn, found):
            return "wrong code"
        logger.warning("user %d logged in with a recovery code (%d left)", user_id, len(stored) - 1)
    return None


async def on_password_threads(fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on the password checks' threads (Argon2 work: off the event loop, beside the logins)."""
    return await asyncio.get_running_loop().run_in_executor(_PASSWORDS, fn, *args)


def mfa_key(request: Request) -> str | None:
    key = _auth(request).config.mfa_key
    return key.get_secret_value() if key is not None else None


@router.post("/api/auth/logout")
async def logout(pool: PoolDep, response: Response,
                 me: Annotated[Principal, requires(Role.VIEWER)]) -> dict[str, str]:
    """End this session (the cookie is cleared; a bearer token is not revoked by this, see /api/auth/tokens)."""
    if me.session_id is not None:
        async with pool.acquire() as conn:
            await store.end_session(conn, me.session_id)
    response.delete_cookie(SESSION_COOKIE, path="/")
    response.delete_cookie(CSRF_COOKIE, path="/")
    return {"status": "logged out"}


@router.get("/api/auth/me")
async def whoami(request: Request, me: Annotated[Principal, requires(Role.VIEWER)]) -> dict[str, Any]:
    """The caller: name, role, how authenticated, and (for a cookie session) the CSRF token the pages send;
    what the pages may offer them (``can``) and the longest silence they may set (null: no limit)."""
    limit = None if me.role >= Role.SUPERVISOR else _auth(request).config.officer_silence_max_h
    return {**me.public(), "csrf": me.csrf, "silence_max_h": limit, "mfa_setup_required": me.mfa_pending,
            "can": {"act": me.role >= Role.OFFICER, "silence_long": me.role >= Role.SUPERVISOR,
                    "roster": me.role >= Role.SUPERVISOR, "admin": me.role >= Role.ADMIN}}


@router.get("/api/auth/users", dependencies=[requires(Role.ADMIN)], response_model=list[dict[str, Any]])
async def list_users(request: Request, pool: PoolDep, limit: AccountsLimit = 1000) -> Response:
    """Local users by name (``X-Truncated: true`` when ``limit`` cut the list)."""
    async with heavy_slot(request, limit):
        async with pool.acquire() as conn:
            rows = await store.list_users(conn, limit + 1)
        return await json_model(rows[:limit], ANY_ROWS, {"X-Truncated": "true"} if len(rows) > limit else None)


@router.post("/api/auth/users", status_code=201, dependencies=[requires(Role.ADMIN)])
async def create_user(pool: PoolDep, body: UserCreate) -> dict[str, Any]:
    """A local user; without a password, a random one is made and returned once."""
    password = body.password or sec.new_password()
    try:
        async with pool.acquire() as conn:
            row = await store.create_user(conn, body.username, Role.parse(body.role), password, body.display_name)
    except ValueError as err:
        raise HTTPException(422 if "exists" not in str(err) else 409, str(err)) from None
    return {**row, "password": None if body.password else password}


@router.get("/api/auth/tokens", dependencies=[requires(Role.ADMIN)], response_model=list[dict[str, Any]])
async def list_tokens(request: Request, pool: PoolDep, include_revoked: bool = False,
                      limit: AccountsLimit = 1000) -> Response:
    """API tokens, oldest first (``X-Truncated: true`` when ``limit`` cut the list)."""
    async with heavy_slot(request, limit):
        async with pool.acquire() as conn:
            rows = await store.list_tokens(conn, include_revoked, limit + 1)
        return await json_model(rows[:limit], ANY_ROWS, {"X-Truncated": "true"} if len(rows) > limit else None)


@router.post("/api/auth/tokens", status_code=201)
async def create_token(request: Request, pool: PoolDep, body: TokenCreate,
                       me: Annotated[Principal, requires(Role.ADMIN)]) -> dict[str, Any]:
    """A new API token; its secret is in the answer and never again."""
    days = body.days or _auth(request).config.token_days
    try:
        async with pool.acquire() as conn:
            secret, row = await store.create_token(conn, body.name, Role.parse(body.role), days, me.name)
    except ValueError as err:
        raise HTTPException(422, str(err)) from None
    return {**row, "token": secret}


@router.delete("/api/auth/tokens/{token_id}", dependencies=[requires(Role.ADMIN)])
async def revoke_token(pool: PoolDep, token_id: int) -> dict[str, str]:
    async with pool.acquire() as conn:
        if not await store.revoke_token(conn, token_id):
            raise HTTPException(404, f"no active token {token_id}")
    return {"status": "revoked"}


def set_session_cookies(request: Request, response: Response, sid: str, csrf: str) -> None:
    """The session cookie (HttpOnly) and the CSRF cookie the pages' scripts read and echo in X-CSRF-Token."""
    auth = _auth(request)
    secure = auth.cookie_secure(request)
    max_age = int(auth.config.session_hours * 3600)
    response.set_cookie(SESSION_COOKIE, sid, max_age=max_age, path="/", httponly=True, secure=secure,
                        samesite=auth.config.cookie_samesite)
    response.set_cookie(CSRF_COOKIE, csrf, max_age=max_age, path="/", httponly=False, secure=secure,
                        samesite="strict")


def _same_origin(request: Request, origin: str) -> bool:
    parts = urlsplit(origin)
    return parts.netloc == request.headers.get("host", "") and parts.scheme in ("http", "https")


__all__ = ["router", "set_session_cookies"]
