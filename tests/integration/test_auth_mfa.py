"""A second factor (TOTP) for local users, against the real app and database: set up, confirm, log in with a code,
wrong and replayed codes, recovery codes, removal, the admin's reset (route and CLI) and the roles that need one."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pyotp
import pytest
from fastapi import FastAPI

from tests.integration.test_auth_hardening import app_with, ioc
from tests.integration.test_auth_routes import serve, ws_status
from tests.support.auth import bearer, make_token, make_user

pytestmark = pytest.mark.integration

KEY = "a test key for sealing TOTP secrets"


@asynccontextmanager
async def browser(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """A client from an address of its own (the per-address login limit is shared by every test)."""
    address = f"10.{random.randrange(256)}.{random.randrange(256)}.{random.randrange(1, 255)}"
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(address, 40000)),
                                 base_url="http://ioc") as client:
        yield client


async def log_in(client: httpx.AsyncClient, user: str, password: str, otp: str | None = None) -> httpx.Response:
    body: dict[str, Any] = {"username": user, "password": password} | ({"otp": otp} if otp is not None else {})
    resp = await client.post("/api/auth/login", json=body)
    if resp.status_code == 200:
        client.headers["X-CSRF-Token"] = resp.json()["csrf"]
    return resp


async def enrol(client: httpx.AsyncClient) -> tuple[pyotp.TOTP, list[str], str]:
    """Set up and confirm a second factor on a logged-in client: (its TOTP, the recovery codes, the code used)."""
    setup = await client.post("/api/auth/mfa/setup")
    assert setup.status_code == 200, setup.text
    totp = pyotp.TOTP(setup.json()["secret"])
    assert pyotp.parse_uri(setup.json()["otpauth_uri"]).secret == totp.secret
    code = totp.now()
    confirmed = await client.post("/api/auth/mfa/confirm", json={"code": code})
    assert confirmed.status_code == 200, confirmed.text
    return totp, confirmed.json()["recovery_codes"], code


def other_code(totp: pyotp.TOTP) -> str:
    """A 6-digit code that is none of the accepted ones (this step and the ones either side)."""
    now = time.time()
    near = {totp.at(now + k * 30) for k in (-1, 0, 1)}
    return next(c for c in (f"{random.randrange(10**6):06d}" for _ in range(100)) if c not in near)


async def test_enrol_then_login_needs_the_code_once_recovery_codes_and_reset(database_url: str) -> None:
    user, password = await make_user(database_url, "officer")
    admin = await make_token(database_url, "admin")
    async with app_with(database_url, mfa_key=KEY) as app, browser(app) as first, browser(app) as second:
        assert (await log_in(first, user, password)).json()["mfa_setup_required"] is False
        setup = await first.post("/api/auth/mfa/setup")
        secret = setup.json()["secret"]
        assert setup.json()["otpauth_uri"].startswith(f"otpauth://totp/IOC:{user}?secret={secret}")
        conn = await asyncpg.connect(database_url)
        try:
            stored = await conn.fetchval("SELECT pending FROM auth_totp t JOIN auth_users u ON u.id = t.user_id "
                                         "WHERE u.username = $1", user)
            assert stored.startswith("v1:") and secret not in stored  # sealed with IOC_AUTH__MFA_KEY
            assert (await first.post("/api/auth/mfa/confirm",
                                     json={"code": other_code(pyotp.TOTP(secret))})).status_code == 422
            totp, recovery, confirm_code = await enrol(first)  # a second setup replaced the first pending secret
            assert totp.secret != secret and len(recovery) == 10 and len(set(recovery)) == 10
            hashes = await conn.fetch("SELECT code_hash FROM auth_recovery_codes c JOIN auth_users u "
                                      "ON u.id = c.user_id WHERE u.username = $1", user)
            assert len(hashes) == 10 and all(h["code_hash"].startswith("$argon2id$") for h in hashes)
            assert (await first.post("/api/auth/mfa/setup")).status_code == 409  # active: never shown again
            listed = (await second.get("/api/auth/users", headers=bearer(admin))).json()
            assert next(u for u in listed if u["username"] == user)["mfa"] is True

            # The password alone is not enough; the answer says what is missing, and opens no session.
            bare = await log_in(second, user, password)
            assert bare.status_code == 401 and bare.json()["mfa_required"] is True
            assert "ioc_session" not in bare.cookies
            # A wrong password says nothing about a second factor.
            wrong_pw = await log_in(second, user, password + "x", totp.now())
            assert wrong_pw.status_code == 401 and "mfa_required" not in wrong_pw.json()
            wrong = await log_in(second, user, password, other_code(totp))
            assert (wrong.status_code, wrong.json()["detail"]) == (401, "wrong code")
            # The code that confirmed the setup was used: its step is spent (no replay).
            replay = await log_in(second, user, password, confirm_code)
            assert replay.status_code == 401 and "used already" in replay.json()["detail"]
            later = totp.at(time.time() + 30)  # the next step's code: within the drift allowed
            ok = await log_in(second, user, password, later)
            assert ok.status_code == 200 and (await second.get("/api/auth/me")).json()["name"] == user
            again = await log_in(second, user, password, later)
            assert again.status_code == 401 and again.json()["mfa_required"] is True

            # A recovery code works once, typed as people type it.
            typed = recovery[3].upper().replace("-", " ")
            assert (await log_in(second, user, password, typed)).status_code == 200
            assert (await log_in(second, user, password, recovery[3])).status_code == 401
            used = await conn.fetchval("SELECT count(*) FROM auth_recovery_codes c JOIN auth_users u "
                                       "ON u.id = c.user_id WHERE u.username = $1 AND used_at IS NOT NULL", user)
            assert used == 1

            # The admin's reset: the factor is gone, the user's sessions end, the password alone logs in again.
            officer = await make_token(database_url, "officer")
            refused = await second.post(f"/api/auth/users/{user}/mfa/reset", headers=bearer(officer))
            assert refused.status_code == 403
            reset = await second.post(f"/api/auth/users/{user}/mfa/reset", headers=bearer(admin))
            assert reset.json() == {"status": "reset"}
            assert (await first.get("/api/auth/me")).status_code == 401
            assert (await second.post("/api/auth/users/no-such-user/mfa/reset",
                                      headers=bearer(admin))).status_code == 404
            assert (await log_in(first, user, password)).status_code == 200
        finally:
            await conn.close()


async def test_wrong_codes_count_against_the_login_limits(database_url: str) -> None:
    user, password = await make_user(database_url, "officer")
    async with app_with(database_url, login_rate_per_account="3/minute") as app, browser(app) as own:
        assert (await log_in(own, user, password)).status_code == 200  # 1 of 3 on the account
        totp, _, _ = await enrol(own)
        async with browser(app) as attacker:  # knows the password, not the code; a browser new to the account
            for _ in range(2):
                assert (await log_in(attacker, user, password, other_code(totp))).status_code == 401
            held = await log_in(attacker, user, password, totp.at(time.time() + 30))
            assert held.status_code == 429  # even the right code: the account's limit is spent


async def test_a_role_that_needs_a_second_factor_gets_a_setup_only_session(database_url: str) -> None:
    lead, lead_pw = await make_user(database_url, "supervisor")
    duty, duty_pw = await make_user(database_url, "officer")
    machine = await make_token(database_url, "supervisor")
    async with app_with(database_url, mfa_required_roles=["supervisor", "admin"]) as app, browser(app) as client:
        first = await log_in(client, lead, lead_pw)
        assert first.status_code == 200 and first.json()["mfa_setup_required"] is True
        me = await client.get("/api/auth/me")
        assert me.status_code == 200 and me.json()["mfa_setup_required"] is True
        blocked = await client.get("/api/summary")
        assert blocked.status_code == 403 and "second factor" in blocked.json()["detail"]
        assert (await client.get("/ops")).status_code == 401  # the page goes back to the login page
        assert (await client.post("/api/silences", json={})).status_code == 403
        async with serve(app) as port:  # nor the live feed
            cookie = {"Cookie": f"ioc_session={client.cookies['ioc_session']}"}
            assert await ws_status(f"ws://127.0.0.1:{port}/ws/live", additional_headers=cookie) in (401, 403)
        async with browser(app) as elsewhere:  # another password-only session, waiting too
            assert (await log_in(elsewhere, lead, lead_pw)).json()["mfa_setup_required"] is True
            _, recovery, _ = await enrol(client)
            assert (await client.get("/api/summary")).status_code == 200  # the same session, let through
            assert (await elsewhere.get("/api/auth/me")).status_code == 401  # not the other one: it ended
        async with serve(app) as port:
            assert await ws_status(f"ws://127.0.0.1:{port}/ws/live", additional_headers=cookie) == 101
        assert (await client.get("/api/auth/me")).json()["mfa_setup_required"] is False
        removal = await client.request("DELETE", "/api/auth/mfa", json={"password": lead_pw, "code": recovery[0]})
        assert removal.status_code == 409  # the role needs one: a new phone goes through an admin's reset
        # The next login needs the code.
        async with browser(app) as other:
            assert (await log_in(other, lead, lead_pw)).json()["mfa_required"] is True
            assert (await log_in(other, lead, lead_pw, recovery[1])).json()["mfa_setup_required"] is False
        # Other roles and API tokens are not affected.
        async with browser(app) as other:
            assert (await log_in(other, duty, duty_pw)).json()["mfa_setup_required"] is False
            assert (await other.get("/api/summary")).status_code == 200
        async with browser(app) as other:
            assert (await other.get("/api/summary", headers=bearer(machine))).status_code == 200
            setup = await other.post("/api/auth/mfa/setup", headers=bearer(machine))
            assert setup.status_code == 400


async def test_removing_ones_own_second_factor_needs_password_and_code(database_url: str) -> None:
    user, password = await make_user(database_url, "viewer")
    async with app_with(database_url) as app, browser(app) as client:
        await log_in(client, user, password)
        totp, recovery, _ = await enrol(client)
        wrong = await client.request("DELETE", "/api/auth/mfa", json={"password": password + "x", "code": recovery[0]})
        assert wrong.status_code == 403
        no_code = await client.request("DELETE", "/api/auth/mfa", json={"password": password,
                                                                         "code": other_code(totp)})
        assert no_code.status_code == 403
        done = await client.request("DELETE", "/api/auth/mfa", json={"password": password, "code": recovery[0]})
        assert done.json() == {"status": "removed"}
        async with browser(app) as other:
            assert (await log_in(other, user, password)).status_code == 200


async def test_cli_mfa_reset(database_url: str) -> None:
    user, password = await make_user(database_url, "admin")
    async with app_with(database_url) as app, browser(app) as client:
        await log_in(client, user, password)
        await enrol(client)
        out = await asyncio.to_thread(ioc, database_url, "users", "mfa-reset", user)
        assert out.returncode == 0 and "reset" in out.stdout, out.stderr
        assert (await client.get("/api/auth/me")).status_code == 401  # sessions ended
        async with browser(app) as other:
            assert (await log_in(other, user, password)).status_code == 200
    assert "mfa" in (await asyncio.to_thread(ioc, database_url, "users", "list")).stdout.splitlines()[0]
    missing = await asyncio.to_thread(ioc, database_url, "users", "mfa-reset", "no-such-user")
    assert missing.returncode == 2 and "no user" in missing.stderr
