"""OpenID Connect bearer JWTs (Keycloak, Active Directory FS, any provider with a JWKS), checked with PyJWT.

The signature is checked against the provider's JWKS (fetched from its discovery document unless set,
cached, refetched when a token names an unknown key id, at most every ``oidc_jwks_refresh_s``); then issuer,
audience and expiry. The role comes from a claim through ``oidc_role_map``. The pages' login through the provider
(:mod:`ioc.auth.sso`) checks its ID tokens here too, so both give a person the same role and name.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import httpx
import jwt

from ioc.auth.config import AuthConfig
from ioc.auth.model import AuthError, Principal, Role

logger = logging.getLogger(__name__)
LEEWAY_S = 30  # clock skew tolerated on exp / nbf / iat


class OidcVerifier:
    """Validates the provider's JWTs; one per app."""

    def __init__(self, config: AuthConfig) -> None:
        if not config.oidc_issuer:
            raise ValueError("OIDC needs IOC_AUTH__OIDC_ISSUER")
        if not config.oidc_audience:
            raise ValueError("OIDC needs IOC_AUTH__OIDC_AUDIENCE (the client id the tokens are issued for)")
        self.config = config
        self.issuer = config.oidc_issuer.rstrip("/")
        self._jwks: jwt.PyJWKClient | None = None
        self._lock = asyncio.Lock()

    async def _client(self) -> jwt.PyJWKClient:
        async with self._lock:
            if self._jwks is None:
                url = self.config.oidc_jwks_url or await self._discover()
                self._jwks = jwt.PyJWKClient(url, cache_jwk_set=True, lifespan=3600, timeout=10,
                                             cooldown_duration=self.config.oidc_jwks_refresh_s)
            return self._jwks

    async def _discover(self) -> str:
        url = self.issuer + "/.well-known/openid-configuration"
        try:
            async with httpx.AsyncClient(timeout=10) as http:
                resp = await http.get(url)
                resp.raise_for_status()
                doc = resp.json()
        except (httpx.HTTPError, ValueError) as err:
            raise AuthError(f"OIDC discovery failed: {err}") from None
        if str(doc.get("issuer", "")).rstrip("/") != self.issuer:
            raise AuthError("OIDC discovery names another issuer")
        return str(doc["jwks_uri"])

    async def verify(self, token: str) -> Principal:
        """The caller of a bearer JWT, or :class:`AuthError`."""
        claims = await self.claims(token, str(self.config.oidc_audience), what="bearer token")
        return Principal(name=self.name_of(claims), role=self.role_of(claims), via="oidc")

    async def claims(self, token: str, audience: str, require: tuple[str, ...] = (),
                     what: str = "token") -> dict[str, Any]:
        """The claims of a JWT the provider signed for ``audience`` (signature, issuer, audience, expiry checked;
        ``require``: more claims that must be present), or :class:`AuthError` naming ``what`` was refused."""
        client = await self._client()
        try:
            kid = jwt.get_unverified_header(token).get("kid")
            if kid:
                keys = [await asyncio.to_thread(client.get_signing_key, kid)]
            else:  # no key id (small providers with one key): try the set's signing keys
                keys = await asyncio.to_thread(client.get_signing_keys)
            return self._decode(token, keys, audience, require)
        except (jwt.PyJWTError, jwt.PyJWKClientError) as err:
            raise AuthError(f"invalid {what}: {err}") from None

    def _decode(self, token: str, keys: list[jwt.PyJWK], audience: str,
                require: tuple[str, ...]) -> dict[str, Any]:
        error: jwt.PyJWTError = jwt.InvalidSignatureError("no signing key")
        for key in keys:
            try:
                claims: dict[str, Any] = jwt.decode(
                    token, key.key, algorithms=self.config.oidc_algorithms, audience=audience,
                    issuer=[self.issuer, self.issuer + "/"], leeway=LEEWAY_S,
                    options={"require": ["exp", "iss", "aud", "sub", *require]})
                return claims
            except jwt.InvalidSignatureError as err:
                error = err
        raise error

    def name_of(self, claims: dict[str, Any]) -> str:
        """The caller's name in the audit trail (``oidc:`` goes before it): the name claim, else email, else sub."""
        return str(claims.get(self.config.oidc_name_claim) or claims.get("email") or claims["sub"])[:64]

    def role_of(self, claims: dict[str, Any]) -> Role:
        """The highest role any value of the role claim maps to; ``PUBLIC`` (no access) when none does."""
        value: Any = claims
        for part in self.config.oidc_role_claim.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        values = [value] if isinstance(value, str) else value if isinstance(value, list) else []
        best = Role.PUBLIC
        for item in values:
            mapped = self.config.oidc_role_map.get(str(item), str(item))
            try:
                best = max(best, Role.parse(mapped))
            except ValueError:
                continue
        return best
