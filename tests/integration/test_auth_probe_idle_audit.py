"""Leftovers of the auth red team: what /readyz tells strangers, idle browser sessions, who an audit entry names.

* ``/readyz`` told anonymous callers the database error, the broker state and stalled stages; now the status
  (and HTTP code, which probes need) only, the detail to signed-in viewers and above.
* A person's browser session lasted its 12 hours however long it went unused; now it ends after
  ``IOC_AUTH__IDLE_TIMEOUT_MIN`` without use (its open live feed too). A wall's session (an API token's) does not.
* An OIDC caller whose ``preferred_username`` equals a local user's name wrote the same audit rows as that user;
  now OIDC actors are ``oidc:NAME`` and the audit API says each entry's ``actor_via``.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest
from fastapi import FastAPI

from ioc.api.app import create_app
from ioc.auth import secrets as sec
from ioc.auth import store
from ioc.auth.config import AuthConfig
from ioc.settings import Settings
from tests.integration.test_auth_oidc import Provider, provider  # noqa: F401  (provider: the fixture)
from tests.support.auth import client_for, login, make_token, make_user
from tests.support.tasks import until

pytestmark = pytest.mark.integration


async def test_readyz_tells_strangers_the_status_only(api_app: FastAPI, database_url: str) -> None:
    async with client_for(api_app) as anon:
        got = await anon.get("/readyz")
    assert got.status_code in (200, 503) and got.json() == {"status": "ready" if got.status_code == 200
                                                            else "not ready"}
    async with client_for(api_app, "ioct_not-a-real-token") as stale:  # a bad credential: a stranger still
        assert set((await stale.get("/readyz")).json()) == {"status"}
    async with client_for(api_app, await make_token(database_url, "viewer")) as viewer:
        detail = await viewer.get("/readyz")
    assert detail.status_code == got.status_code
    assert set(detail.json()) == {"status", "checks", "problems"} and detail.json()["checks"]["database"]
    user, password = await make_user(database_url, "viewer")
    async with client_for(api_app) as browser:  # a signed-in browser too
        await login(browser, user, password)
        assert "checks" in (await browser.get("/readyz")).json()
    async with client_for(api_app) as anon:
        assert (await anon.get("/healthz")).json() == {"status": "ok"}  # unchanged


async def _age_sessions(database_url: str, minutes: float, *, user: str | None = None,
                        token_id: int | None = None) -> None:
    conn = await asyncpg.connect(database_url)
    try:
        await conn.execute(
            "UPDATE auth_sessions SET last_seen_at = now() - make_interval(mins => $3) "
            "WHERE user_id = (SELECT id FROM auth_users WHERE username = $1) OR api_token_id = $2",
            user, token_id, minutes)
    finally:
        await conn.close()


async def test_an_unused_officer_session_ends_and_a_wall_session_does_not(api_app: FastAPI,
                                                                          database_url: str) -> None:
    idle = api_app.state.auth.config.idle_timeout_min
    assert idle == 60  # the default
    user, password = await make_user(database_url, "officer")
    conn = await asyncpg.connect(database_url)
    try:
        wall, row = await store.create_token(conn, f"wall-{uuid.uuid4().hex[:6]}", store.Role.VIEWER, 1)
    finally:
        await conn.close()
    async with client_for(api_app) as officer, client_for(api_app) as screen:
        await login(officer, user, password)
        assert (await screen.get(f"/?token={wall}")).status_code == 303  # the wall's link: a session cookie
        for client in (officer, screen):
            assert (await client.get("/api/auth/me")).status_code == 200
        # used within the limit: still on
        await _age_sessions(database_url, idle - 5, user=user, token_id=row["id"])
        assert (await officer.get("/api/auth/me")).status_code == 200  # ... and this use counts as use
        await _age_sessions(database_url, idle + 1, user=user, token_id=row["id"])
        sid = officer.cookies["ioc_session"]
        conn = await asyncpg.connect(database_url)
        try:
            # the live feed's recheck ends the idle officer's feed, not the wall's
            roles = await store.live_session_roles(conn, [sec.digest(sid), sec.digest(screen.cookies["ioc_session"])],
                                                   idle * 60.0)
            assert list(roles) == [sec.digest(screen.cookies["ioc_session"])]
            assert (await officer.get("/api/auth/me")).status_code == 401
            assert (await officer.get("/ops")).status_code == 401  # the page sends the officer to the login
            assert await store.session_principal(conn, sid, 0.0) is not None  # 0: no idle limit
        finally:
            await conn.close()
        # the wall, unused for hours as far as the cookie goes, goes on
        await _age_sessions(database_url, 10 * 60, token_id=row["id"])
        assert (await screen.get("/api/auth/me")).json()["name"] == row["name"].join(["token:", ""])
        await login(officer, user, password)  # a new login starts afresh
        assert (await officer.get("/api/auth/me")).status_code == 200


@pytest.fixture
async def oidc_incident(database_url: str, provider: Provider) -> AsyncIterator[tuple[FastAPI, int]]:  # noqa: F811
    """An app that accepts the provider's tokens and leads, with one open incident of its own in the database."""
    conn = await asyncpg.connect(database_url)
    try:
        tag = uuid.uuid4().hex[:8]
        inc = await conn.fetchval(
            "INSERT INTO incidents (group_key, category, severity, state, title, district, started_at, updated_at, "
            "detail) VALUES ($1, 'power', 'minor', 'open', 'audit test', 'HB', now(), now(), '{}'::jsonb) "
            "RETURNING id", f"audit:{tag}")
        alert = await conn.fetchval(
            "INSERT INTO alerts (dedupe_key, rule, category, severity, state, title, explanation, device_id, kind, "
            "district, incident_id, started_at, last_seen_at, evidence) VALUES ($1, 'mains_power_lost', 'power', "
            "'minor', 'open', 'mains lost', 'mains lost', $2, 'bts', 'HB', $3, now(), now(), '{}'::jsonb) "
            "RETURNING id", f"audit:{tag}", f"AUDIT-{tag}", inc)
        await conn.execute("UPDATE incidents SET detail = jsonb_build_object('members', jsonb_build_array($2::bigint)) "
                           "WHERE id = $1", inc, alert)
    finally:
        await conn.close()
    auth = AuthConfig(oidc_issuer=provider.issuer, oidc_audience=provider.client_id,
                      oidc_role_map={"ioc-duty": "officer"})
    app = create_app(Settings(database_url=database_url, auth=auth))
    async with app.router.lifespan_context(app):
        await until(lambda: app.state.alerts is not None and app.state.alerts.loaded, 20, "the brain leading")
        yield app, inc


async def test_an_oidc_caller_named_like_a_local_user_is_told_apart_in_the_audit(
        oidc_incident: tuple[FastAPI, int], provider: Provider, database_url: str) -> None:  # noqa: F811
    app, inc = oidc_incident
    name, password = await make_user(database_url, "officer")
    token = provider.id_token(f"u-{name}", preferred_username=name, roles=["ioc-duty"])
    async with client_for(app) as local, client_for(app, token) as remote:
        await login(local, name, password)
        me = (await remote.get("/api/auth/me")).json()
        assert (me["name"], me["via"], me["actor"]) == (name, "oidc", f"oidc:{name}")
        for client, note in ((local, "local"), (remote, "remote")):
            got = await client.post(f"/api/incidents/{inc}/comment", json={"note": note})
            assert got.status_code == 200, got.text
        acked = await remote.post(f"/api/incidents/{inc}/ack", json={})
        assert acked.json()["acked_by"] == f"oidc:{name}"
        history = (await local.get(f"/api/incidents/{inc}/history")).json()
        said = [(e["action"], e["actor"], e["actor_via"], e["note"]) for e in history
                if e["action"] in ("commented", "acknowledged")]
        assert {e["actor_via"] for e in history if e["actor"] == "system"} == {"system"}
        assert said == [("commented", name, "user", "local"), ("commented", f"oidc:{name}", "oidc", "remote"),
                        ("acknowledged", f"oidc:{name}", "oidc", None)], said
        detail = (await local.get(f"/api/incidents/{inc}")).json()
        assert [e["actor_via"] for e in detail["history"]][-3:] == ["user", "oidc", "oidc"]
        for action in ("resolve", "close"):  # nothing left live in the session's database
            done = await local.post(f"/api/incidents/{inc}/{action}", json={})
            assert done.status_code == 200, (action, done.text)
    conn = await asyncpg.connect(database_url)
    try:
        rows = await conn.fetch("SELECT actor FROM alert_events WHERE incident_id = $1 AND action = 'commented' "
                                "ORDER BY id", inc)
        assert [r["actor"] for r in rows] == [name, f"oidc:{name}"]  # the rows themselves differ
        with pytest.raises(store.AuthStoreError, match="reserved"):
            await store.create_user(conn, "System", store.Role.OFFICER, sec.new_password())
    finally:
        await conn.close()
