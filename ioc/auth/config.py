"""Authentication and HTTP hardening settings (a section of :class:`ioc.settings.Settings`: ``IOC_AUTH__...``)."""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

DEFAULT_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
               "connect-src 'self'; worker-src 'self' blob:; font-src 'self'; object-src 'none'; "
               "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")


class AuthConfig(BaseModel):
    """Who may call the API and the pages, and how the HTTP edge is hardened (see docs/security.md)."""

    model_config = ConfigDict(extra="forbid")

    session_hours: float = Field(12.0, gt=0, description="A browser session expires this long after login.")
    idle_timeout_min: float = Field(60.0, ge=0, description="A person's browser session unused (no request, no "
                                    "live-feed handshake) this long has ended, and its open live feeds close; "
                                    "0: no idle limit. A wall's session (opened with an API token) never idles out.")
    cookie_secure: Literal["auto", "always", "never"] = Field(
        "auto", description="Secure flag on the session cookie: auto = when the request came over HTTPS.")
    cookie_samesite: Literal["lax", "strict"] = "lax"
    token_days: float = Field(365.0, gt=0, description="Default lifetime of a new API token.")
    officer_silence_max_h: float = Field(4.0, gt=0, description="Officers may silence alerts for at most this "
                                         "long; supervisors and admins without limit.")
    allowed_hosts: list[str] = Field(["*"], description="Host headers accepted (TrustedHost), e.g. "
                                     '["ioc.example.gov.vn", "127.0.0.1"]; "*" = any.')
    cors_origins: list[str] = Field([], description="Other origins whose pages may call the API (CORS).")
    ws_origins: list[str] = Field([], description="Origins allowed to open /ws/live besides the page's own "
                                  "origin (clients without an Origin header, i.e. not browsers, are allowed).")
    max_body_bytes: int = Field(1_000_000, gt=0, description="Requests with a larger body are refused (413).")
    login_rate: str = Field("10/minute", description="Login attempts per client address and user name.")
    login_rate_per_address: str = Field("60/minute", description="Login attempts per client address, any user "
                                        "name (password spraying).")
    login_rate_per_account: str = Field("10/minute", description="Login attempts per user name from any address "
                                        "(one account guessed at from many addresses); a browser the user logged "
                                        "in from before (device cookie) is not held by it.")
    login_device_days: float = Field(90.0, ge=0, description="A successful login marks its browser as the user's "
                                     "(HttpOnly cookie for the login route only) for this long; 0: never.")
    action_rate: str = Field("120/minute", description="State-changing requests and WebSocket actions per caller.")
    ws_per_client: int = Field(32, gt=0, description="Open /ws/live connections per client address.")
    ws_recheck_s: float = Field(20.0, gt=0, description="An open /ws/live whose credential no longer holds "
                                "(revoked, logged out, disabled, expired, role too low) is closed (4401) within "
                                "this long: its distinct credentials are looked up again, in one query per kind.")
    connections_per_client: int = Field(256, gt=0, description="Open TCP connections (HTTP and WebSocket) per "
                                        "client address; more are answered 429 at once and closed.")
    connections_max: int = Field(8192, gt=0, description="Open TCP connections in all (at most half the "
                                 "open-files limit); more are answered 503 at once and closed.")
    connections_proxies: list[str] = Field([], description="Addresses or networks of reverse proxies in front: "
                                           "their connections count against connections_max only.")
    heavy_at_once: int = Field(2, gt=0, description="Large answers (ioc/api/heavy.py) read and built at once per "
                               "process; each holds a database connection and a worker thread.")
    heavy_per_caller: int = Field(8, gt=0, description="Large answers one caller (its name, else its address) may "
                                  "have waiting or being built; more are answered 429 with Retry-After.")
    heavy_waiting: int = Field(64, gt=0, description="Large answers that may wait in all; more are answered 503 "
                               "with Retry-After.")
    heavy_large_rows: int = Field(1000, ge=0, description="An answer that may hold more rows than this (its limit, "
                                  "or what it holds) waits for one of the heavy_at_once slots.")
    metrics: bool = Field(True, description="Serve /metrics (to any authenticated caller, e.g. a viewer "
                          "token for Prometheus); false = 404.")
    docs: Literal["off", "viewer", "public"] = Field("viewer", description="/docs and /openapi.json: off, "
                                                     "for authenticated callers, or for anyone.")
    csp: str = Field(DEFAULT_CSP, description="Content-Security-Policy of the pages.")
    mfa_required_roles: list[str] = Field([], description='Roles whose local users need a second factor (TOTP), '
                                          'e.g. ["admin", "supervisor"]: such a user without one logs in to a '
                                          "session that reaches the MFA setup routes, who-am-I and logout only, "
                                          "until they confirm one. API tokens and SSO logins are not affected.")
    mfa_key: SecretStr | None = Field(None, description="Key sealing the stored TOTP secrets (AES-GCM); unset: "
                                      "they are stored as plain text. Changing it makes the sealed ones unreadable "
                                      "(their users then need `ioc users mfa-reset`).")
    mfa_issuer: str = Field("IOC", max_length=64, description="The issuer an authenticator app shows next to the "
                            "user name.")
    oidc_issuer: str | None = Field(None, description="OpenID Connect issuer URL; set it to accept the "
                                    "provider's bearer JWTs (Keycloak: https://host/realms/NAME).")
    oidc_audience: str | None = Field(None, description="Expected aud claim (the client id at the provider).")
    oidc_jwks_url: str | None = Field(None, description="JWKS URL; default: from the issuer's discovery document.")
    oidc_role_claim: str = Field("roles", description="Claim holding the caller's roles; dotted for nested "
                                 "(Keycloak: realm_access.roles).")
    oidc_role_map: dict[str, str] = Field({}, description='Claim value -> role, e.g. {"ioc-duty": "officer"}; '
                                          "values named viewer/officer/supervisor/admin map to themselves.")
    oidc_name_claim: str = Field("preferred_username", description="Claim used as the name in the audit trail "
                                 "(falls back to email, then sub).")
    oidc_algorithms: list[str] = ["RS256", "ES256", "PS256", "EdDSA"]
    oidc_jwks_refresh_s: float = Field(30.0, ge=0, description="An unknown key id refetches the JWKS at most "
                                       "this often.")
    oidc_client_id: str | None = Field(None, description="This app's client id at the provider, for the pages' "
                                       "login through it (SSO, /auth/sso/login; the login page shows the button); "
                                       "unset: bearer JWTs only. The audience defaults to it.")
    oidc_client_secret: SecretStr | None = Field(None, description="That client's secret (a confidential client); "
                                                 "it also signs the login flow's short-lived cookie.")
    oidc_redirect_base: str | None = Field(None, description="The pages' public base URL, e.g. "
                                           "https://ioc.example.gov.vn (behind a proxy): the provider sends people "
                                           "back to it + /auth/sso/callback; default: the request's own.")
    oidc_scopes: str = Field("openid profile email", description="Scopes the SSO login asks for.")

    @field_validator("oidc_algorithms")
    @classmethod
    def _check_algorithms(cls, value: list[str]) -> list[str]:
        # Only public-key signatures: with HS* anyone holding the provider's public key (its JWKS is public) could
        # sign tokens, and "none" signs nothing.
        refused = [a for a in value if a.lower() == "none" or a.upper().startswith("HS")]
        if refused or not value:
            raise ValueError(f"IOC_AUTH__OIDC_ALGORITHMS: {refused or 'an empty list'} refused; use public-key "
                             "algorithms (RS256, ES256, PS256, EdDSA)")
        return value

    @model_validator(mode="after")
    def _audience_is_the_client(self) -> AuthConfig:
        if self.oidc_client_id and not self.oidc_audience:
            self.oidc_audience = self.oidc_client_id
        return self

    @field_validator("mfa_required_roles")
    @classmethod
    def _check_mfa_roles(cls, value: list[str]) -> list[str]:
        known = ("viewer", "officer", "supervisor", "admin")
        bad = [r for r in value if r.strip().lower() not in known]
        if bad:
            raise ValueError(f"IOC_AUTH__MFA_REQUIRED_ROLES: {bad} unknown; use {', '.join(known)}")
        return [r.strip().lower() for r in value]

    @field_validator("connections_proxies")
    @classmethod
    def _check_proxies(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError:
                raise ValueError(f"IOC_AUTH__CONNECTIONS_PROXIES: {item[:60]!r} is no address or network") from None
        return value
