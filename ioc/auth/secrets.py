"""Passwords (Argon2id via argon2-cffi) and random credentials (API tokens, session ids, CSRF tokens).

Random credentials carry 256 bits from :mod:`secrets`; only their SHA-256 is stored, which is enough for
values that cannot be guessed (a password needs a slow hash, a 256-bit random string does not).
"""

from __future__ import annotations

import hashlib
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

TOKEN_PREFIX = "ioct_"
_hasher = PasswordHasher()  # argon2-cffi's defaults follow RFC 9106's recommended low-memory profile
# Verified when the user name is unknown, so that a miss costs as long as a wrong password.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))
MIN_PASSWORD = 10


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD:
        raise ValueError(f"a password needs at least {MIN_PASSWORD} characters")
    return _hasher.hash(password)


def verify_password(stored: str | None, password: str) -> bool:
    """True when ``password`` matches ``stored`` (``None``: an unknown user, checked against a dummy)."""
    try:
        return _hasher.verify(stored or _DUMMY_HASH, password) and stored is not None
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return False


def needs_rehash(stored: str) -> bool:
    return _hasher.check_needs_rehash(stored)


def new_api_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def new_session_id() -> str:
    return secrets.token_urlsafe(32)


def new_csrf() -> str:
    return secrets.token_urlsafe(24)


def new_password() -> str:
    return secrets.token_urlsafe(15)


def digest(value: str) -> bytes:
    return hashlib.sha256(value.encode()).digest()


def same(a: str, b: str) -> bool:
    return secrets.compare_digest(a.encode(), b.encode())
