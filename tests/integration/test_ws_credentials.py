"""An open /ws/live is closed (4401) once its credential stops holding: a revoked token, a logged-out or
disabled user, an expired OIDC JWT; screens of other credentials stay open, and so do all screens while the
database does not answer (ioc/api/ws_credentials.py)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
import websockets
from fastapi import FastAPI

from ioc.api.ws_credentials import CLOSE_CODE, CredentialWatch
from ioc.auth import oidc, store
from ioc.auth import secrets as sec
from ioc.auth.model import Role
from ioc.auth.service import CSRF_COOKIE, SESSION_COOKIE
from tests.conftest import create_database
from tests.integration.test_auth_hardening import app_with
from tests.integration.test_auth_routes import serve
from tests.support.auth import jwks_server, login, make_token, make_user
from tests.support.services import private_postgres

pytestmark = [pytest.mark.integration, pytest.mark.serial]  # timing bounds: alone under xdist (tests/conftest.py)

RECHECK_S = 0.3
FEED = "/ws/live?types=status"


async def closed_with(ws: Any, within: float) -> int | None:
    """The close code once the server closes ``ws`` (frames before it are read and dropped)."""
    async with asyncio.timeout(within):
        try:
            while True:
                await ws.recv()
        except websockets.ConnectionClosed:
            return ws.close_code  # type: ignore[no-any-return]


async def still_open(ws: Any) -> bool:
    """It answers a ping with a pong (the feed runs)."""
    await ws.send(json.dumps({"type": "ping"}))
    async with asyncio.timeout(3):
        while True:
            got = json.loads(await ws.recv())
            if any(f.get("type") == "pong" for f in (got if isinstance(got, list) else [got])):
                return True


def watch(app: FastAPI) -> CredentialWatch:
    found: CredentialWatch = app.state.ws_credentials
    return found


async def test_a_revoked_token_closes_its_screens_and_no_other(database_url: str) -> None:
    wall, other = await make_token(database_url, "viewer"), await make_token(database_url, "viewer")
    async with app_with(database_url, ws_recheck_s=RECHECK_S) as app, serve(app) as port:
        url = f"ws://127.0.0.1:{port}{FEED}&token="
        async with (websockets.connect(url + wall) as a1, websockets.connect(url + wall) as a2,
                    websockets.connect(url + other) as b):
            assert len(watch(app).by_key) == 2  # three screens, two distinct credentials to look up
            conn = await asyncpg.connect(database_url)
            try:
                token_id = await conn.fetchval("SELECT id FROM auth_tokens WHERE token_hash = $1", sec.digest(wall))
                assert await store.revoke_token(conn, token_id)
            finally:
                await conn.close()
            began = time.monotonic()
            assert await closed_with(a1, 3 * RECHECK_S + 2) == CLOSE_CODE
            assert await closed_with(a2, 2) == CLOSE_CODE
            assert time.monotonic() - began < 3 * RECHECK_S + 2
            assert a1.close_reason and "no longer valid" in a1.close_reason
            assert await still_open(b)
            assert watch(app).closed == 2 and list(watch(app).by_key) == [("token", sec.digest(other))]


async def session_feed(port: int, username: str, password: str) -> Any:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        await login(client, username, password)
        cookies = {k: client.cookies[k] for k in (SESSION_COOKIE, CSRF_COOKIE)}
    cookie = "; ".join(f"{k}={v}" for k, v in cookies.items())
    return websockets.connect(f"ws://127.0.0.1:{port}{FEED}", additional_headers={"Cookie": cookie}), cookies


async def test_a_disabled_or_logged_out_user_s_screen_is_closed(database_url: str) -> None:
    gone, gone_pw = await make_user(database_url, "viewer")
    out, out_pw = await make_user(database_url, "officer")
    kept, kept_pw = await make_user(database_url, "viewer")
    async with app_with(database_url, ws_recheck_s=RECHECK_S) as app, serve(app) as port:
        (c1, _), (c2, out_cookies), (c3, _) = [await session_feed(port, u, p) for u, p in
                                               ((gone, gone_pw), (out, out_pw), (kept, kept_pw))]
        async with c1 as disabled, c2 as logged_out, c3 as other:
            conn = await asyncpg.connect(database_url)
            try:
                await store.set_disabled(conn, gone, True)
            finally:
                await conn.close()
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", cookies=out_cookies) as client:
                resp = await client.post("/api/auth/logout", headers={"X-CSRF-Token": out_cookies[CSRF_COOKIE]})
                assert resp.status_code == 200, resp.text
            assert await closed_with(disabled, 3 * RECHECK_S + 2) == CLOSE_CODE
            assert await closed_with(logged_out, 2) == CLOSE_CODE
            assert await still_open(other)
        assert watch(app).rechecks >= 1


@pytest.fixture
def jwks() -> Iterator[tuple[str, Any]]:
    """A JWKS of one key served on a local port: (its URL, the private key)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with jwks_server(lambda: {"k1": key}) as url:
        yield url, key


async def test_a_jwt_screen_closes_at_its_exp_without_a_lookup(database_url: str, jwks: tuple[str, Any],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(oidc, "LEEWAY_S", 0)
    url, key = jwks
    issuer = "https://sso.example/realms/ioc"

    def token(seconds: float) -> str:
        claims = {"iss": issuer, "aud": "ioc", "sub": "wall", "exp": int(time.time() + seconds), "roles": ["viewer"]}
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": "k1"})

    async with app_with(database_url, ws_recheck_s=RECHECK_S, oidc_issuer=issuer, oidc_audience="ioc",
                        oidc_jwks_url=url) as app, serve(app) as port:
        feed = f"ws://127.0.0.1:{port}{FEED}&token="
        async with websockets.connect(feed + token(2)) as short, websockets.connect(feed + token(600)) as long:
            began = time.monotonic()
            assert await closed_with(short, 4) == CLOSE_CODE
            assert short.close_reason == "token expired" and time.monotonic() - began < 3
            assert await still_open(long)
            assert watch(app).rechecks == 0 and not watch(app).by_key  # a JWT's expiry needs no database


async def test_screens_stay_open_while_the_database_does_not_answer() -> None:
    """A recheck that cannot answer closes nothing (the walls stay lit) and is tried again; once PostgreSQL is
    back, a revocation made meanwhile closes the screen."""
    with private_postgres() as pg:
        dsn = await create_database(pg.dsn)
        wall = await make_token(dsn, "viewer")
        async with (app_with(dsn, ws_recheck_s=RECHECK_S) as app, serve(app) as port,
                    websockets.connect(f"ws://127.0.0.1:{port}{FEED}&token={wall}") as screen):
            await asyncio.to_thread(pg.stop)
            failed = watch(app).unanswered
            async with asyncio.timeout(5):
                while watch(app).unanswered < failed + 2:
                    await asyncio.sleep(0.05)
            assert await still_open(screen) and watch(app).closed == 0
            await asyncio.to_thread(pg.start)
            conn = await asyncpg.connect(dsn)
            try:
                await conn.execute("UPDATE auth_tokens SET revoked_at = now() WHERE token_hash = $1",
                                   sec.digest(wall))
            finally:
                await conn.close()
            assert await closed_with(screen, 3 * RECHECK_S + 3) == CLOSE_CODE


async def test_an_announced_revocation_closes_at_once_on_every_replica(database_url: str) -> None:
    """Two replicas (two apps on one database), recheck timer 60 s: a token revoked through one replica's API
    closes its screens on both within a second (NOTIFY); a role lowered below what a screen needs closes it."""
    wall, admin = await make_token(database_url, "viewer"), await make_token(database_url, "admin")
    officer, officer_pw = await make_user(database_url, "officer")
    async with (app_with(database_url, ws_recheck_s=60) as one, serve(one) as port1,
                app_with(database_url, ws_recheck_s=60) as two, serve(two) as port2):
        feed1, feed2 = f"ws://127.0.0.1:{port1}{FEED}&token=", f"ws://127.0.0.1:{port2}{FEED}&token="
        connect, _ = await session_feed(port2, officer, officer_pw)
        async with (websockets.connect(feed1 + wall) as a, websockets.connect(feed2 + wall) as b,
                    connect as duty):
            async with asyncio.timeout(5):
                while not (watch(one).listening and watch(two).listening):
                    await asyncio.sleep(0.02)
            token_id = await asyncpg_fetchval(database_url, "SELECT id FROM auth_tokens WHERE token_hash = $1",
                                              sec.digest(wall))
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port1}",
                                         headers={"Authorization": f"Bearer {admin}"}) as api:
                began = time.monotonic()
                assert (await api.delete(f"/api/auth/tokens/{token_id}")).status_code == 200
            assert await closed_with(a, 2) == CLOSE_CODE and await closed_with(b, 2) == CLOSE_CODE
            took = time.monotonic() - began
            assert took < 1.5, took
            print(f"announced revocation: both replicas' screens closed {took * 1000:.0f} ms after the DELETE")
            assert watch(one).announced >= 1 and watch(two).announced >= 1
            assert await still_open(duty)
            # The feed needs a viewer, the lowest role a user holds: pretend this screen needs an officer.
            for screen in watch(two).screens:
                screen.needs = Role.OFFICER
            conn = await asyncpg.connect(database_url)
            try:
                await store.set_role(conn, officer, Role.VIEWER)
            finally:
                await conn.close()
            assert await closed_with(duty, 2) == CLOSE_CODE
            assert duty.close_reason == "needs the officer role; now viewer"


async def asyncpg_fetchval(dsn: str, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()
