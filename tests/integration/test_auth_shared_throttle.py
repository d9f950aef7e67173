"""Login and action limits hold across API replicas: two app objects, each with its own memory, on one
PostgreSQL database (ioc/auth/throttle.py, migration 0017). Before, each replica counted alone, so a client
spreading its guesses over N replicas had N times the attempts."""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
import pytest
from fastapi import FastAPI
from limits import parse
from prometheus_client import REGISTRY

from ioc.auth.config import AuthConfig
from ioc.auth.service import Authenticator
from ioc.auth.throttle import Throttle
from tests.integration.test_auth_hardening import app_with
from tests.support.auth import bearer, make_token, make_user
from tests.support.services import free_port

pytestmark = pytest.mark.integration


def client(app: FastAPI, address: str, headers: dict[str, str] | None = None) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app, client=(address, 40000)),
                             base_url="http://ioc", headers=headers)


async def login(app: FastAPI, address: str, username: str, password: str) -> int:
    async with client(app, address) as c:
        return (await c.post("/api/auth/login", json={"username": username, "password": password})).status_code


def refused(limit: str) -> float:
    return REGISTRY.get_sample_value("ioc_auth_refused_total", {"limit": limit}) or 0.0


@asynccontextmanager
async def two_replicas(database_url: str, **auth: object) -> AsyncIterator[tuple[FastAPI, FastAPI]]:
    async with app_with(database_url, **auth) as a, app_with(database_url, **auth) as b:
        assert a.state.auth.throttle is not b.state.auth.throttle  # separate memory; one database
        yield a, b


def address() -> str:
    return f"198.18.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250 + 1}"


async def test_login_and_action_limits_hold_across_two_replicas(database_url: str) -> None:
    """Per account, limit 4 a minute: 2 wrong guesses on A and 2 on B (each replica under 4 on its own), the 5th is
    refused on either, the right password too (as on one replica: only a browser the user logged in from before
    passes). Per address (2 a minute, many names) and per caller's actions (3 a minute) likewise."""
    user, password = await make_user(database_url, "officer")
    other, other_password = await make_user(database_url, "viewer")
    token = await make_token(database_url, "officer")
    before = refused("login-account")
    async with two_replicas(database_url, login_rate_per_account="4/minute", login_rate_per_address="2/minute",
                            action_rate="3/minute") as (a, b):
        codes = [await login(a, address(), user, "guess") for _ in range(2)]
        codes += [await login(b, address(), user.upper(), "guess") for _ in range(2)]
        assert codes == [401] * 4, codes
        assert await login(b, address(), user, "guess") == 429
        assert await login(a, address(), f" {user} ", "guess") == 429
        assert await login(a, address(), user, password) == 429
        assert await login(b, address(), user, password) == 429
        assert await login(b, address(), other, other_password) == 200  # another account is not held
        assert refused("login-account") - before == 4

        spray = address()
        codes = [await login(app, spray, f"spray-{uuid.uuid4().hex[:8]}", "x") for app in (a, b, a, b)]
        assert codes == [401, 401, 429, 429], codes  # many names from one address, over both

        async with client(a, address(), bearer(token)) as on_a, client(b, address(), bearer(token)) as on_b:
            actions = [(await c.post("/api/incidents/999999999/comment", json={"note": "x"})).status_code
                       for c in (on_a, on_b, on_a, on_b, on_a)]
        assert 429 not in actions[:3] and actions[3:] == [429, 429], actions


async def test_a_flood_of_random_names_keeps_the_table_and_memory_bounded(database_url: str) -> None:
    """Rounds of 300 login attempts (20 at once) with random names from random addresses over two replicas'
    limiters (the login route's checks, without its password hashing): each hit deletes expired rows, so the
    table holds about one window's rows, not every name ever tried; each replica's memory likewise."""
    config = AuthConfig(login_rate="10/second", login_rate_per_address="60/second", login_rate_per_account="10/second")
    pools = [await asyncpg.create_pool(database_url, min_size=1, max_size=5) for _ in range(2)]
    try:
        replicas = [Authenticator(config, pool_of=functools.partial(lambda pool: pool, p)) for p in pools]

        async def attempt(i: int) -> None:
            auth, where = replicas[i % 2], address()
            assert await auth.allow_login_from(where) and await auth.allow_login(where, uuid.uuid4().hex)

        baseline = await pools[0].fetchval("SELECT count(*) FROM auth_throttle")
        sizes = []
        for _ in range(3):
            for first in range(0, 300, 20):
                await asyncio.gather(*(attempt(i) for i in range(first, first + 20)))
            sizes.append(await pools[0].fetchval("SELECT count(*) FROM auth_throttle"))
            await asyncio.sleep(1.2)  # this round's rows expire
        # 2,700 rows written in all; at the end of a round its own rows (900 at most) are there, the rounds
        # before have been cleared by its hits
        assert min(sizes) >= 300 and max(sizes) <= baseline + 3 * 300 + 50, (baseline, sizes)
        assert all(len(auth.throttle.local) <= 3 * 150 for auth in replicas)
        for _ in range(30):
            await replicas[0].allow_login_from(address())
        left = await pools[0].fetchval("SELECT count(*) FROM auth_throttle WHERE expires_at < now()")
        assert left <= max(0, 3 * 300 - 30 * 8) + baseline, left
        print(f"\nflood: baseline {baseline} rows, after each round of 300 names {sizes}, expired left {left}")
    finally:
        for pool in pools:
            await pool.close()


async def test_database_slow_or_away_the_process_counts_alone(database_url: str,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    """The shared count locked (a database too slow to answer): each replica falls back to its own count after
    ``timeout_s`` — the limit still holds per process, logins still work — and the shared count is used again
    once it answers. The database away altogether: the same, without waiting."""
    user, password = await make_user(database_url, "officer")
    late = f"late-{uuid.uuid4().hex[:8]}"
    before = REGISTRY.get_sample_value("ioc_auth_limits_local_total", {"limit": "login-account"}) or 0.0
    db = await asyncpg.connect(database_url)
    try:
        async with two_replicas(database_url, login_rate_per_account="2/minute") as (a, b):
            for app in (a, b):
                app.state.auth.throttle.timeout_s = 0.2
            with caplog.at_level(logging.WARNING, "ioc.auth.throttle"):
                async with db.transaction():
                    await db.execute("LOCK TABLE auth_throttle IN ACCESS EXCLUSIVE MODE")
                    held = [await a.state.auth.allow_login(address(), user) for _ in range(3)]
                    assert held == [True, True, False], held  # not opened: this replica's own count holds
                    assert await login(b, address(), user, password) == 200  # nor shut: B counts alone too
            assert "this process counts alone" in caplog.text
            after = REGISTRY.get_sample_value("ioc_auth_limits_local_total", {"limit": "login-account"}) or 0.0
            assert after - before == 3  # A: 2 (the 3rd was refused by its own count first), B: 1
            # back: the shared count again (B's 2 attempts on another account reach A's limit)
            assert [await b.state.auth.allow_login(address(), late) for _ in range(2)] == [True, True]
            assert await login(a, address(), late, "any") == 429
    finally:
        await db.close()

    dead = await asyncpg.create_pool(f"postgresql://postgres@127.0.0.1:{free_port()}/none", min_size=0)
    try:
        throttle = Throttle(lambda: dead, timeout_s=2.0)
        started = time.monotonic()
        answers = [await throttle.hit("login-account", parse("2/minute"), "an") for _ in range(3)]
        assert answers == [True, True, False]
        assert time.monotonic() - started < 3.0  # connection refused: no wait for the timeout
    finally:
        await dead.close()

