"""Open live feeds whose credential stops holding are closed (code :data:`CLOSE_CODE`), on every replica.

Each screen is registered under the credential it presented at the handshake (the digest of its API token or
session cookie; an OIDC JWT by its ``exp``). Every ``IOC_AUTH__WS_RECHECK_S`` one task per process looks up the
*distinct* credentials again, one query per kind (a hundred wall screens sharing one viewer token cost one row),
and closes the screens of those revoked, expired, logged out, of a disabled user, or whose role fell below the
feed's. Replicas share only the database, so each one's recheck sees a revocation made through any of them;
and the store announces each revocation, logout, password, role or disabled change (NOTIFY
``store.CHANGED_CHANNEL`` on commit), which each replica's watch LISTENs for on a connection of its own and
answers with a recheck at once. The timer stays: it covers an announcement lost while that connection was down.
A JWT's screens are closed at its ``exp`` (plus the leeway the handshake allows) by a timer, with no lookup.

A recheck that cannot answer (database down, slow, pool closed) closes nothing: the screens stay and it is tried
again at the next interval, so a database blip does not blank the control-room walls. Closing runs in a task of
its own per screen, never on another screen's send path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import asyncpg
import jwt
from fastapi import WebSocket

from ioc.auth import oidc, store
from ioc.auth import secrets as sec
from ioc.auth.model import Principal, Role
from ioc.auth.service import presented
from ioc.live.client import ClientSession

logger = logging.getLogger(__name__)

#: The close code of a feed whose credential no longer holds (4000-4999: the application's own; 4401 reads
#: as HTTP's 401, "log in or present a token again"). Clients should not reconnect with the same credential.
CLOSE_CODE = 4401
#: Credentials looked up in one query, and how long one recheck may take before it counts as unanswered.
_BATCH = 1000
_CLOSE_TIMEOUT_S = 5.0
#: After an announcement, wait this long so that a burst of changes is read in one recheck.
_ANNOUNCED_PAUSE_S = 0.05


@dataclass(eq=False)
class Screen:
    """One open feed as the watch sees it."""

    ws: WebSocket
    client: ClientSession
    needs: Role
    key: tuple[str, bytes] | None  # ("token" | "session", digest); None: a JWT, closed by its timer
    timer: asyncio.TimerHandle | None = None
    closing: str | None = None  # the reason, once it is being closed


class CredentialWatch:
    """The screens of one process by credential, and the task that looks their credentials up again."""

    def __init__(self, interval_s: float, state: Any) -> None:
        self.interval_s, self._state = interval_s, state
        self.by_key: dict[tuple[str, bytes], set[Screen]] = {}
        self.screens: set[Screen] = set()
        self.rechecks = 0  # lookups answered
        self.unanswered = 0  # lookups that failed (database unreachable): nothing closed
        self.closed = 0  # screens closed for their credential
        self._task: asyncio.Task[None] | None = None
        self._poke = asyncio.Event()  # a change announced (or the last screen gone)
        self._listen: Any = None  # the LISTEN connection, while screens are watched
        self.announced = 0
        self._closing: set[asyncio.Task[None]] = set()

    def add(self, ws: WebSocket, client: ClientSession, principal: Principal, needs: Role) -> Screen:
        """Watch an accepted feed of ``principal`` (its handshake's caller)."""
        key, expires = _credential(ws, principal)
        screen = Screen(ws, client, needs, key)
        self.screens.add(screen)
        if key is not None:
            self.by_key.setdefault(key, set()).add(screen)
        if expires is not None:
            left = max(0.0, expires + oidc.LEEWAY_S - time.time())
            screen.timer = asyncio.get_running_loop().call_later(left, self.close, screen, "token expired")
        if principal.role < needs:  # e.g. an OIDC caller whose claims map to no role (the route refuses it first)
            self.close(screen, f"needs the {needs.label} role")
        if key is not None and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._run(), name="ws-credential-recheck")
        return screen

    def remove(self, screen: Screen) -> None:
        """The feed ended (for any reason)."""
        self.screens.discard(screen)
        if screen.timer is not None:
            screen.timer.cancel()
        if screen.key is not None:
            held = self.by_key.get(screen.key)
            if held is not None:
                held.discard(screen)
                if not held:
                    del self.by_key[screen.key]
                    if not self.by_key:
                        self._poke.set()  # the task ends now (and closes its LISTEN connection)

    def close(self, screen: Screen, reason: str) -> None:
        """Stop the screen's frames at once and close its socket in a task of its own (a stalled socket
        waits there, holding up nothing else)."""
        if screen.closing is not None or screen not in self.screens:
            return
        screen.closing = reason
        self.closed += 1
        screen.client.closed = True  # its sender sends nothing more
        screen.client.wake.set()
        task = asyncio.create_task(self._close(screen, reason))
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def _close(self, screen: Screen, reason: str) -> None:
        logger.info("live feed closed (%d): %s", CLOSE_CODE, reason)
        with contextlib.suppress(Exception):  # already gone, or a socket that takes nothing: it ends on its own
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await screen.ws.close(code=CLOSE_CODE, reason=reason)

    async def _run(self) -> None:
        # Ends when no watched screen is left (a new one starts it again): nothing to stop at shutdown.
        try:
            while self.by_key:
                await self._ensure_listening()
                try:
                    async with asyncio.timeout(self.interval_s):
                        await self._poke.wait()
                    await asyncio.sleep(_ANNOUNCED_PAUSE_S)
                except TimeoutError:
                    pass
                self._poke.clear()
                try:
                    await self.recheck()
                except Exception:  # a recheck that cannot answer keeps every screen and is tried again
                    self.unanswered += 1
                    logger.warning("live-feed credential recheck failed; screens kept, retried in %g s",
                                   self.interval_s, exc_info=True)
        finally:
            # Given up before the first await, so that a screen added meanwhile starts a task (and a LISTEN
            # connection) of its own.
            if self._task is asyncio.current_task():
                self._task = None
            await self._unlisten()

    @property
    def listening(self) -> bool:
        """Following the announcements (its LISTEN connection is open)."""
        return self._listen is not None and not self._listen.is_closed()

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        self.announced += 1
        self._poke.set()

    async def _ensure_listening(self) -> None:
        """Best effort: without the connection, revocations wait for the timer."""
        if self.listening:
            return
        await self._unlisten()
        node = getattr(self._state, "node", None)
        dsn = getattr(getattr(node, "settings", None), "database_url", None)
        if not dsn:
            return
        try:
            conn = await asyncpg.connect(dsn, timeout=min(self.interval_s, 5.0))
            await conn.add_listener(store.CHANGED_CHANNEL, self._on_notify)
        except Exception as err:  # the database unreachable: the timer goes on, the next loop tries again
            logger.info("live-feed credential announcements not followed (%s); rechecking every %g s",
                        type(err).__name__, self.interval_s)
            return
        self._listen = conn

    async def _unlisten(self) -> None:
        conn, self._listen = self._listen, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), 2)

    async def recheck(self) -> None:
        """Look the distinct credentials up again and close the screens of those that no longer hold."""
        keys = list(self.by_key)
        if not keys:
            return
        pool = self._state.pool
        if pool is None:
            raise RuntimeError("database pool not available")
        roles: dict[tuple[str, bytes], Role] = {}
        async with asyncio.timeout(max(self.interval_s, 5.0)):
            async with pool.acquire() as conn:
                auth = getattr(self._state, "auth", None)
                idle_s = auth.config.idle_timeout_min * 60.0 if auth is not None else 0.0
                for kind in ("token", "session"):
                    digests = [d for k, d in keys if k == kind]
                    for at in range(0, len(digests), _BATCH):
                        batch = digests[at:at + _BATCH]
                        found = await (store.live_token_roles(conn, batch) if kind == "token"
                                       else store.live_session_roles(conn, batch, idle_s))
                        roles.update(((kind, d), role) for d, role in found.items())
        self.rechecks += 1
        for key in keys:
            role = roles.get(key)
            for screen in list(self.by_key.get(key, ())):
                if role is None:
                    self.close(screen, "credential no longer valid (revoked, expired, idle, logged out or disabled)")
                elif role < screen.needs:
                    self.close(screen, f"needs the {screen.needs.label} role; now {role.label}")

def _credential(ws: WebSocket, principal: Principal) -> tuple[tuple[str, bytes] | None, float | None]:
    """(lookup key, None) for an API token or session; (None, exp) for an OIDC JWT."""
    kind, value = presented(ws) or ("", "")
    if principal.via == "oidc":
        try:
            exp = jwt.decode(value, options={"verify_signature": False}).get("exp")  # verified at the handshake
        except jwt.PyJWTError:
            exp = None
        return None, float(exp) if isinstance(exp, int | float) else time.time()
    if kind == "bearer":
        return ("token", sec.digest(value)), None
    return ("session", sec.digest(value)), None


def watch_of(ws: WebSocket) -> CredentialWatch:
    """The process's watch (made on first use, with ``IOC_AUTH__WS_RECHECK_S``)."""
    state = ws.app.state
    watch: CredentialWatch | None = getattr(state, "ws_credentials", None)
    if watch is None:
        watch = state.ws_credentials = CredentialWatch(state.auth.config.ws_recheck_s, state)
    return watch
