"""The pages' login through the OpenID Connect provider (SSO): the authorization-code flow with PKCE (S256), state
and nonce, on Authlib's OAuth 2 client (over httpx2, the maintained httpx that Authlib now uses).

The flow's secrets (state, nonce, PKCE verifier, redirect URI, the page to return to) travel in a short-lived
cookie signed (itsdangerous) with a key derived from the client secret, so any replica can finish a login another
began, and nothing is stored before the person is known. The provider's code is single-use (RFC 6749 §4.1.2), so
a replayed callback is refused by the provider. The ID token is checked by the same :class:`OidcVerifier` as
bearer JWTs (signature against the JWKS, issuer, expiry) with the client id as audience, plus ``nonce`` and
``azp``; its role and name come through the verifier's mapping, so an SSO login and a bearer JWT of the same
person get the same role and the same actor (``oidc:NAME``).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
import ssl
import time
from dataclasses import dataclass
from typing import Any

import httpx2
from authlib.common.errors import AuthlibBaseError
from authlib.integrations.httpx_client import AsyncOAuth2Client
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from ioc.auth.config import AuthConfig
from ioc.auth.model import AuthError, Role
from ioc.auth.oidc import OidcVerifier

logger = logging.getLogger(__name__)

FLOW_COOKIE = "ioc_sso_flow"
CALLBACK_PATH = "/auth/sso/callback"
FLOW_MAX_AGE_S = 600  # the time a person has at the provider's login page
_TIMEOUT_S = 10.0
_METADATA_TTL_S = 3600.0
_METADATA_RETRY_S = 10.0  # after a failed discovery, the next login tries again this soon


class SsoError(Exception):
    """A login through the provider refused: ``status`` and a reason a person can read."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


@dataclass(frozen=True)
class Flow:
    """One login under way, as its cookie carries it."""

    state: str
    nonce: str
    verifier: str
    redirect_uri: str
    next: str


@dataclass(frozen=True)
class SsoLogin:
    """Who the provider says logged in: the name (no ``oidc:`` prefix), the mapped role (``PUBLIC``: none)."""

    name: str
    role: Role
    subject: str


def configured(config: AuthConfig) -> bool:
    """Whether the pages offer the login through the provider (issuer and client id set)."""
    return bool(config.oidc_issuer and config.oidc_client_id)


class SsoClient:
    """Starts and finishes logins through the provider; one per app."""

    def __init__(self, config: AuthConfig, verifier: OidcVerifier) -> None:
        self.config = config
        self.verifier = verifier
        self.client_id = str(config.oidc_client_id)
        secret = config.oidc_client_secret.get_secret_value() if config.oidc_client_secret else ""
        self._secret = secret
        key = hmac.new(secret.encode(), b"ioc-sso-flow-cookie", hashlib.sha256).digest()
        self._signer = URLSafeTimedSerializer(key, salt="ioc-sso-flow")
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._failed_at = -_METADATA_RETRY_S
        self._lock = asyncio.Lock()
        self._tls: ssl.SSLContext | None = None

    def problem(self) -> str | None:
        """What keeps the login from working, in the settings' words (``None``: nothing)."""
        if not self._secret:
            return "IOC_AUTH__OIDC_CLIENT_SECRET is not set"
        return None

    async def _client(self, redirect_uri: str | None = None) -> AsyncOAuth2Client:
        """A client for one request. The TLS context (the system's CAs) is made once, off the event loop: made per
        client it cost 45 ms of the loop's time per login (1.6 ms with it shared)."""
        if self._tls is None:
            self._tls = await asyncio.to_thread(ssl.create_default_context)
        return AsyncOAuth2Client(client_id=self.client_id, client_secret=self._secret, scope=self.config.oidc_scopes,
                                 redirect_uri=redirect_uri, code_challenge_method="S256", timeout=_TIMEOUT_S,
                                 verify=self._tls)

    async def metadata(self) -> dict[str, Any]:
        """The provider's discovery document (cached an hour); :class:`SsoError` 502 when it cannot be read."""
        async with self._lock:
            now = time.monotonic()
            if self._metadata is not None and now - self._metadata_at < _METADATA_TTL_S:
                return self._metadata
            if self._metadata is None and now - self._failed_at < _METADATA_RETRY_S:
                raise SsoError(502, "the identity provider did not answer a moment ago; try again shortly")
            url = str(self.config.oidc_issuer).rstrip("/") + "/.well-known/openid-configuration"
            try:
                async with await self._client() as http:
                    resp = await http.request("GET", url, withhold_token=True)
                    resp.raise_for_status()
                    doc = resp.json()
                if not isinstance(doc, dict):
                    raise ValueError("not a JSON object")
            except (httpx2.HTTPError, ValueError) as err:
                self._failed_at = now
                if self._metadata is not None:  # the provider blinked: the hour-old document still serves
                    logger.warning("SSO: rereading the provider's discovery document failed: %s", err)
                    return self._metadata
                raise SsoError(502, f"the identity provider did not answer ({type(err).__name__})") from None
            if str(doc.get("issuer", "")).rstrip("/") != self.verifier.issuer:
                raise SsoError(502, "the identity provider's discovery document names another issuer")
            if not doc.get("authorization_endpoint") or not doc.get("token_endpoint"):
                raise SsoError(502, "the identity provider's discovery document lacks its endpoints")
            self._metadata, self._metadata_at = doc, now
            return doc

    async def start(self, redirect_uri: str, next_path: str) -> tuple[str, str]:
        """A new login: (the provider's authorization URL to send the browser to, the flow cookie's value)."""
        doc = await self.metadata()
        flow = Flow(state=secrets.token_urlsafe(32), nonce=secrets.token_urlsafe(32),
                    verifier=secrets.token_urlsafe(48), redirect_uri=redirect_uri, next=next_path)
        async with await self._client(redirect_uri) as client:
            url, _ = client.create_authorization_url(str(doc["authorization_endpoint"]), state=flow.state,
                                                     code_verifier=flow.verifier, nonce=flow.nonce)
        cookie = self._signer.dumps([flow.state, flow.nonce, flow.verifier, flow.redirect_uri, flow.next])
        return str(url), str(cookie)

    def read_flow(self, cookie: str | None, state: str | None) -> Flow:
        """The login under way that this callback finishes; :class:`SsoError` 400 when there is none, it is past
        ``FLOW_MAX_AGE_S``, its cookie was altered, or the callback's ``state`` is not its own."""
        if not cookie:
            raise SsoError(400, "no login through the provider is under way in this browser (or cookies are "
                                "blocked); start again from the login page")
        try:
            values = self._signer.loads(cookie, max_age=FLOW_MAX_AGE_S)
            flow = Flow(*(str(v) for v in values))
        except SignatureExpired:
            raise SsoError(400, "the login took too long (more than 10 minutes); start again") from None
        except (BadSignature, TypeError, ValueError):
            raise SsoError(400, "the login's cookie was altered; start again from the login page") from None
        if not state or not secrets.compare_digest(state.encode(), flow.state.encode()):
            raise SsoError(400, "the provider's answer is not for the login this browser started (state "
                                "mismatch); start again from the login page")
        return flow

    async def finish(self, flow: Flow, code: str) -> SsoLogin:
        """Exchange the code (with the PKCE verifier) and check the ID token; who logged in, or :class:`SsoError`."""
        doc = await self.metadata()
        try:
            async with await self._client(flow.redirect_uri) as client:
                token = await client.fetch_token(str(doc["token_endpoint"]), grant_type="authorization_code",
                                                 code=code, code_verifier=flow.verifier)
        except AuthlibBaseError as err:  # the provider's OAuth error answer: invalid_grant for a used code
            raise SsoError(400, f"the provider refused the login code ({err.error}: {err.description or ''}); "
                                "it was used already or has expired: start again") from None
        except httpx2.HTTPStatusError as err:
            raise SsoError(502, f"the identity provider failed (HTTP {err.response.status_code})") from None
        except (httpx2.HTTPError, ValueError) as err:
            raise SsoError(502, f"the identity provider did not answer ({type(err).__name__})") from None
        id_token = token.get("id_token")
        if not isinstance(id_token, str):
            raise SsoError(502, "the provider's answer holds no ID token (is openid in IOC_AUTH__OIDC_SCOPES?)")
        return await self.identify(id_token, flow.nonce)

    async def identify(self, id_token: str, nonce: str) -> SsoLogin:
        """Who an ID token names, checked against the login's ``nonce``; :class:`SsoError` 401 when refused."""
        try:
            claims = await self.verifier.claims(id_token, self.client_id, require=("iat", "nonce"), what="ID token")
        except AuthError as err:
            raise SsoError(401, str(err)) from None
        if not secrets.compare_digest(str(claims["nonce"]).encode(), nonce.encode()):
            raise SsoError(401, "the ID token is not for this login (nonce mismatch)")
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != self.client_id:  # OIDC Core 3.1.3.7, steps 4-5
            raise SsoError(401, "the ID token was issued to another client (azp)")
        return SsoLogin(name=self.verifier.name_of(claims), role=self.verifier.role_of(claims),
                        subject=str(claims["sub"]))


__all__ = ["CALLBACK_PATH", "FLOW_COOKIE", "FLOW_MAX_AGE_S", "Flow", "SsoClient", "SsoError", "SsoLogin",
           "configured"]
