"""An outside reviewer's pass over identity and roles, against the real app and database: every protected route
and the live feed refuse every kind of bad credential; a route that forgets its role is still CSRF-checked;
logins are limited per account whatever the address; the login page sends nobody off-site; credentials in
URLs stay out of the server's logs; webhook URLs (bearer secrets) do not leak from the notification outbox.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import asyncpg
import httpx
import jwt
import pytest
import uvicorn
import websockets
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI

from ioc.auth import secrets as sec
from ioc.auth import store
from ioc.auth.model import Role
from ioc.auth.service import SESSION_COOKIE
from storage import notifications as outbox
from tests.integration.test_auth_hardening import app_with
from tests.integration.test_auth_routes import PUBLIC, call, routes, ws_status
from tests.support.auth import bearer, client_for, jwks_server, login, make_token, make_user
from tests.support.services import free_port

pytestmark = pytest.mark.integration

ISSUER = "https://sso.example/realms/ioc"


@pytest.fixture(scope="module")
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def jwks_url(rsa_key: rsa.RSAPrivateKey) -> Iterator[str]:
    with jwks_server(lambda: {"k1": rsa_key}) as url:
        yield url


@contextlib.asynccontextmanager
async def oidc_app(database_url: str, jwks_url: str, **auth: Any) -> AsyncIterator[FastAPI]:
    async with app_with(database_url, oidc_issuer=ISSUER, oidc_audience="ioc", oidc_jwks_url=jwks_url, **auth) as app:
        yield app


def claims(**over: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": ISSUER, "aud": "ioc", "sub": "mallory", "iat": now, "exp": now + 600, "roles": ["admin"], **over}


def unsigned(doc: dict[str, Any]) -> str:
    return jwt.encode(doc, None, algorithm="none")  # type: ignore[arg-type]


def hs256_with_the_public_key(key: rsa.RSAPrivateKey) -> str:
    """The classic key-confusion forgery: HMAC keyed with the provider's public key (which anyone can fetch)."""
    pem = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    def b64(raw: bytes) -> str:
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "k1"}).encode())
    body = b64(json.dumps(claims()).encode())
    sig = hmac.new(pem, f"{head}.{body}".encode(), hashlib.sha256).digest()  # PyJWT refuses to do this for us
    return f"{head}.{body}.{b64(sig)}"


async def bad_credentials(database_url: str, key: rsa.RSAPrivateKey) -> dict[str, dict[str, str]]:
    """Every kind of credential that must not open anything, as request headers."""
    other_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def rs256(doc: dict[str, Any], signer: Any = key) -> str:
        return jwt.encode(doc, signer, algorithm="RS256", headers={"kid": "k1"})

    conn = await asyncpg.connect(database_url)
    try:
        expired, _ = await store.create_token(conn, "redteam-expired", Role.ADMIN, 1e-9)
        revoked, row = await store.create_token(conn, "redteam-revoked", Role.ADMIN, 1)
        await store.revoke_token(conn, row["id"])
    finally:
        await conn.close()
    bearers = {
        "unknown api token": "ioct_" + "A" * 43,
        "expired api token": expired,
        "revoked api token": revoked,
        "not a token": "hello",
        "garbage jwt": "a.b.c",
        "alg none": unsigned(claims()),
        "hs256 with the public key": hs256_with_the_public_key(key),
        "signed by another key": rs256(claims(), other_key),
        "another issuer": rs256(claims(iss="https://evil.example")),
        "another audience": rs256(claims(aud="other-app")),
        "expired jwt": rs256(claims(exp=int(time.time()) - 3600)),
        "no subject": rs256({k: v for k, v in claims().items() if k != "sub"}),
        "payload edited": _edited(rs256(claims(roles=["viewer"]))),
    }
    user, password = await make_user(database_url, "admin")
    out = {name: bearer(value) for name, value in bearers.items()}
    out["lowercase scheme, bad token"] = {"Authorization": "bearer ioct_nope"}
    out["ended session cookie"] = {"Cookie": f"{SESSION_COOKIE}={await _ended_session(database_url, user, password)}"}
    return out


def _edited(token: str) -> str:
    head, body, sig = token.split(".")
    doc = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    doc["roles"] = ["admin"]
    return ".".join([head, base64.urlsafe_b64encode(json.dumps(doc).encode()).rstrip(b"=").decode(), sig])


async def _ended_session(database_url: str, user: str, password: str) -> str:
    conn = await asyncpg.connect(database_url)
    try:
        row = await store.user_for_login(conn, user)
        assert row is not None
        sid, _ = await store.create_session(conn, 1, user_id=row["id"])
        session = await store.session_principal(conn, sid)
        assert session is not None and session.session_id is not None
        await store.end_session(conn, session.session_id)
    finally:
        await conn.close()
    return sid


async def test_every_protected_route_refuses_every_bad_credential(
    database_url: str, jwks_url: str, rsa_key: rsa.RSAPrivateKey
) -> None:
    bad = await bad_credentials(database_url, rsa_key)
    async with oidc_app(database_url, jwks_url, action_rate="100000/minute") as app, client_for(app) as client:
        good = jwt.encode(claims(), rsa_key, algorithm="RS256", headers={"kid": "k1"})
        assert (await client.get("/api/auth/me", headers=bearer(good))).json()["role"] == "admin"  # the setup works
        checked = 0
        for method, path, _role in routes(app):
            if method == "WS" or (method, path) in PUBLIC:
                continue
            for name, headers in bad.items():
                client.headers.clear()
                client.cookies.clear()
                client.headers.update(headers)
                got = (await call(client, method, path)).status_code
                assert got == 401, (method, path, name, got)
                checked += 1
        assert checked > 40 * len(bad)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="warning"))
        async with _running(server):
            url = f"ws://127.0.0.1:{port}/ws/live?types=status"
            for name, headers in bad.items():
                assert await ws_status(url, additional_headers=headers) == 401, name
            assert await ws_status(url, additional_headers=bearer(good)) == 101


@contextlib.asynccontextmanager
async def _running(server: uvicorn.Server) -> AsyncIterator[None]:
    task = asyncio.create_task(server.serve())
    while not server.started:
        assert not task.done(), task
        await asyncio.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        await task


async def test_a_route_without_a_role_is_admin_only_and_csrf_checked(api_app: FastAPI, database_url: str) -> None:
    """The fallback for a route that forgets ``requires``: admins only, and like every state-changing route a
    cookie session needs its CSRF token (another site's form cannot send it)."""

    @api_app.post("/api/redteam-undeclared")
    async def undeclared() -> dict[str, str]:
        return {"status": "changed"}

    async with client_for(api_app, await make_token(database_url, "supervisor")) as supervisor:
        assert (await supervisor.post("/api/redteam-undeclared")).status_code == 403
    async with client_for(api_app, await make_token(database_url, "admin")) as admin:
        assert (await admin.post("/api/redteam-undeclared")).status_code == 200  # a bearer needs no CSRF token
    user, password = await make_user(database_url, "admin")
    async with client_for(api_app) as browser:
        csrf = await login(browser, user, password)
        del browser.headers["X-CSRF-Token"]
        assert (await browser.post("/api/redteam-undeclared")).status_code == 403
        assert (await browser.post("/api/redteam-undeclared", headers={"X-CSRF-Token": csrf})).status_code == 200


async def test_logins_are_limited_per_account_whatever_the_address(database_url: str) -> None:
    """A botnet guessing one account's password from many addresses: each address stays under its own limits,
    the account's limit stops them; another account is not affected."""
    user, password = await make_user(database_url, "admin")
    other, other_password = await make_user(database_url, "viewer")
    async with app_with(database_url, login_rate_per_account="3/minute") as app:

        async def attempt(address: str, username: str, pw: str) -> int:
            transport = httpx.ASGITransport(app=app, client=(address, 40000))
            async with httpx.AsyncClient(transport=transport, base_url="http://ioc") as client:
                resp = await client.post("/api/auth/login", json={"username": username, "password": pw})
                return resp.status_code

        spellings = [user, user.upper(), f" {user} "]  # the same account however it is written
        codes = [await attempt(f"198.51.100.{i}", spellings[i], "wrong password") for i in range(3)]
        assert codes == [401, 401, 401], codes
        assert await attempt("203.0.113.9", user, password) == 429
        assert await attempt("203.0.113.9", other, other_password) == 200


async def test_a_browser_the_user_logged_in_from_is_not_held_by_the_account_limit(database_url: str) -> None:
    """The price of the per-account limit: someone hammering an officer's user name from elsewhere would hold the
    officer's own login too. A browser the officer logged in from before (its device cookie, HttpOnly, sent to the
    login route alone) is not held by it; the cookie proves nothing else."""
    user, password = await make_user(database_url, "officer")
    async with app_with(database_url, login_rate_per_account="3/minute") as app:

        def browser(address: str) -> httpx.AsyncClient:
            return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(address, 40000)),
                                     base_url="http://ioc")

        async def login(client: httpx.AsyncClient, username: str, pw: str) -> int:
            return (await client.post("/api/auth/login", json={"username": username, "password": pw})).status_code

        async with browser("10.20.0.5") as officer, browser("203.0.113.7") as stranger:
            first = await officer.post("/api/auth/login", json={"username": user, "password": password})
            assert first.status_code == 200
            cookie = next(h for h in first.headers.get_list("set-cookie") if h.startswith("ioc_device="))
            assert "HttpOnly" in cookie and "Path=/api/auth/login" in cookie and "SameSite=strict" in cookie
            codes = []
            for i in range(4):  # the hammering, from many addresses
                async with browser(f"198.51.100.{i}") as bot:
                    resp = await bot.post("/api/auth/login", json={"username": user, "password": "guess"})
                    codes.append(resp.status_code)
            assert codes == [401, 401, 429, 429], codes
            again = await stranger.post("/api/auth/login", json={"username": user, "password": password})
            assert again.status_code == 429  # a browser the officer never used is held, right password or not
            assert (await login(officer, user, "guess")) == 401  # the cookie does not stand for the password
            assert (await login(officer, user, password)) == 200
            stranger.cookies.set("ioc_device", "made-up", domain="ioc", path="/api/auth/login")
            assert (await login(stranger, user, password)) == 429
            other, other_password = await make_user(database_url, "viewer")  # the cookie is one user's, not any
            for i in range(3):
                async with browser(f"198.51.100.{10 + i}") as bot:
                    await bot.post("/api/auth/login", json={"username": other, "password": "guess"})
            assert (await login(officer, other, other_password)) == 429


async def test_the_login_page_sends_nobody_off_site(api_app: FastAPI) -> None:
    """``/login?next=`` is where the page goes after logging in: an address a browser reads as another site
    (``//evil``, ``/\\evil``, ``/<TAB>/evil``: browsers drop tabs and newlines from URLs) is dropped."""
    async with client_for(api_app) as anon:
        for bad in (
            "//evil.example",
            "/\\evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            " //evil.example",
            "https://evil.example",
            "javascript:alert(1)",
        ):
            resp = await anon.get("/login", params={"next": bad})  # control characters: the edge's text rule (422)
            assert resp.status_code in (303, 422) and resp.headers.get("location", "/login") == "/login", bad
        for good in ("/ops", "/ops#/incidents/7", "/?lang=en", "/%09/not-a-host"):  # %09 stays a path
            resp = await anon.get("/login", params={"next": good})
            assert resp.status_code == 200, (good, resp.status_code)


async def test_credentials_in_urls_stay_out_of_the_logs(database_url: str) -> None:
    """A wall link (``/?token=``) and a feed opened with ``?token=``: the server's access and error logs show
    the request without the secret (logs are shipped, kept and read by more people than the wall's owner)."""
    token = await make_token(database_url, "viewer")
    async with app_with(database_url) as app:
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off", log_level="info"))
        seen = io.StringIO()
        handler = logging.StreamHandler(seen)
        names = ("uvicorn.access", "uvicorn.error")
        async with _running(server):
            for name in names:
                logging.getLogger(name).addHandler(handler)
            try:
                async with httpx.AsyncClient() as client:
                    assert (await client.get(f"http://127.0.0.1:{port}/?token={token}&lang=en")).status_code == 303
                async with websockets.connect(f"ws://127.0.0.1:{port}/ws/live?token={token}&types=status"):
                    pass
            finally:
                for name in names:
                    logging.getLogger(name).removeHandler(handler)
    logged = seen.getvalue()
    assert "/ws/live?" in logged and "GET /?" in logged, logged  # the requests are logged ...
    assert token not in logged and token[5:20] not in logged, logged  # ... without the secret
    assert "lang=en" in logged and "types=status" in logged  # the rest of the address is kept


async def test_webhook_urls_do_not_leak_from_the_outbox(api_app: FastAPI, database_url: str) -> None:
    """A chat webhook's URL is its password (Slack, Teams, Google Chat: whoever has it can post as the IOC);
    the outbox an officer reads names the receiver's site, not its secret path or query."""
    secret_url = "https://hooks.example.vn/services/T0001/B0002/s3cr3tXYZ?key=k3y&token=t0k"
    conn = await asyncpg.connect(database_url)
    try:
        async with conn.transaction():
            ids = await outbox.enqueue(
                conn, [outbox.NotificationRow(None, "webhook", secret_url, "opened", "redteam webhook", {"text": "x"})]
            )
            await conn.execute(
                "UPDATE notifications SET status = 'failed', last_error = $2 WHERE id = $1",
                ids[0],
                f"Client error '404 Not Found' for url '{secret_url}'",
            )
    finally:
        await conn.close()
    for role in ("officer", "admin"):
        async with client_for(api_app, await make_token(database_url, role)) as client:
            rows = (await client.get("/api/notifications", params={"status": "failed", "limit": 5000})).json()
            row = next(r for r in rows if r["id"] == ids[0])
            text = str(row)
            assert "s3cr3t" not in text and "k3y" not in text and "t0k" not in text, row
            assert row["target"].startswith("https://hooks.example.vn/"), row
            assert "404 Not Found" in row["last_error"], row


async def test_the_feed_recheck_and_the_request_path_agree_on_every_credential(database_url: str) -> None:
    """Two lookups decide whether a credential holds: each request's (``store.token_principal`` /
    ``session_principal``) and the live feed's batch recheck (``store.live_token_roles`` / ``live_session_roles``).
    They must agree on every state a credential can be in, role included, or a screen outlives what a request
    would refuse."""
    conn = await asyncpg.connect(database_url)
    try:
        tokens: dict[str, str] = {}
        for state, role, days in (
            ("active", Role.OFFICER, 1.0),
            ("expired", Role.VIEWER, 1e-9),
            ("revoked", Role.ADMIN, 1.0),
            ("walls", Role.VIEWER, 1.0),
            ("walls-revoked", Role.VIEWER, 1.0),
            ("walls-expiring", Role.VIEWER, 1e-9),
        ):
            tokens[state], row = await store.create_token(conn, f"agree-{state}", role, days)
            if state == "revoked":
                await store.revoke_token(conn, row["id"])
        sessions: dict[str, str] = {}
        for state in ("active", "demoted", "disabled", "logged-out", "password-changed", "expired"):
            user, _ = await make_user(database_url, "supervisor")
            uid = (await store.user_for_login(conn, user) or {})["id"]
            sessions[state], _ = await store.create_session(conn, 1e-9 if state == "expired" else 1, user_id=uid)
            if state == "demoted":
                await store.set_role(conn, user, Role.VIEWER)
            elif state == "disabled":
                await store.set_disabled(conn, user, True)
            elif state == "logged-out":
                await conn.execute("UPDATE auth_sessions SET revoked_at = now() WHERE user_id = $1", uid)
            elif state == "password-changed":
                await store.set_password(conn, user, sec.new_password())
        for state in ("walls", "walls-revoked", "walls-expiring"):
            row = await conn.fetchrow("SELECT id FROM auth_tokens WHERE name = $1", f"agree-{state}")
            sessions[state], _ = await store.create_session(conn, 1, token_id=row["id"])
            if state == "walls-revoked":
                await store.revoke_token(conn, row["id"])
        await asyncio.sleep(0.01)  # past the 1e-9-day expiries
        batch_tokens = await store.live_token_roles(conn, [sec.digest(t) for t in tokens.values()])
        batch_sessions = await store.live_session_roles(conn, [sec.digest(s) for s in sessions.values()])
        verdicts = {}
        for state, secret in tokens.items():
            one = await store.token_principal(conn, secret)
            verdicts[f"token {state}"] = (one and one.role, batch_tokens.get(sec.digest(secret)))
        for state, sid in sessions.items():
            one = await store.session_principal(conn, sid)
            verdicts[f"session {state}"] = (one and one.role, batch_sessions.get(sec.digest(sid)))
    finally:
        await conn.close()
    assert all(request == feed for request, feed in verdicts.values()), verdicts
    held = {name for name, (request, _) in verdicts.items() if request is not None}
    assert held == {"token active", "token walls", "session active", "session demoted", "session walls"}, verdicts
    assert verdicts["session demoted"][0] is Role.VIEWER


async def test_no_answer_holds_a_password_hash_or_another_credential(api_app: FastAPI, database_url: str) -> None:
    """Every GET route, read by an admin (who sees the most): no password hash, no API token or session secret,
    not their digests, not another session's CSRF token; the token list shows a prefix only."""
    user, password = await make_user(database_url, "officer")
    secret = await make_token(database_url, "viewer", "redteam-secret-holder")
    async with client_for(api_app) as browser:
        other_csrf = await login(browser, user, password)
        other_sid = browser.cookies[SESSION_COOKIE]
    conn = await asyncpg.connect(database_url)
    try:
        stored_hash = await conn.fetchval("SELECT password_hash FROM auth_users WHERE username = $1", user)
    finally:
        await conn.close()
    needles = {
        "password hash": stored_hash,
        "argon2": "$argon2",
        "token": secret,
        "token body": secret[12:],
        "session": other_sid,
        "other csrf": other_csrf,
    }
    for value in (secret, other_sid):
        digest = sec.digest(value)
        needles[f"digest of {value[:6]}"] = digest.hex()
        needles[f"b64 digest of {value[:6]}"] = base64.b64encode(digest).decode()
    read = 0
    async with client_for(api_app, await make_token(database_url, "admin")) as admin:
        for method, path, _role in routes(api_app):
            if method != "GET":
                continue
            resp = await call(admin, method, path)
            text = resp.text + " ".join(f"{k}: {v}" for k, v in resp.headers.items())
            leaked = [name for name, needle in needles.items() if needle and needle in text]
            assert not leaked, (path, leaked)
            read += 1
        listed = (await admin.get("/api/auth/tokens")).json()
        mine = next(t for t in listed if t["name"] == "redteam-secret-holder")
        assert mine["prefix"] == secret[:12] and "token" not in mine and "token_hash" not in mine
    assert read > 30
