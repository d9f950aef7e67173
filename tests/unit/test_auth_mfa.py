"""The pure parts of the second factor (ioc/auth/mfa.py): codes and clock drift, recovery codes, sealing."""

from __future__ import annotations

import pyotp
import pytest
from pydantic import ValidationError

from ioc.auth import mfa
from ioc.auth.config import AuthConfig

pytestmark = pytest.mark.unit

T = 1_800_000_015.0  # 15 s into a step


def test_a_code_matches_its_step_and_one_either_side_only() -> None:
    secret = mfa.new_secret()
    totp = pyotp.TOTP(secret)
    step = totp.timecode(T)
    assert mfa.matching_step(secret, totp.at(T), T) == step
    assert mfa.matching_step(secret, totp.at(T - 30), T) == step - 1  # the phone 30 s behind
    assert mfa.matching_step(secret, totp.at(T + 30), T) == step + 1
    assert mfa.matching_step(secret, totp.at(T - 60), T) is None
    assert mfa.matching_step(secret, totp.at(T + 60), T) is None
    assert mfa.matching_step(secret, f" {totp.at(T)} ", T) == step
    for bad in ("", "12345", "1234567", "12a456", "１２３４５６"):
        assert mfa.matching_step(secret, bad, T) is None


def test_secret_and_uri() -> None:
    secret = mfa.new_secret()
    assert len(secret) == 32 and pyotp.TOTP(secret).now().isdigit()  # 160 bits
    uri = mfa.otpauth_uri(secret, "duty.officer", "IOC Đà Nẵng")
    parsed = pyotp.parse_uri(uri)
    assert (parsed.secret, parsed.name, parsed.issuer, parsed.interval) == (secret, "duty.officer", "IOC Đà Nẵng", 30)


def test_recovery_codes_are_distinct_readable_and_typed_loosely() -> None:
    codes = mfa.new_recovery_codes()
    assert len(set(codes)) == 10
    assert all(len(c) == 11 and c[5] == "-" and not set(c) & set("01ilo") for c in codes)
    assert mfa.normalise_recovery(" AB CDE-fgh jk ") == "abcde-fghjk"
    assert not mfa.is_totp_code(codes[0]) and mfa.is_totp_code("012345")


def test_recovery_code_found_once_hashed() -> None:
    codes = mfa.new_recovery_codes(2)
    hashes = mfa.hash_recovery_codes(codes)
    assert all(h.startswith("$argon2id$") and codes[0] not in h for h in hashes)
    stored = [(7, hashes[0]), (8, hashes[1])]
    assert mfa.find_recovery(stored, codes[1].upper()) == 8
    assert mfa.find_recovery(stored, "abcde-fghjk") is None
    assert mfa.find_recovery(stored, "short") is None


def test_seal_binds_key_and_user() -> None:
    secret = mfa.new_secret()
    sealed = mfa.seal(secret, 42, "key one")
    assert sealed.startswith("v1:") and secret not in sealed
    assert mfa.seal(secret, 42, "key one") != sealed  # a fresh nonce each time
    assert mfa.unseal(sealed, 42, "key one") == secret
    for user, key in ((43, "key one"), (42, "key two"), (42, None)):
        with pytest.raises(mfa.MfaKeyError):
            mfa.unseal(sealed, user, key)
    assert mfa.unseal(mfa.seal(secret, 42, None), 42, "any key") == secret  # stored before a key was set


def test_required_roles_setting() -> None:
    assert AuthConfig(mfa_required_roles=[" Admin", "supervisor"]).mfa_required_roles == ["admin", "supervisor"]
    with pytest.raises(ValidationError):
        AuthConfig(mfa_required_roles=["root"])
