"""Credentials for tests: users and API tokens made straight in a test database, and clients that use them.

    token = await make_token(database_url, "officer")          # an API token (bearer) with that role
    user, password = await make_user(database_url, "viewer")   # a local user for the login page
    headers = bearer(token)                                    # for httpx / websockets
    token = make_token_sync(database_url)                      # same, from sync code (ServeProcess tests)
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager, contextmanager
from typing import Any, TypeVar

import asyncpg
import httpx

from ioc.auth import secrets as sec
from ioc.auth import store
from ioc.auth.model import Role
from ioc.auth.service import CSRF_COOKIE

ROLES = ("viewer", "officer", "supervisor", "admin")
T = TypeVar("T")


async def make_token(database_url: str, role: str = "admin", name: str | None = None, days: float = 1.0) -> str:
    """A new API token with ``role`` (valid ``days``); returns its secret."""
    conn = await asyncpg.connect(database_url)
    try:
        secret, _ = await store.create_token(conn, name or f"test-{role}-{uuid.uuid4().hex[:6]}", Role.parse(role),
                                             days, "tests")
    finally:
        await conn.close()
    return secret


async def make_user(database_url: str, role: str = "officer", username: str | None = None,
                    password: str | None = None) -> tuple[str, str]:
    """A new local user with ``role``; returns (user name, password)."""
    username = username or f"{role}-{uuid.uuid4().hex[:6]}"
    password = password or sec.new_password()
    conn = await asyncpg.connect(database_url)
    try:
        await store.create_user(conn, username, Role.parse(role), password)
    finally:
        await conn.close()
    return username, password


def make_token_sync(database_url: str, role: str = "admin", name: str | None = None) -> str:
    """:func:`make_token` from synchronous code (also from inside a running event loop: it uses a thread)."""
    return _in_thread(make_token(database_url, role, name))


def make_user_sync(database_url: str, role: str = "officer", username: str | None = None,
                   password: str | None = None) -> tuple[str, str]:
    return _in_thread(make_user(database_url, role, username, password))


def _in_thread(coro: Coroutine[Any, Any, T]) -> T:
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def login(client: httpx.AsyncClient, username: str, password: str) -> str:
    """Log ``client`` in through the login route (cookie session); it then sends the CSRF header too."""
    resp = await client.post("/api/auth/login", json={"username": username, "password": password})
    resp.raise_for_status()
    csrf = resp.json()["csrf"]
    assert client.cookies.get(CSRF_COOKIE) == csrf
    client.headers["X-CSRF-Token"] = csrf
    return str(csrf)


@asynccontextmanager
async def client_for(app: Any, token: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """Another in-process client of an app whose lifespan already runs (``None``: anonymous)."""
    headers = bearer(token) if token else {}
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ioc",
                                 headers=headers) as client:
        yield client


@contextmanager
def jwks_server(keys: Callable[[], dict[str, Any]], fetches: list[str] | None = None) -> Iterator[str]:
    """An OpenID provider's key set served on a local port; yields its URL. ``keys()`` gives the private keys
    published now, by key id (read at each fetch: a test may rotate them); each fetch's path goes to ``fetches``."""
    import http.server
    import json
    import threading

    from jwt.algorithms import RSAAlgorithm

    class Jwks(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if fetches is not None:
                fetches.append(self.path)
            body = json.dumps({"keys": [{**json.loads(RSAAlgorithm.to_jwk(key.public_key())), "kid": kid,
                                         "use": "sig", "alg": "RS256"} for kid, key in keys().items()]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Jwks)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/jwks"
    finally:
        server.shutdown()
