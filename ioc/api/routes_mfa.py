"""A local user's second factor (TOTP): set up, confirm, remove; and the admin's reset (see docs/security.md)."""

from __future__ import annotations

import logging
from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Request
from pydantic import BaseModel, ConfigDict, Field

from ioc.api.deps import PoolDep, Principal, Role, requires
from ioc.api.routes_auth import mfa_key, on_password_threads, second_factor
from ioc.auth import mfa, store
from ioc.auth import secrets as sec
from ioc.auth.service import client_address

logger = logging.getLogger(__name__)
router = APIRouter(tags=["auth"])


class MfaConfirm(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: str = Field(min_length=6, max_length=6, pattern=r"^\d{6}$")


class MfaRemove(BaseModel):
    model_config = ConfigDict(extra="forbid")

    password: str = Field(min_length=1, max_length=1024)
    code: str = Field(min_length=1, max_length=64, description="a code of the app, or a recovery code")


def _local_user(me: Principal) -> int:
    """The caller's user id: a second factor is a local user's (a token has none; the SSO provider does its own)."""
    if me.user_id is None:
        raise HTTPException(400, "only a local user logged in with a password has a second factor here (API "
                            "tokens have none; SSO logins use the provider's)")
    return me.user_id


@router.post("/api/auth/mfa/setup")
async def setup(request: Request, pool: PoolDep, me: Annotated[Principal, requires(Role.VIEWER)]) -> dict[str, Any]:
    """A new TOTP secret, pending until confirmed: its base32 form and ``otpauth://`` URI (for the app's QR code
    or typing in) are in this answer and never again. Another call replaces a pending secret; with one active:
    409 (remove it first)."""
    uid = _local_user(me)
    async with pool.acquire() as conn:
        secret = await mfa.begin(conn, uid, mfa_key(request))
    if secret is None:
        raise HTTPException(409, "a second factor is active already; remove it first (DELETE /api/auth/mfa)")
    issuer = request.app.state.auth.config.mfa_issuer
    return {"secret": secret, "otpauth_uri": mfa.otpauth_uri(secret, me.name, issuer), "period": mfa.STEP_S,
            "digits": 6, "algorithm": "SHA1"}


@router.post("/api/auth/mfa/confirm")
async def confirm(request: Request, pool: PoolDep, body: MfaConfirm,
                  me: Annotated[Principal, requires(Role.VIEWER)]) -> dict[str, Any]:
    """Activate the pending secret with a code of it; answers the recovery codes (shown once, stored hashed).
    A session that was waiting for this (IOC_AUTH__MFA_REQUIRED_ROLES) now reaches everything its role may; the
    user's other waiting sessions end."""
    uid = _local_user(me)
    async with pool.acquire() as conn:
        row = await mfa.state(conn, uid)
    if row is None or row["pending"] is None:
        raise HTTPException(409, "nothing to confirm: start with POST /api/auth/mfa/setup")
    try:
        secret = mfa.unseal(row["pending"], uid, mfa_key(request))
    except mfa.MfaKeyError as err:
        raise HTTPException(503, f"cannot read the pending secret: {err}; set it up again") from None
    step = mfa.matching_step(secret, body.code)
    if step is None:
        raise HTTPException(422, "wrong code: check the phone's clock and the code of the account just added")
    codes = mfa.new_recovery_codes()
    hashes = await on_password_threads(mfa.hash_recovery_codes, codes)
    async with pool.acquire() as conn:
        if not await mfa.activate(conn, uid, step, hashes, me.session_id):
            raise HTTPException(409, "nothing to confirm: start with POST /api/auth/mfa/setup")
    logger.info("second factor set up by %s", me.name)
    return {"status": "active", "recovery_codes": codes}


@router.delete("/api/auth/mfa")
async def remove(request: Request, pool: PoolDep, body: MfaRemove,
                 me: Annotated[Principal, requires(Role.VIEWER)]) -> dict[str, str]:
    """Remove one's own second factor: needs the password and a code. Refused (409) for a role that needs one
    (IOC_AUTH__MFA_REQUIRED_ROLES): a new phone goes through an administrator's reset."""
    uid = _local_user(me)
    auth = request.app.state.auth
    if me.role.label in auth.config.mfa_required_roles:
        raise HTTPException(409, f"the {me.role.label} role needs a second factor: to move it to another phone, "
                            "ask an administrator to reset it (then set it up again)")
    if not await auth.allow_login(client_address(request), me.name):  # a password guess counts as a login
        raise HTTPException(429, "too many attempts; wait a minute")
    async with pool.acquire() as conn:
        user = await store.user_for_login(conn, me.name)
        active = await mfa.is_active(conn, uid)
    if not active:
        raise HTTPException(409, "no second factor is active")
    ok = user is not None and await on_password_threads(sec.verify_password, user["password_hash"],
                                                         body.password)
    if not ok or await second_factor(request, pool, uid, body.code) is not None:
        raise HTTPException(403, "wrong password or code")
    async with pool.acquire() as conn:
        await mfa.remove(conn, uid)
    logger.warning("second factor removed by %s", me.name)
    return {"status": "removed"}


@router.post("/api/auth/users/{username}/mfa/reset", dependencies=[requires(Role.ADMIN)])
async def reset(pool: PoolDep, username: str, me: Annotated[Principal, requires(Role.ADMIN)]) -> dict[str, str]:
    """Forget a user's second factor and recovery codes (a lost phone); their sessions end. They log in with the
    password alone next (or, for a role that needs one, to a session that can only set up a new one)."""
    async with pool.acquire() as conn:
        try:
            removed = await mfa.reset_user(conn, username)
        except store.AuthStoreError as err:
            raise HTTPException(404, str(err)) from None
    logger.warning("second factor of %s reset by %s", username, me.actor)
    return {"status": "reset" if removed else "none was set"}


__all__ = ["router"]
