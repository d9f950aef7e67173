"""Roles, password hashing and the OIDC role mapping (no I/O)."""

from __future__ import annotations

import pytest

from ioc.auth import secrets as sec
from ioc.auth.config import AuthConfig
from ioc.auth.model import Role
from ioc.auth.oidc import OidcVerifier
from ioc.auth.store import AuthStoreError, check_username

pytestmark = pytest.mark.unit


def test_roles_are_ordered_and_parse_only_credential_roles() -> None:
    assert Role.PUBLIC < Role.VIEWER < Role.OFFICER < Role.SUPERVISOR < Role.ADMIN
    assert Role.parse(" Officer ") is Role.OFFICER
    for bad in ("public", "root", ""):
        with pytest.raises(ValueError):
            Role.parse(bad)


def test_passwords_are_argon2id_and_checked() -> None:
    stored = sec.hash_password("correct horse battery")
    assert stored.startswith("$argon2id$")
    assert sec.verify_password(stored, "correct horse battery")
    assert not sec.verify_password(stored, "correct horse batterx")
    assert not sec.verify_password(None, "anything at all")  # unknown user: a dummy is checked, never true
    assert not sec.verify_password("not a hash", "x")
    with pytest.raises(ValueError):
        sec.hash_password("short")


def test_random_credentials_are_long_and_stored_as_digests() -> None:
    token = sec.new_api_token()
    assert token.startswith("ioct_") and len(token) >= 45 and sec.new_api_token() != token
    assert len(sec.digest(token)) == 32 and sec.digest(token) == sec.digest(token)


def test_user_names() -> None:
    assert check_username(" An.Nguyen@ioc ") == "an.nguyen@ioc"
    for bad in ("", "-x", "a b", "x" * 65, "an\u202e"):
        with pytest.raises(AuthStoreError):
            check_username(bad)


def test_oidc_roles_come_from_the_claim_through_the_map() -> None:
    verifier = OidcVerifier(AuthConfig(oidc_issuer="https://sso.example/realms/ioc", oidc_audience="ioc",
                                       oidc_role_claim="realm_access.roles",
                                       oidc_role_map={"ioc-duty": "officer", "ioc-boss": "admin"}))
    role = verifier.role_of
    assert role({"realm_access": {"roles": ["offline_access", "ioc-duty"]}}) is Role.OFFICER
    assert role({"realm_access": {"roles": ["ioc-duty", "ioc-boss"]}}) is Role.ADMIN  # the highest wins
    assert role({"realm_access": {"roles": ["viewer"]}}) is Role.VIEWER  # role names map to themselves
    assert role({"realm_access": {"roles": "supervisor"}}) is Role.SUPERVISOR
    assert role({"realm_access": {"roles": ["staff"]}}) is Role.PUBLIC  # authenticated, no access
    assert role({"roles": ["admin"]}) is Role.PUBLIC  # another claim than the configured one
    with pytest.raises(ValueError):
        OidcVerifier(AuthConfig(oidc_issuer="https://sso.example"))  # an audience is required
