"""The pages' login through the OpenID Connect provider (SSO) against a real local provider (``oidc-provider-mock``,
started here, with a client registered at it for the app's callback): the browser's redirects are followed by hand
over HTTP, the provider's login form posted as a person would, and each step's answer checked. Refusals (no role,
a state or nonce not the login's own, a replayed code, an altered cookie, the provider down, no client secret) open
no session."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit

import asyncpg
import httpx
import pytest
import uvicorn
import websockets
from fastapi import FastAPI

from ioc.api.app import create_app
from ioc.auth import sso
from ioc.auth.config import AuthConfig
from ioc.auth.service import CSRF_COOKIE, SESSION_COOKIE
from ioc.settings import Settings
from tests.support.services import free_port

oidc_provider_mock = pytest.importorskip("oidc_provider_mock")
pytestmark = pytest.mark.integration

ROLE_MAP = {"ioc-duty": "officer", "ioc-lead": "supervisor"}


@pytest.fixture(scope="module")
def issuer() -> Iterator[str]:
    with oidc_provider_mock.run_server_in_thread() as server:
        yield f"http://localhost:{server.server_port}"


@dataclass
class Site:
    """The app on a real port, registered at the provider as a confidential client."""

    app: FastAPI
    base: str
    issuer: str
    client_id: str
    secret: str
    database_url: str

    def user(self, prefix: str, **claims: Any) -> tuple[str, str]:
        """A person at the provider: (sub, preferred_username)."""
        sub, name = f"u-{uuid.uuid4().hex[:8]}", f"{prefix}-{uuid.uuid4().hex[:6]}"
        httpx.put(f"{self.issuer}/users/{sub}", json={"preferred_username": name, **claims},
                  timeout=10).raise_for_status()
        return sub, name


@contextlib.asynccontextmanager
async def running(database_url: str, issuer: str, register: bool = True,
                  **auth: Any) -> AsyncIterator[Site]:
    """The app served on a free port; unless told otherwise, an SSO client registered for its callback."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    client_id, secret = "unregistered", ""
    if register:
        reg = httpx.post(f"{issuer}/oauth2/clients", json={"redirect_uris": [base + sso.CALLBACK_PATH]}, timeout=10)
        reg.raise_for_status()
        client_id, secret = reg.json()["client_id"], reg.json()["client_secret"]
        auth = {"oidc_client_id": client_id, "oidc_client_secret": secret, **auth}
    config = AuthConfig(oidc_issuer=issuer, oidc_role_map=ROLE_MAP, ws_recheck_s=2, **auth)
    app = create_app(Settings(database_url=database_url, auth=config), role="api")  # no brain: quicker
    async with app.router.lifespan_context(app):
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="off",
                                               log_level="warning"))
        task = asyncio.create_task(server.serve())
        while not server.started:
            assert not task.done(), task
            await asyncio.sleep(0.02)
        try:
            yield Site(app, base, issuer, client_id, secret, database_url)
        finally:
            server.should_exit = True
            await task


@pytest.fixture
async def site(database_url: str, issuer: str) -> AsyncIterator[Site]:
    async with running(database_url, issuer) as site:
        yield site


@dataclass
class Started:
    """A login begun at the app and carried through the provider's form, not yet back at the app."""

    authorize_url: str
    flow_cookie: str
    callback_url: str


async def begin(browser: httpx.AsyncClient, site: Site, sub: str, next_path: str | None = None,
                nonce: str | None = None) -> Started:
    """``/auth/sso/login``, then the provider's login form posted for ``sub`` (``nonce``: sent to the provider in
    place of the app's, as someone injecting a code obtained for another login would)."""
    query = {"next": next_path} if next_path is not None else {}
    start = await browser.get(f"{site.base}/auth/sso/login", params=query)
    assert start.status_code == 303, start.text
    flow_cookie = browser.cookies.get(sso.FLOW_COOKIE)
    assert flow_cookie, start.headers
    url = start.headers["location"]
    if nonce is not None:
        parts = urlsplit(url)
        params = {k: v[0] for k, v in parse_qs(parts.query).items()}
        url = urlunsplit(parts._replace(query=urlencode({**params, "nonce": nonce})))
    form = await browser.get(url)
    assert form.status_code == 200 and 'name="sub"' in form.text, form.text[:300]
    sent = await browser.post(url, data={"sub": sub})
    assert sent.status_code in (302, 303), sent.text[:300]
    callback = sent.headers["location"]
    assert callback.startswith(site.base + sso.CALLBACK_PATH + "?"), callback
    return Started(start.headers["location"], flow_cookie, callback)


async def back(site: Site, started: Started, callback_url: str | None = None,
               flow_cookie: str | None = None) -> httpx.Response:
    """The provider's redirect back to the app, from a fresh browser holding (only) the flow cookie."""
    cookie = started.flow_cookie if flow_cookie is None else flow_cookie
    headers = {"Cookie": f"{sso.FLOW_COOKIE}={cookie}"} if cookie else {}
    async with httpx.AsyncClient(timeout=15) as fresh:
        return await fresh.get(callback_url or started.callback_url, headers=headers)


def session_of(resp: httpx.Response) -> str | None:
    """The session cookie an answer sets, if any."""
    for header in resp.headers.get_list("set-cookie"):
        name, _, rest = header.partition("=")
        if name == SESSION_COOKIE:
            return rest.split(";", 1)[0] or None
    return None


async def oidc_sessions(site: Site, name: str) -> int:
    conn = await asyncpg.connect(site.database_url)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM auth_sessions WHERE oidc_name = $1", name))
    finally:
        await conn.close()


async def bearer_id_token(site: Site, sub: str) -> str:
    """The provider's ID token for ``sub`` got outside the app, as a script holding a bearer JWT would."""
    async with httpx.AsyncClient(timeout=10) as http:
        query = {"client_id": site.client_id, "redirect_uri": site.base + sso.CALLBACK_PATH, "response_type": "code",
                 "scope": "openid profile", "state": "s", "nonce": uuid.uuid4().hex}
        auth = await http.post(f"{site.issuer}/oauth2/authorize", params=query, data={"sub": sub})
        code = parse_qs(urlsplit(auth.headers["location"]).query)["code"][0]
        tok = await http.post(f"{site.issuer}/oauth2/token", data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": site.base + sso.CALLBACK_PATH},
            auth=(site.client_id, site.secret))
        tok.raise_for_status()
        return str(tok.json()["id_token"])


async def test_a_mapped_person_gets_a_session_like_a_local_login(site: Site) -> None:
    sub, name = site.user("lan", roles=["staff", "ioc-duty"])
    async with httpx.AsyncClient(timeout=15) as browser:
        started = await begin(browser, site, sub, next_path="/ops?view=incidents#map")
        sent = parse_qs(urlsplit(started.authorize_url).query)
        assert sent["code_challenge_method"] == ["S256"] and len(sent["code_challenge"][0]) == 43  # PKCE
        assert sent["state"][0] and sent["nonce"][0] and sent["client_id"] == [site.client_id]
        assert "openid" in sent["scope"][0].split()
        done = await browser.get(started.callback_url)
        assert done.status_code == 303 and done.headers["location"] == "/ops?view=incidents#map", done.text
        assert session_of(done) and browser.cookies.get(CSRF_COOKIE)
        assert browser.cookies.get(sso.FLOW_COOKIE) is None  # one login, one callback
        me = (await browser.get(f"{site.base}/api/auth/me")).json()
        assert (me["actor"], me["role"], me["via"]) == (f"oidc:{name}", "officer", "session"), me
        # The same person's bearer JWT: the same role and the same name in the audit trail.
        token = await bearer_id_token(site, sub)
        as_bearer = (await browser.get(f"{site.base}/api/auth/me", headers={"Authorization": f"Bearer {token}"}))
        assert (as_bearer.json()["actor"], as_bearer.json()["role"]) == (me["actor"], me["role"]), as_bearer.text
        # A cookie session's change needs the CSRF token, as a local login's (logging out is one).
        no_csrf = await browser.post(f"{site.base}/api/auth/logout")
        assert no_csrf.status_code == 403 and "CSRF" in no_csrf.text, no_csrf.text
        # An open live feed on this session closes when the person logs out; the session is then gone.
        cookie = f"{SESSION_COOKIE}={browser.cookies.get(SESSION_COOKIE)}"
        ws_url = site.base.replace("http", "ws") + "/ws/live?types=status"
        async with websockets.connect(ws_url, additional_headers={"Cookie": cookie}, open_timeout=5) as ws:
            out = await browser.post(f"{site.base}/api/auth/logout", headers={"X-CSRF-Token": me["csrf"]})
            assert out.status_code == 200, out.text
            with pytest.raises(websockets.ConnectionClosed) as closed:
                async with asyncio.timeout(20):
                    while True:
                        await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        assert (await browser.get(f"{site.base}/api/auth/me")).status_code == 401
        assert (await browser.get(f"{site.base}/api/auth/me", headers={"Cookie": cookie})).status_code == 401


async def test_a_person_without_an_ioc_role_gets_403_and_no_session(site: Site) -> None:
    sub, name = site.user("guest", roles=["staff"])
    async with httpx.AsyncClient(timeout=15) as browser:
        started = await begin(browser, site, sub)
        done = await browser.get(started.callback_url)
        assert done.status_code == 403 and "no IOC role" in done.text and name in done.text, done.text
        assert done.headers["content-type"].startswith("text/html")
        assert session_of(done) is None and browser.cookies.get(SESSION_COOKIE) is None
        assert (await browser.get(f"{site.base}/api/auth/me")).status_code == 401
    assert await oidc_sessions(site, name) == 0


async def test_a_state_cookie_or_code_not_the_logins_own_is_refused(site: Site) -> None:
    sub, name = site.user("tuan", roles=["viewer"])
    async with httpx.AsyncClient(timeout=15) as browser:
        started = await begin(browser, site, sub)
    parts = urlsplit(started.callback_url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    tampered = urlunsplit(parts._replace(query=urlencode({**query, "state": query["state"][:-2] + "xx"})))
    refused = await back(site, started, callback_url=tampered)
    assert refused.status_code == 400 and "state mismatch" in refused.text, refused.text
    no_cookie = await back(site, started, flow_cookie="")
    assert no_cookie.status_code == 400 and "no login through the provider" in no_cookie.text
    altered = started.flow_cookie[:-3] + ("AAA" if not started.flow_cookie.endswith("AAA") else "BBB")
    assert (await back(site, started, flow_cookie=altered)).status_code == 400
    for resp in (refused, no_cookie):
        assert session_of(resp) is None
    # None of those spent the code: the real callback logs in, once.
    done = await back(site, started)
    assert done.status_code == 303 and session_of(done), done.text
    replay = await back(site, started)
    assert replay.status_code == 400 and "invalid_grant" in replay.text, replay.text
    assert session_of(replay) is None
    assert await oidc_sessions(site, name) == 1
    # A person's session: unused past IOC_AUTH__IDLE_TIMEOUT_MIN (60), it has ended, as a local user's.
    cookie = {"Cookie": f"{SESSION_COOKIE}={session_of(done)}"}
    async with httpx.AsyncClient(timeout=15) as fresh:
        assert (await fresh.get(f"{site.base}/api/auth/me", headers=cookie)).status_code == 200
        conn = await asyncpg.connect(site.database_url)
        try:
            await conn.execute("UPDATE auth_sessions SET last_seen_at = now() - interval '61 minutes' "
                               "WHERE oidc_name = $1", name)
        finally:
            await conn.close()
        assert (await fresh.get(f"{site.base}/api/auth/me", headers=cookie)).status_code == 401


async def test_a_code_issued_for_another_nonce_is_refused(site: Site) -> None:
    """Someone who got a code for their own login (another nonce) and slips it into this browser's callback."""
    sub, name = site.user("injected", roles=["ioc-lead"])
    async with httpx.AsyncClient(timeout=15) as browser:
        started = await begin(browser, site, sub, nonce=f"other-{uuid.uuid4().hex}")
        done = await browser.get(started.callback_url)
    assert done.status_code == 401 and "nonce mismatch" in done.text, done.text
    assert session_of(done) is None
    assert await oidc_sessions(site, name) == 0


async def test_an_altered_or_foreign_id_token_is_refused(site: Site) -> None:
    sub, _ = site.user("forger", roles=["viewer"])
    token = await bearer_id_token(site, sub)
    client = site.app.state.sso if hasattr(site.app.state, "sso") else None
    if client is None:  # made on first use: start one login
        async with httpx.AsyncClient(timeout=15) as browser:
            await browser.get(f"{site.base}/auth/sso/login")
        client = site.app.state.sso
    header, payload, signature = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = base64.urlsafe_b64encode(json.dumps({**claims, "roles": ["admin"]}).encode()).rstrip(b"=").decode()
    with pytest.raises(sso.SsoError) as err:
        await client.identify(f"{header}.{forged}.{signature}", claims["nonce"])
    assert err.value.status == 401 and "signature" in err.value.reason.lower()
    assert (await client.identify(token, claims["nonce"])).role.label == "viewer"  # the token as issued passes
    other = sso.SsoClient(AuthConfig(oidc_issuer=site.issuer, oidc_client_id="another-client",
                                     oidc_client_secret="x"), client.verifier)
    with pytest.raises(sso.SsoError) as err:
        await other.identify(token, claims["nonce"])
    assert err.value.status == 401 and "audience" in err.value.reason.lower()


async def test_next_to_another_site_is_ignored(site: Site) -> None:
    sub, _ = site.user("next", roles=["viewer"])
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example", "javascript:alert(1)"):
        async with httpx.AsyncClient(timeout=15) as browser:
            started = await begin(browser, site, sub, next_path=target)
            done = await browser.get(started.callback_url)
            assert done.status_code == 303 and done.headers["location"] == "/ops", (target, done.headers)


async def test_provider_down_or_half_configured_is_a_clear_refusal(database_url: str, issuer: str) -> None:
    down = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    async with (running(database_url, down, register=False, oidc_client_id="ioc", oidc_client_secret="s") as site,
                httpx.AsyncClient(timeout=15) as browser):
        resp = await browser.get(f"{site.base}/auth/sso/login")
        assert resp.status_code == 502 and "did not answer" in resp.text, resp.text
        assert browser.cookies.get(sso.FLOW_COOKIE) is None
        assert (await browser.get(f"{site.base}/api/auth/sso")).json()["enabled"] is True
    async with (running(database_url, issuer, register=False, oidc_client_id="ioc") as site,  # no secret
                httpx.AsyncClient(timeout=15) as browser):
        assert (await browser.get(f"{site.base}/api/auth/sso")).json()["enabled"] is False
        resp = await browser.get(f"{site.base}/auth/sso/login")
        assert resp.status_code == 503 and "IOC_AUTH__OIDC_CLIENT_SECRET" in resp.text, resp.text
        back_ = await browser.get(f"{site.base}{sso.CALLBACK_PATH}?code=x&state=y")
        assert back_.status_code == 503 and session_of(back_) is None
    async with (running(database_url, issuer, register=False, oidc_audience="ioc") as site,  # bearer JWTs only
                httpx.AsyncClient(timeout=15) as browser):
        assert (await browser.get(f"{site.base}/api/auth/sso")).json()["enabled"] is False
        assert (await browser.get(f"{site.base}/auth/sso/login")).status_code == 404


async def test_the_provider_saying_no_is_shown(site: Site) -> None:
    async with httpx.AsyncClient(timeout=15) as browser:
        start = await browser.get(f"{site.base}/auth/sso/login")
        denied = await browser.post(start.headers["location"], data={"action": "deny"})
        assert denied.status_code in (302, 303), denied.text[:300]
        done = await browser.get(denied.headers["location"])
    assert done.status_code == 403 and "access_denied" in done.text, done.text
    assert session_of(done) is None


async def test_with_strict_cookies_a_page_of_our_own_moves_on(database_url: str, issuer: str) -> None:
    """A Strict session cookie set at the end of a redirect chain begun at the provider's site may not go with
    that chain's next request: the callback answers a page that navigates onward (same-site) instead."""
    async with (running(database_url, issuer, cookie_samesite="strict") as site,
                httpx.AsyncClient(timeout=15) as browser):
        sub, name = site.user("strict", roles=["viewer"])
        started = await begin(browser, site, sub, next_path="/ops#/alerts")
        done = await browser.get(started.callback_url)
        assert done.status_code == 200 and '<meta http-equiv="refresh" content="0;url=/ops#/alerts">' in done.text
        assert session_of(done) and "samesite=strict" in done.headers["set-cookie"].lower()
        me = await browser.get(f"{site.base}/api/auth/me")
        assert me.status_code == 200 and me.json()["actor"] == f"oidc:{name}", me.text
