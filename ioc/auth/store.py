"""SQL for users, API tokens and browser sessions (tables of migration 0007), known devices (0015), and the
sessions of people logged in through the OpenID Connect provider (0016); whether a user has a second factor (0018,
ioc/auth/mfa.py)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

from ingest.text import check_text
from ioc.auth import secrets as sec
from ioc.auth.model import OIDC_ACTOR, Principal, Role

USERNAME_RE = re.compile(r"[a-z0-9][a-z0-9._@-]{0,63}")
_TOUCH_EVERY = timedelta(minutes=1)  # last_used / last_seen are written at most this often per credential
#: NOTIFYed (on commit) when a credential may have stopped holding: every replica rechecks its open live feeds.
CHANGED_CHANNEL = "ioc_auth_changed"


class AuthStoreError(ValueError):
    """A user or token operation refused (unknown name, duplicate, bad value)."""


def check_username(username: str) -> str:
    name = username.strip().lower()
    if not USERNAME_RE.fullmatch(name):
        raise AuthStoreError("a user name is 1-64 of a-z 0-9 . _ @ - (starting with a letter or digit)")
    return name


# --- users ------------------------------------------------------------------------------------------------

async def create_user(conn: Any, username: str, role: Role, password: str,
                      display_name: str | None = None) -> dict[str, Any]:
    name = check_username(username)
    if name == "system":  # the alert engine's name in the audit trail
        raise AuthStoreError("the user name 'system' is reserved (the alert engine's, in the audit trail)")
    shown = check_text(display_name or name, field="display name")[:200]
    password_hash = sec.hash_password(password)
    try:
        row = await conn.fetchrow(
            "INSERT INTO auth_users (username, display_name, role, password_hash) VALUES ($1, $2, $3, $4) "
            "RETURNING id, username, display_name, role, disabled, created_at",
            name, shown, Role.parse(role.label).label, password_hash)
    except Exception as err:
        if type(err).__name__ == "UniqueViolationError":
            raise AuthStoreError(f"user {name!r} exists") from None
        raise
    return dict(row)


async def list_users(conn: Any, limit: int | None = None) -> list[dict[str, Any]]:
    rows = await conn.fetch("SELECT id, username, display_name, role, disabled, created_at, last_login_at, "
                            "EXISTS (SELECT 1 FROM auth_totp m WHERE m.user_id = auth_users.id "
                            "AND m.active_since IS NOT NULL) AS mfa "
                            "FROM auth_users ORDER BY username LIMIT $1", limit)
    return [dict(r) for r in rows]


async def user_for_login(conn: Any, username: str) -> dict[str, Any] | None:
    row = await conn.fetchrow("SELECT id, username, display_name, role, password_hash, disabled "
                              "FROM auth_users WHERE username = $1", username.strip().lower())
    return dict(row) if row else None


async def set_password(conn: Any, username: str, password: str) -> None:
    """New password; the user's open sessions end."""
    password_hash = sec.hash_password(password)
    async with conn.transaction():
        uid = await conn.fetchval("UPDATE auth_users SET password_hash = $2, password_changed_at = now() "
                                  "WHERE username = $1 RETURNING id", check_username(username), password_hash)
        if uid is None:
            raise AuthStoreError(f"no user {username!r}")
        await _end_sessions(conn, uid)
        await announce(conn)


async def rehash_password(conn: Any, user_id: int, password: str) -> None:
    await conn.execute("UPDATE auth_users SET password_hash = $2 WHERE id = $1", user_id, sec.hash_password(password))


async def set_disabled(conn: Any, username: str, disabled: bool) -> None:
    """Disable (sessions end at once) or enable a user."""
    async with conn.transaction():
        uid = await conn.fetchval("UPDATE auth_users SET disabled = $2 WHERE username = $1 RETURNING id",
                                  check_username(username), disabled)
        if uid is None:
            raise AuthStoreError(f"no user {username!r}")
        if disabled:
            await _end_sessions(conn, uid)
        await announce(conn)


async def set_role(conn: Any, username: str, role: Role) -> None:
    uid = await conn.fetchval("UPDATE auth_users SET role = $2 WHERE username = $1 RETURNING id",
                              check_username(username), Role.parse(role.label).label)
    if uid is None:
        raise AuthStoreError(f"no user {username!r}")
    await announce(conn)


async def note_login(conn: Any, user_id: int) -> None:
    await conn.execute("UPDATE auth_users SET last_login_at = now() WHERE id = $1", user_id)


async def announce(conn: Any) -> None:
    """Tell every replica (LISTEN ``CHANGED_CHANNEL``) that a credential may have stopped holding; delivered when
    the caller's transaction commits."""
    await conn.execute("SELECT pg_notify($1, '')", CHANGED_CHANNEL)


async def _end_sessions(conn: Any, user_id: int) -> None:
    await conn.execute("UPDATE auth_sessions SET revoked_at = now() WHERE user_id = $1 AND revoked_at IS NULL",
                       user_id)
    await conn.execute("DELETE FROM auth_devices WHERE user_id = $1", user_id)  # a new password, new devices


# --- known devices (migration 0015) -----------------------------------------------------------------------

async def remember_device(conn: Any, user_id: int, days: float) -> str:
    """A device cookie's value for a browser ``user_id`` just logged in from (its digest is stored)."""
    secret = sec.new_session_id()
    await conn.execute("DELETE FROM auth_devices WHERE expires_at < now()")
    await conn.execute("INSERT INTO auth_devices (token_hash, user_id, expires_at) "
                       "VALUES ($1, $2, now() + make_interval(secs => $3))", sec.digest(secret), user_id,
                       days * 86400.0)
    return secret


async def known_device(conn: Any, secret: str, username: str) -> bool:
    """Whether a device cookie is one this user name's user logged in with (and it has not expired)."""
    return bool(await conn.fetchval(
        "SELECT EXISTS (SELECT 1 FROM auth_devices d JOIN auth_users u ON u.id = d.user_id "
        "WHERE d.token_hash = $1 AND u.username = $2 AND d.expires_at > now())",
        sec.digest(secret), username.strip().lower()))


# --- API tokens -------------------------------------------------------------------------------------------

async def create_token(conn: Any, name: str, role: Role, days: float | None,
                       created_by: str | None = None) -> tuple[str, dict[str, Any]]:
    """A new token: returns the secret (shown once, never stored) and its row."""
    label = check_text(name.strip(), field="token name")[:100]
    if not label:
        raise AuthStoreError("a token needs a name")
    secret = sec.new_api_token()
    expires = datetime.now(UTC) + timedelta(days=days) if days else None
    row = await conn.fetchrow(
        "INSERT INTO auth_tokens (name, role, token_hash, prefix, created_by, expires_at) "
        "VALUES ($1, $2, $3, $4, $5, $6) RETURNING id, name, role, prefix, created_by, created_at, expires_at",
        label, Role.parse(role.label).label, sec.digest(secret), secret[:12], created_by, expires)
    return secret, dict(row)


async def list_tokens(conn: Any, include_revoked: bool = False, limit: int | None = None) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT id, name, role, prefix, created_by, created_at, expires_at, revoked_at, last_used_at "
        "FROM auth_tokens WHERE $1 OR revoked_at IS NULL ORDER BY id LIMIT $2", include_revoked, limit)
    return [dict(r) for r in rows]


async def revoke_token(conn: Any, token_id: int) -> bool:
    """Revoke a token (and the wall sessions opened with it)."""
    async with conn.transaction():
        done = await conn.fetchval("UPDATE auth_tokens SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL "
                                   "RETURNING id", token_id)
        await conn.execute("UPDATE auth_sessions SET revoked_at = now() WHERE api_token_id = $1 "
                           "AND revoked_at IS NULL", token_id)
        await announce(conn)
    return done is not None


async def token_principal(conn: Any, secret: str) -> Principal | None:
    row = await conn.fetchrow("SELECT id, name, role, last_used_at FROM auth_tokens WHERE token_hash = $1 "
                              "AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())",
                              sec.digest(secret))
    if row is None:
        return None
    now = datetime.now(UTC)
    if row["last_used_at"] is None or now - row["last_used_at"] > _TOUCH_EVERY:
        await conn.execute("UPDATE auth_tokens SET last_used_at = $2 WHERE id = $1", row["id"], now)
    return Principal(name=f"token:{row['name']}", role=Role.parse(row["role"]), via="token", token_id=row["id"])


# --- browser sessions -------------------------------------------------------------------------------------

async def create_session(conn: Any, hours: float, *, user_id: int | None = None, token_id: int | None = None,
                         oidc: tuple[str, Role] | None = None, mfa_pending: bool = False) -> tuple[str, str]:
    """A new session for a user, an API token exchanged by a wall, or a person the OpenID Connect provider logged in
    (``oidc``: their name and mapped role, kept for the session's life): returns (cookie value, CSRF token).
    ``mfa_pending``: a user who must set up a second factor first (the session reaches the setup routes only)."""
    sid, csrf = sec.new_session_id(), sec.new_csrf()
    # Sessions that ended a week ago are of no use, not even to an audit: each login sweeps them away.
    await conn.execute("DELETE FROM auth_sessions WHERE least(expires_at, coalesce(revoked_at, expires_at)) "
                       "< now() - interval '7 days'")
    oidc_name, oidc_role = (oidc[0], Role.parse(oidc[1].label).label) if oidc else (None, None)
    await conn.execute("INSERT INTO auth_sessions (token_hash, csrf_token, user_id, api_token_id, oidc_name, "
                       "oidc_role, expires_at, mfa_pending) "
                       "VALUES ($1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7), $8)",
                       sec.digest(sid), csrf, user_id, token_id, oidc_name, oidc_role, hours * 3600.0, mfa_pending)
    return sid, csrf


# A person's session unused for ``idle_s`` seconds has ended (0: no idle limit). A wall's session (opened with an API
# token) never idles out: the wall polls all day and nobody touches it. "Used" is any request or live-feed handshake
# with the cookie (last_seen_at, written at most once a minute), not an open feed alone.
_NOT_IDLE = ("(s.api_token_id IS NOT NULL OR $2::float8 <= 0 "
             "OR s.last_seen_at > now() - make_interval(secs => $2::float8))")


async def session_principal(conn: Any, sid: str, idle_s: float = 0.0) -> Principal | None:
    """The caller of a session cookie, ``None`` when the session has ended (logged out, expired, idle for
    ``idle_s`` seconds if a user's, user disabled, a wall's token revoked)."""
    row = await conn.fetchrow(
        "SELECT s.id, s.csrf_token, s.last_seen_at, s.user_id, s.api_token_id, s.oidc_name, s.oidc_role, "
        "       s.mfa_pending, "
        "       u.username, u.role AS user_role, u.disabled, t.name AS token_name, t.role AS token_role, "
        "       t.revoked_at AS token_revoked, t.expires_at AS token_expires "
        "FROM auth_sessions s LEFT JOIN auth_users u ON u.id = s.user_id "
        "LEFT JOIN auth_tokens t ON t.id = s.api_token_id "
        f"WHERE s.token_hash = $1 AND s.revoked_at IS NULL AND s.expires_at > now() AND {_NOT_IDLE}",
        sec.digest(sid), idle_s)
    if row is None:
        return None
    now = datetime.now(UTC)
    if row["user_id"] is not None:
        if row["disabled"]:
            return None
        name, role, uid, tid = row["username"], row["user_role"], row["user_id"], None
    elif row["oidc_name"] is not None:  # the audit trail's actor is oidc:NAME, as for the provider's bearer JWTs
        name, role, uid, tid = f"{OIDC_ACTOR}{row['oidc_name']}", row["oidc_role"], None, None
    else:
        if row["token_revoked"] is not None or (row["token_expires"] and row["token_expires"] <= now):
            return None
        name, role, uid, tid = f"token:{row['token_name']}", row["token_role"], None, row["api_token_id"]
    if now - row["last_seen_at"] > _TOUCH_EVERY:
        await conn.execute("UPDATE auth_sessions SET last_seen_at = $2 WHERE id = $1", row["id"], now)
    return Principal(name=name, role=Role.parse(role), via="session", user_id=uid, token_id=tid,
                     session_id=row["id"], csrf=row["csrf_token"], mfa_pending=row["mfa_pending"])


async def live_token_roles(conn: Any, digests: list[bytes]) -> dict[bytes, Role]:
    """The role of each of these API tokens (by digest) that still holds; one query, nothing written."""
    rows = await conn.fetch("SELECT token_hash, role FROM auth_tokens WHERE token_hash = ANY($1::bytea[]) "
                            "AND revoked_at IS NULL AND (expires_at IS NULL OR expires_at > now())", digests)
    return {bytes(r["token_hash"]): Role.parse(r["role"]) for r in rows}


async def live_session_roles(conn: Any, digests: list[bytes], idle_s: float = 0.0) -> dict[bytes, Role]:
    """The role of each of these sessions (by digest) that still holds, as :func:`session_principal` decides it
    (user not disabled nor idle for ``idle_s``; a wall's token not revoked or expired); one query, nothing
    written: an open feed does not keep its session in use."""
    rows = await conn.fetch(
        "SELECT s.token_hash, coalesce(u.role, t.role, s.oidc_role) AS role FROM auth_sessions s "
        "LEFT JOIN auth_users u ON u.id = s.user_id LEFT JOIN auth_tokens t ON t.id = s.api_token_id "
        "WHERE s.token_hash = ANY($1::bytea[]) AND s.revoked_at IS NULL AND s.expires_at > now() "
        f"AND NOT s.mfa_pending AND {_NOT_IDLE} AND CASE WHEN s.user_id IS NOT NULL THEN u.disabled IS FALSE "
        "WHEN s.api_token_id IS NOT NULL THEN t.revoked_at IS NULL AND (t.expires_at IS NULL OR t.expires_at > now()) "
        "ELSE TRUE END", digests, idle_s)
    return {bytes(r["token_hash"]): Role.parse(r["role"]) for r in rows if r["role"] is not None}


async def end_session(conn: Any, session_id: int) -> None:
    async with conn.transaction():
        await conn.execute("UPDATE auth_sessions SET revoked_at = now() WHERE id = $1", session_id)
        await announce(conn)
