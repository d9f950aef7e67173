"""Sessions, tokens, CSRF, rate limits and the HTTP edge (issue #15), against the real app and database;
and the ``ioc users`` / ``ioc tokens`` commands."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
import pytest
import websockets
from fastapi import FastAPI

from ioc.api.app import create_app
from ioc.auth import store
from ioc.auth.config import AuthConfig
from ioc.settings import Settings
from tests.integration.test_auth_routes import serve, ws_status
from tests.support.auth import bearer, client_for, login, make_token, make_user

pytestmark = pytest.mark.integration

SILENCE = {"matchers": {"device_id": "no-such-device"}, "ends_at": "2099-01-01T00:00:00Z", "reason": "test"}


@asynccontextmanager
async def app_with(database_url: str, **auth: object) -> AsyncIterator[FastAPI]:
    app = create_app(Settings(database_url=database_url, auth=AuthConfig(**auth)))  # type: ignore[arg-type]
    async with app.router.lifespan_context(app):
        yield app


async def test_login_session_cookie_csrf_and_logout(api_app: FastAPI, database_url: str) -> None:
    user, password = await make_user(database_url, "supervisor")
    async with client_for(api_app) as client:
        wrong = await client.post("/api/auth/login", json={"username": user, "password": password + "x"})
        assert wrong.status_code == 401 and "ioc_session" not in wrong.cookies
        ok = await client.post("/api/auth/login", json={"username": user.upper(), "password": password})
        assert ok.status_code == 200 and ok.json()["role"] == "supervisor"
        cookie = next(h for h in ok.headers.get_list("set-cookie") if h.startswith("ioc_session="))
        assert "HttpOnly" in cookie and "SameSite=lax" in cookie and "Secure" not in cookie  # plain http here
        me = (await client.get("/api/auth/me")).json()
        assert (me["name"], me["via"], me["csrf"]) == (user, "session", ok.json()["csrf"])
        # A state-changing request on the cookie needs the CSRF token in a header (another site's form has none).
        assert (await client.post("/api/silences", json=SILENCE)).status_code == 403
        created = await client.post("/api/silences", json={**SILENCE, "author": "someone"},
                                    headers={"X-CSRF-Token": ok.json()["csrf"]})
        assert created.status_code == 201 and created.json()["author"] == user  # long silence: supervisor may
        client.headers["X-CSRF-Token"] = ok.json()["csrf"]
        assert (await client.delete(f"/api/silences/{created.json()['id']}")).status_code == 200
        assert (await client.post("/api/auth/logout")).status_code == 200
        client.cookies.set("ioc_session", cookie.split(";")[0].split("=", 1)[1])  # replaying the old cookie
        assert (await client.get("/api/auth/me")).status_code == 401


async def test_secure_cookie_over_https(api_app: FastAPI, database_url: str) -> None:
    user, password = await make_user(database_url, "viewer")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=api_app), base_url="https://ioc") as client:
        ok = await client.post("/api/auth/login", json={"username": user, "password": password})
        assert all("Secure" in h for h in ok.headers.get_list("set-cookie"))


async def test_disable_password_change_and_revocation_end_access(api_app: FastAPI, database_url: str) -> None:
    user, password = await make_user(database_url, "officer")
    token = await make_token(database_url, "viewer")
    conn = await asyncpg.connect(database_url)
    try:
        async with client_for(api_app) as client, client_for(api_app, token) as machine:
            await login(client, user, password)
            assert (await client.get("/api/summary")).status_code == 200
            await store.set_password(conn, user, "another long password")
            assert (await client.get("/api/summary")).status_code == 401
            await login(client, user, "another long password")
            await store.set_disabled(conn, user, True)
            assert (await client.get("/api/summary")).status_code == 401
            login_again = await client.post("/api/auth/login", json={"username": user,
                                                                      "password": "another long password"})
            assert login_again.status_code == 401
            assert (await machine.get("/api/summary")).status_code == 200
            token_id = next(t["id"] for t in await store.list_tokens(conn) if token.startswith(t["prefix"]))
            used = next(t for t in await store.list_tokens(conn) if t["id"] == token_id)
            assert used["last_used_at"] is not None
            assert await store.revoke_token(conn, token_id)
            assert (await machine.get("/api/summary")).status_code == 401
    finally:
        await conn.close()


async def test_expired_token_and_the_wall_link(api_app: FastAPI, database_url: str) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        short, _ = await store.create_token(conn, "short", store.Role.VIEWER, 0.5 / 86400)
        async with client_for(api_app, short) as client:
            await asyncio.sleep(0.6)
            assert (await client.get("/api/summary")).status_code == 401
        wall, row = await store.create_token(conn, "wall", store.Role.VIEWER, 1)
        async with client_for(api_app) as browser:
            opened = await browser.get(f"/?token={wall}&lang=en")
            assert opened.status_code == 303 and opened.headers["location"] == "/?lang=en"
            assert (await browser.get("/")).status_code == 200  # now on the session cookie
            assert (await browser.get("/api/auth/me")).json()["name"] == "token:wall"
            assert (await browser.get("/api/officers")).json() is not None
            await store.revoke_token(conn, row["id"])  # revoking the token ends the wall's session too
            page = await browser.get("/")
            assert page.status_code == 401 and "/login?next=%2F" in page.text
    finally:
        await conn.close()


async def test_viewer_sees_no_personal_data(api: httpx.AsyncClient, api_app: FastAPI, database_url: str) -> None:
    await api.put("/api/officers/pd-test", json={"name": "Lê Văn Tám", "email": "tam@example.vn",
                                                  "phone": "+84 900 000 000"})
    async with client_for(api_app, await make_token(database_url, "viewer")) as viewer:
        row = next(o for o in (await viewer.get("/api/officers")).json() if o["id"] == "pd-test")
        assert row == {"id": "pd-test", "name": "Lê Văn Tám", "active": True}
        assert (await viewer.get("/api/notifications")).status_code == 403
        assert (await viewer.get("/api/quarantine")).status_code == 403
    async with client_for(api_app, await make_token(database_url, "officer")) as officer:
        row = next(o for o in (await officer.get("/api/officers")).json() if o["id"] == "pd-test")
        assert row["phone"] == "+84 900 000 000"
        assert (await officer.post("/api/silences", json=SILENCE)).status_code == 403  # too long for an officer
        assert (await officer.get("/api/quarantine")).status_code == 403


async def test_login_rate_limit_and_cross_site_login(database_url: str) -> None:
    user, password = await make_user(database_url, "viewer")
    async with app_with(database_url, login_rate="3/minute") as app, client_for(app) as client:
        for _ in range(3):
            assert (await client.post("/api/auth/login", json={"username": user, "password": "x"})).status_code == 401
        limited = await client.post("/api/auth/login", json={"username": user, "password": password})
        assert limited.status_code == 429
        other = await client.post("/api/auth/login", json={"username": "someone", "password": password},
                                  headers={"Origin": "https://evil.example"})
        assert other.status_code == 403
    async with app_with(database_url, login_rate_per_address="4/minute") as app, client_for(app) as client:
        codes = [(await client.post("/api/auth/login", json={"username": f"spray{i}", "password": "x"})).status_code
                 for i in range(5)]
        assert codes == [401, 401, 401, 401, 429], codes  # many user names from one address


async def test_action_rate_limit_body_cap_hosts_cors_headers(database_url: str) -> None:
    token = await make_token(database_url, "officer")
    async with app_with(database_url, action_rate="2/minute", max_body_bytes=2000,
                        allowed_hosts=["ioc", "127.0.0.1"], cors_origins=["https://other.example"],
                        metrics=False, docs="public") as app, client_for(app, token) as client:
        codes = [(await client.post("/api/incidents/999999999/comment", json={"note": "x"})).status_code
                 for _ in range(3)]
        assert codes[-1] == 429 and 429 not in codes[:2], codes
        big = await client.put("/api/officers/x", content=b'{"name": "' + b"x" * 5000 + b'"}',
                               headers={"Content-Type": "application/json"})
        assert big.status_code == 413

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b" " * 500

        streamed = await client.put("/api/officers/x", content=chunks(), headers={"Content-Type": "application/json"})
        assert streamed.status_code == 413
        assert (await client.get("/healthz", headers={"Host": "evil.example"})).status_code == 400
        pre = await client.options("/api/summary", headers={"Origin": "https://other.example",
                                                            "Access-Control-Request-Method": "GET"})
        assert pre.headers.get("access-control-allow-origin") == "https://other.example"
        pre = await client.options("/api/summary", headers={"Origin": "https://evil.example",
                                                            "Access-Control-Request-Method": "GET"})
        assert "access-control-allow-origin" not in pre.headers
        assert (await client.get("/metrics")).status_code == 404
        async with client_for(app) as anon:
            assert (await anon.get("/docs")).status_code == 200 and (await anon.get("/openapi.json")).status_code == 200
            login_page = await anon.get("/login")
            csp = login_page.headers["content-security-policy"]
            assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp and "unsafe-inline" not in csp
            assert login_page.headers["x-frame-options"] == "DENY"
            assert (await anon.get("/metrics")).status_code == 401


async def test_docs_and_metrics_need_a_viewer_by_default(api_app: FastAPI, database_url: str) -> None:
    async with client_for(api_app) as anon:
        assert (await anon.get("/docs")).status_code == 401
        assert (await anon.get("/openapi.json")).status_code == 401
    async with client_for(api_app, await make_token(database_url, "viewer")) as viewer:
        assert (await viewer.get("/metrics")).status_code == 200
        assert "/api/incidents" in (await viewer.get("/openapi.json")).json()["paths"]


async def test_websocket_connections_per_client_are_capped(database_url: str) -> None:
    token = await make_token(database_url, "viewer")
    async with app_with(database_url, ws_per_client=2) as app, serve(app) as port:
        url = f"ws://127.0.0.1:{port}/ws/live?token={token}"
        async with websockets.connect(url), websockets.connect(url):
            assert await ws_status(url) == 429
        assert await ws_status(url) == 101  # slots come back when feeds close


def ioc(database_url: str, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOC_")} | {"IOC_DATABASE_URL": database_url}
    return subprocess.run([sys.executable, "-m", "ioc.cli", *args], env=env, input=stdin, capture_output=True,
                          text=True, timeout=60)


async def test_users_and_tokens_commands(api_app: FastAPI, database_url: str) -> None:
    name = f"cli-{os.getpid()}-{id(api_app) % 10000}"
    added = await asyncio.to_thread(ioc, database_url, "users", "add", name, "--role", "officer")
    assert added.returncode == 0, added.stderr
    password = re.search(r"password: (\S+)", added.stdout)[1]  # type: ignore[index]
    dup = await asyncio.to_thread(ioc, database_url, "users", "add", name, "--role", "officer")
    assert dup.returncode == 2 and "exists" in dup.stderr
    listed = await asyncio.to_thread(ioc, database_url, "users", "list")
    assert re.search(rf"{name}\s+officer\s+False", listed.stdout), listed.stdout
    async with client_for(api_app) as client:
        await login(client, name, password)
        changed = await asyncio.to_thread(ioc, database_url, "users", "set-password", name, "--password-stdin",
                                          stdin="a new long password\n")
        assert changed.returncode == 0, changed.stderr
        assert (await client.get("/api/auth/me")).status_code == 401
        await login(client, name, "a new long password")
        assert (await asyncio.to_thread(ioc, database_url, "users", "disable", name)).returncode == 0
        assert (await client.get("/api/auth/me")).status_code == 401

    made = await asyncio.to_thread(ioc, database_url, "tokens", "create", "wall 7", "--role", "viewer",
                                   "--link", "http://ioc.example")
    assert made.returncode == 0, made.stderr
    token = re.search(r"token: (ioct_\S+)", made.stdout)[1]  # type: ignore[index]
    assert f"wall link: http://ioc.example/?token={token}" in made.stdout
    token_id = re.search(r"token (\d+) 'wall 7'", made.stdout)[1]  # type: ignore[index]
    async with client_for(api_app, token) as wall:
        assert (await wall.get("/api/summary")).status_code == 200
        listed = await asyncio.to_thread(ioc, database_url, "tokens", "list")
        assert re.search(rf"^{token_id}\s+wall 7\s+viewer\s+{re.escape(token[:12])}", listed.stdout, re.M)
        assert token not in listed.stdout  # the secret is never shown again
        assert (await asyncio.to_thread(ioc, database_url, "tokens", "revoke", token_id)).returncode == 0
        assert (await wall.get("/api/summary")).status_code == 401
    assert bearer(token)["Authorization"].startswith("Bearer ioct_")
