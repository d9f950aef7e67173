"""A second factor for local users: TOTP (RFC 6238, pyotp) and one-time recovery codes (tables of migration 0018).

* The secret is 160 random bits (RFC 4226's recommended length), shown once at setup (base32 and an
  ``otpauth://`` URI) and never again. It is stored *sealed*: AES-256-GCM under a key derived from
  ``IOC_AUTH__MFA_KEY`` with the user's id as associated data (a sealed secret copied to another user's row does
  not open), or, without that setting, as ``plain:`` text (a database dump then holds the secrets: set the key).
* A code is accepted for the current 30-s step or the one before or after (clock drift), and only for a step
  later than the last one accepted (``last_step``): a code seen over a shoulder cannot be used again.
* Recovery codes: 10 of 10 random base32 letters (50 bits) each, shown once, stored as Argon2 hashes (like
  passwords), each good for one login.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from typing import Any

import pyotp
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ioc.auth import secrets as sec
from ioc.auth import store

ISSUER = "IOC"
STEP_S = 30
DRIFT_STEPS = 1  # one step either side: a phone's clock 30 s off still works
RECOVERY_CODES = 10
_SEALED, _PLAIN = "v1:", "plain:"
_CODE_RE = re.compile(r"\d{6}")
_RECOVERY_ALPHABET = "abcdefghjkmnpqrstuvwxyz23456789"  # no 0/o, 1/l/i: read off paper and typed


class MfaKeyError(RuntimeError):
    """A stored secret cannot be opened: IOC_AUTH__MFA_KEY unset or not the key it was sealed with."""


# --- pure parts -------------------------------------------------------------------------------------------

def new_secret() -> str:
    return pyotp.random_base32(32)  # 32 base32 letters = 160 bits


def otpauth_uri(secret: str, username: str, issuer: str = ISSUER) -> str:
    return pyotp.TOTP(secret, interval=STEP_S).provisioning_uri(name=username, issuer_name=issuer)


def is_totp_code(value: str) -> bool:
    return bool(_CODE_RE.fullmatch(value.strip()))


def matching_step(secret: str, code: str, now: float | None = None) -> int | None:
    """The time step whose code ``code`` is (current step ± ``DRIFT_STEPS``), else ``None``. Every candidate is
    compared (constant time), so the answer's timing does not say which one matched."""
    code = code.strip()
    if not _CODE_RE.fullmatch(code):
        return None
    totp = pyotp.TOTP(secret, interval=STEP_S)
    now = time.time() if now is None else now
    current = totp.timecode(now)
    found = None
    for offset in range(-DRIFT_STEPS, DRIFT_STEPS + 1):
        candidate = totp.generate_otp(current + offset)
        if hmac.compare_digest(candidate.encode(), code.encode()) and found is None:
            found = current + offset
    return found


def new_recovery_codes(count: int = RECOVERY_CODES) -> list[str]:
    """``count`` codes like ``k7m2p-x9qra`` (10 letters, 50 bits)."""
    out = []
    for _ in range(count):
        letters = "".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(10))
        out.append(f"{letters[:5]}-{letters[5:]}")
    return out


def normalise_recovery(value: str) -> str:
    """What a person types (spaces, hyphens, capitals) as the stored form hashes it: ``k7m2p-x9qra``."""
    letters = re.sub(r"[\s-]", "", value).lower()
    return f"{letters[:5]}-{letters[5:]}" if len(letters) == 10 else letters


def _key(key: str) -> bytes:
    return hashlib.sha256(b"ioc totp secret v1\0" + key.encode()).digest()


def seal(secret: str, user_id: int, key: str | None) -> str:
    """The stored form of a TOTP secret (see the module docstring)."""
    if not key:
        return _PLAIN + secret
    nonce = secrets.token_bytes(12)
    box = AESGCM(_key(key)).encrypt(nonce, secret.encode(), str(user_id).encode())
    return _SEALED + base64.b64encode(nonce + box).decode()


def unseal(stored: str, user_id: int, key: str | None) -> str:
    if stored.startswith(_PLAIN):
        return stored[len(_PLAIN):]
    if not stored.startswith(_SEALED):
        raise MfaKeyError("unknown form of a stored TOTP secret")
    if not key:
        raise MfaKeyError("the TOTP secrets are sealed, and IOC_AUTH__MFA_KEY is not set")
    raw = base64.b64decode(stored[len(_SEALED):])
    try:
        return AESGCM(_key(key)).decrypt(raw[:12], raw[12:], str(user_id).encode()).decode()
    except InvalidTag:
        raise MfaKeyError("a TOTP secret does not open with IOC_AUTH__MFA_KEY (another key?)") from None


# --- SQL --------------------------------------------------------------------------------------------------

async def state(conn: Any, user_id: int) -> dict[str, Any] | None:
    row = await conn.fetchrow("SELECT secret, pending, pending_at, active_since, last_step FROM auth_totp "
                              "WHERE user_id = $1", user_id)
    return dict(row) if row else None


async def is_active(conn: Any, user_id: int) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM auth_totp WHERE user_id = $1 "
                                    "AND active_since IS NOT NULL)", user_id))


async def begin(conn: Any, user_id: int, key: str | None) -> str | None:
    """A new pending secret for a user without an active one (returned, to show once); ``None`` when active."""
    secret = new_secret()
    done = await conn.fetchval(
        "INSERT INTO auth_totp (user_id, pending, pending_at) VALUES ($1, $2, now()) "
        "ON CONFLICT (user_id) DO UPDATE SET pending = excluded.pending, pending_at = now() "
        "WHERE auth_totp.active_since IS NULL RETURNING true", user_id, seal(secret, user_id, key))
    return secret if done else None


async def activate(conn: Any, user_id: int, step: int, code_hashes: list[str], session_id: int | None) -> bool:
    """The pending secret becomes the active one (its confirming ``step`` counts as used); the recovery codes are
    replaced; the confirming session, if it was waiting for a second factor, is let through, and the user's other
    waiting sessions end (opened with the password alone, perhaps by someone else). False when nothing was
    pending."""
    async with conn.transaction():
        done = await conn.fetchval(
            "UPDATE auth_totp SET secret = pending, pending = NULL, pending_at = NULL, active_since = now(), "
            "last_step = $2 WHERE user_id = $1 AND pending IS NOT NULL AND active_since IS NULL RETURNING true",
            user_id, step)
        if not done:
            return False
        await conn.execute("DELETE FROM auth_recovery_codes WHERE user_id = $1", user_id)
        await conn.executemany("INSERT INTO auth_recovery_codes (user_id, code_hash) VALUES ($1, $2)",
                               [(user_id, h) for h in code_hashes])
        await conn.execute("UPDATE auth_sessions SET mfa_pending = false WHERE id = $1 AND mfa_pending", session_id)
        await conn.execute("UPDATE auth_sessions SET revoked_at = now() WHERE user_id = $1 AND mfa_pending "
                           "AND revoked_at IS NULL", user_id)
    return True


async def use_step(conn: Any, user_id: int, step: int) -> bool:
    """Record ``step`` as used; False when it (or a later one) was used already: the row lock makes two logins
    racing with one code agree on a single winner."""
    return bool(await conn.fetchval(
        "UPDATE auth_totp SET last_step = $2 WHERE user_id = $1 AND active_since IS NOT NULL "
        "AND (last_step IS NULL OR last_step < $2) RETURNING true", user_id, step))


async def recovery_hashes(conn: Any, user_id: int) -> list[tuple[int, str]]:
    rows = await conn.fetch("SELECT id, code_hash FROM auth_recovery_codes WHERE user_id = $1 AND used_at IS NULL "
                            "ORDER BY id", user_id)
    return [(r["id"], r["code_hash"]) for r in rows]


async def use_recovery(conn: Any, code_id: int) -> bool:
    return bool(await conn.fetchval("UPDATE auth_recovery_codes SET used_at = now() WHERE id = $1 "
                                    "AND used_at IS NULL RETURNING true", code_id))


async def remove(conn: Any, user_id: int) -> bool:
    """Forget the user's second factor (active or pending) and recovery codes; False when there was none."""
    async with conn.transaction():
        await conn.execute("DELETE FROM auth_recovery_codes WHERE user_id = $1", user_id)
        return bool(await conn.fetchval("DELETE FROM auth_totp WHERE user_id = $1 RETURNING true", user_id))


async def reset_user(conn: Any, username: str) -> bool:
    """An administrator's reset (a lost phone): the user's second factor and recovery codes are forgotten and their
    sessions end. False when they had none; :class:`store.AuthStoreError` for an unknown user."""
    name = store.check_username(username)
    async with conn.transaction():
        uid = await conn.fetchval("SELECT id FROM auth_users WHERE username = $1", name)
        if uid is None:
            raise store.AuthStoreError(f"no user {username!r}")
        removed = await remove(conn, uid)
        await conn.execute("UPDATE auth_sessions SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
                           uid)
        await store.announce(conn)  # their open live feeds close
    return removed


def hash_recovery_codes(codes: list[str]) -> list[str]:
    """Argon2 hashes of the codes (CPU-bound: run it off the event loop)."""
    return [sec.hash_password(normalise_recovery(c)) for c in codes]


def find_recovery(stored: list[tuple[int, str]], typed: str) -> int | None:
    """The id of the unused code ``typed`` is, else ``None`` (up to 10 Argon2 checks: run it off the event loop;
    it is reached only after the right password)."""
    code = normalise_recovery(typed)
    if len(code) != 11:
        return None
    for code_id, code_hash in stored:
        if sec.verify_password(code_hash, code):
            return code_id
    return None
