"""OpenID Connect bearer JWTs against a real local provider (``oidc-provider-mock``, started here): tokens
come out of its authorization-code flow, signed with its key and published in its JWKS; the app finds the
JWKS through discovery and checks signature, issuer, audience and expiry, and maps the role claim."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import jwt
import pytest
from fastapi import FastAPI

from ioc.api.app import create_app
from ioc.api.deps import Role
from ioc.auth import oidc
from ioc.auth.config import AuthConfig
from ioc.settings import Settings
from tests.integration.test_auth_routes import call, routes, serve, ws_status
from tests.support.auth import client_for, jwks_server

oidc_provider_mock = pytest.importorskip("oidc_provider_mock")
pytestmark = pytest.mark.integration

REDIRECT = "http://127.0.0.1:9/callback"


class Provider:
    """The running provider and a client registered at it."""

    def __init__(self, issuer: str) -> None:
        self.issuer = issuer
        reg = httpx.post(f"{issuer}/oauth2/clients", json={"redirect_uris": [REDIRECT]}, timeout=10)
        reg.raise_for_status()
        self.client_id, self.secret = reg.json()["client_id"], reg.json()["client_secret"]

    def id_token(self, sub: str, **claims: Any) -> str:
        """Log ``sub`` in through the authorization-code flow and return the ID token (a signed JWT)."""
        httpx.put(f"{self.issuer}/users/{sub}", json=claims, timeout=10).raise_for_status()
        auth = httpx.post(f"{self.issuer}/oauth2/authorize", params={
            "client_id": self.client_id, "redirect_uri": REDIRECT, "response_type": "code",
            "scope": "openid profile", "state": "s"}, data={"sub": sub}, timeout=10)
        assert auth.status_code in (302, 303), auth.text[:500]
        code = parse_qs(urlsplit(auth.headers["location"]).query)["code"][0]
        tok = httpx.post(f"{self.issuer}/oauth2/token", data={
            "grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT},
            auth=(self.client_id, self.secret), timeout=10)
        tok.raise_for_status()
        return str(tok.json()["id_token"])


@pytest.fixture(scope="module")
def provider() -> Iterator[Provider]:
    with oidc_provider_mock.run_server_in_thread(access_token_max_age=timedelta(seconds=3)) as server:
        yield Provider(f"http://localhost:{server.server_port}")


@pytest.fixture
async def oidc_app(database_url: str, provider: Provider) -> AsyncIterator[FastAPI]:
    auth = AuthConfig(oidc_issuer=provider.issuer, oidc_audience=provider.client_id,
                      oidc_role_map={"ioc-duty": "officer", "ioc-lead": "supervisor"})
    app = create_app(Settings(database_url=database_url, auth=auth))
    async with app.router.lifespan_context(app):
        yield app


async def test_provider_tokens_are_accepted_with_their_mapped_role(oidc_app: FastAPI, provider: Provider) -> None:
    token = provider.id_token("u-lan", preferred_username="lan", roles=["staff", "ioc-duty"])
    async with client_for(oidc_app, token) as client:
        me = (await client.get("/api/auth/me")).json()
        assert (me["name"], me["role"], me["via"]) == ("lan", "officer", "oidc")
        assert (await client.get("/api/summary")).status_code == 200
        # An officer's action goes through (no such incident here), a supervisor's does not.
        acted = await client.post("/api/incidents/999999999/comment", json={"note": "đang xử lý"})
        assert acted.status_code not in (401, 403), acted.text
        assert (await client.put("/api/officers/x", json={"name": "X"})).status_code == 403
    lead = provider.id_token("u-minh", preferred_username="minh", roles="ioc-lead")  # a string claim works too
    async with client_for(oidc_app, lead) as client:
        assert (await client.put("/api/officers/oidc-test", json={"name": "Test"})).status_code == 200


async def test_no_role_is_403_and_a_bad_token_is_401(oidc_app: FastAPI, provider: Provider) -> None:
    nobody = provider.id_token("u-guest", preferred_username="guest")  # authenticated, no IOC role
    async with client_for(oidc_app, nobody) as client:
        assert (await client.get("/api/summary")).status_code == 403
    good = provider.id_token("u-lan2", roles=["viewer"])
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    forged = base64.urlsafe_b64encode(json.dumps({**claims, "roles": ["admin"]}).encode()).rstrip(b"=").decode()
    async with client_for(oidc_app, f"{header}.{forged}.{signature}") as client:
        assert (await client.get("/api/summary")).status_code == 401  # signature no longer matches
    async with client_for(oidc_app, good) as client:
        assert (await client.get("/api/summary")).status_code == 200


async def test_another_audience_or_issuer_is_refused(database_url: str, provider: Provider) -> None:
    token = provider.id_token("u-hoa", roles=["viewer"])
    for auth in (AuthConfig(oidc_issuer=provider.issuer, oidc_audience="another-client"),
                 AuthConfig(oidc_issuer=provider.issuer + "/realms/other", oidc_audience=provider.client_id,
                            oidc_jwks_url=provider.issuer + "/jwks")):
        app = create_app(Settings(database_url=database_url, auth=auth))
        async with app.router.lifespan_context(app), client_for(app, token) as client:
            resp = await client.get("/api/summary")
            assert resp.status_code == 401, (auth, resp.text)


async def test_expired_token_is_refused(oidc_app: FastAPI, provider: Provider,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(oidc, "LEEWAY_S", 0)  # the provider issues 3-second tokens in this module
    token = provider.id_token("u-tuan", roles=["viewer"])
    async with client_for(oidc_app, token) as client:
        assert (await client.get("/api/summary")).status_code == 200
        time.sleep(4.1)
        resp = await client.get("/api/summary")
        assert resp.status_code == 401 and "expired" in resp.text.lower(), resp.text


async def test_provider_token_opens_the_live_feed(oidc_app: FastAPI, provider: Provider) -> None:
    token = provider.id_token("u-wall", preferred_username="wall-3", roles=["viewer"])
    async with serve(oidc_app) as port:
        url = f"ws://127.0.0.1:{port}/ws/live?types=status"
        assert await ws_status(url + f"&token={token}") == 101
        assert await ws_status(url, additional_headers={"Authorization": f"Bearer {token}"}) == 101
        assert await ws_status(url + f"&token={token[:-4]}AAAA") == 401


async def test_jwks_is_cached_and_refetched_for_a_new_key_id() -> None:
    """Key rotation (the mock provider keeps one key, so this one serves a JWKS of its own): the set is
    fetched once, fetched again when a token names a key id it does not hold, and a made-up key id cannot
    make the verifier hammer the provider (cooldown)."""
    from cryptography.hazmat.primitives.asymmetric import rsa

    keys = {kid: rsa.generate_private_key(public_exponent=65537, key_size=2048) for kid in ("k1", "k2")}
    published = ["k1"]
    fetches: list[str] = []
    issuer = "https://sso.example/realms/ioc"

    def token(kid: str) -> str:
        claims = {"iss": issuer, "aud": "ioc", "sub": "u1", "exp": int(time.time()) + 60, "roles": ["viewer"]}
        return jwt.encode(claims, keys.get(kid, keys["k1"]), algorithm="RS256", headers={"kid": kid})

    with jwks_server(lambda: {k: keys[k] for k in published}, fetches) as jwks_url:
        verifier = oidc.OidcVerifier(AuthConfig(oidc_issuer=issuer, oidc_audience="ioc", oidc_jwks_refresh_s=1,
                                                oidc_jwks_url=jwks_url))
        assert (await verifier.verify(token("k1"))).role.label == "viewer"
        assert (await verifier.verify(token("k1"))).name == "u1"
        assert len(fetches) == 1  # cached
        published.append("k2")  # the provider rotates: a new key appears
        time.sleep(1.1)  # past the refetch cooldown
        assert (await verifier.verify(token("k2"))).name == "u1"
        assert len(fetches) == 2  # fetched again for the unknown key id
        for _ in range(5):
            with pytest.raises(oidc.AuthError):
                await verifier.verify(token("made-up"))
        assert len(fetches) <= 3  # at most one more fetch within the cooldown


async def test_every_viewer_route_refuses_a_caller_without_a_role(oidc_app: FastAPI, provider: Provider) -> None:
    """The role below viewer exists only for an authenticated caller whose claims map to no role: every
    viewer route (test_auth_routes checks the other roles) answers it 403."""
    nobody = provider.id_token("u-norole", preferred_username="norole", roles=["staff"])
    checked = 0
    async with client_for(oidc_app, nobody) as client:
        for method, path, role in routes(oidc_app):
            if role is Role.VIEWER and method != "WS":
                assert (await call(client, method, path)).status_code == 403, (method, path)
                checked += 1
    assert checked > 25
