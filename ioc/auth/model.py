"""Roles and the authenticated caller."""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum


class Role(IntEnum):
    """Roles, each including the ones below it. ``PUBLIC`` marks routes anyone may call (health, login)."""

    PUBLIC = 0
    VIEWER = 1
    OFFICER = 2
    SUPERVISOR = 3
    ADMIN = 4

    @classmethod
    def parse(cls, name: str) -> Role:
        """``"officer"`` -> ``Role.OFFICER``; only the four roles a credential can hold."""
        try:
            role = cls[name.strip().upper()]
        except KeyError:
            raise ValueError(f"unknown role {name!r}; use viewer, officer, supervisor or admin") from None
        if role is Role.PUBLIC:
            raise ValueError("public is not a role a credential can hold")
        return role

    @property
    def label(self) -> str:
        return self.name.lower()


@dataclass(frozen=True)
class Principal:
    """Who is calling: the name (as the caller's credential gives it), the role, and the credential used; the
    audit trail records :attr:`actor`."""

    name: str
    role: Role
    via: str  # "session", "token" or "oidc"
    user_id: int | None = None
    token_id: int | None = None
    session_id: int | None = None
    csrf: str | None = None  # the session's CSRF token (cookie sessions only)
    mfa_pending: bool = False  # a session that may only set up a second factor (IOC_AUTH__MFA_REQUIRED_ROLES)

    @property
    def actor(self) -> str:
        """The name the audit trail records (actions, acknowledgements, silences), unambiguous across credential
        kinds: a local user as the user name (no colon allowed), an API token or a wall's session as
        ``token:NAME``, an OIDC caller as ``oidc:NAME``. An OIDC ``preferred_username`` equal to a local user's
        name (or to ``system``, the engine's) no longer reads as that user; the audit API says which kind
        (``actor_via``)."""
        return f"{OIDC_ACTOR}{self.name}" if self.via == "oidc" else self.name

    def public(self) -> dict[str, object]:
        return {"name": self.name, "role": self.role.label, "via": self.via, "actor": self.actor}


OIDC_ACTOR = "oidc:"  # storage/alerts.py ACTOR_VIA reads the prefixes back as the audit entry's actor_via


class AuthError(Exception):
    """A credential was presented and is not valid (expired, revoked, unknown, bad signature)."""
