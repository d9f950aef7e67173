"""Login and action rate limits that hold across API replicas: counted in PostgreSQL, behind a per-process count.

Two ``limits`` storages, both moving windows (a refused attempt is not counted, as before):

* :class:`LocalWindows` — this process's count: a cheap first check that keeps a flood of one key off the
  database, and the only count while PostgreSQL cannot be reached. Bounded: a key goes when its last granted hit
  leaves the window, and past ``max_keys`` per window the least recently granted go first. (``limits``' own
  ``MemoryStorage`` keeps an empty list for every key it ever saw: 20,001 keys after 20,000 random user names,
  all expired.)
* :class:`PostgresWindows` — the count every replica shares (table ``auth_throttle``, migration 0017): one
  statement per hit, atomic under the row lock of ``INSERT ... ON CONFLICT DO UPDATE``, on the database's clock.
  Keys are stored as SHA-256 digests (no user names or addresses in the table). Each hit also deletes up to 8
  expired rows of other keys, so a flood of random user names leaves at most the rows of one window behind.

:class:`Throttle` asks the local count first (refused there: no database work), then the shared one. When the
shared count fails or takes longer than ``timeout_s`` the local count decides alone: the door is neither opened
nor shut, each replica then allows what one process allowed before (``ioc_auth_limits_local`` counts these).
Limits above ``SHARED_MAX_AMOUNT`` per window are counted per process only.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import Any

import asyncpg
from limits import RateLimitItem
from limits.aio.storage import MovingWindowSupport, Storage
from limits.aio.strategies import MovingWindowRateLimiter
from prometheus_client import Counter

logger = logging.getLogger(__name__)

REFUSED = Counter("ioc_auth_refused", "Login attempts and actions refused by a rate limit (429)", ["limit"])
LOCAL_ONLY = Counter("ioc_auth_limits_local", "Rate-limit checks decided by this process alone: the shared count "
                     "in PostgreSQL failed or was too slow", ["limit"])
EVICTED = Counter("ioc_auth_limits_evicted", "Keys dropped from a process's rate-limit count before their window "
                  "ended (more than max_keys keys at once)")

MAX_KEYS = 100_000  # per window length, per process: ~25 MB at most
#: Larger limits are counted per process only: a shared row holds one time per hit in the window, so each hit
#: costs O(limit) (1.6 ms at 1,000, 4.4 ms at 4,000); limits that high guard nothing (tests' "1000000/minute").
SHARED_MAX_AMOUNT = 1000
PRUNE_PER_HIT = 8  # expired rows of other keys each shared hit deletes
_WARN_EVERY_S = 60.0

_SHARED_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError)

_ACQUIRE = f"""
WITH pruned AS (
    DELETE FROM auth_throttle WHERE key IN (
        SELECT key FROM auth_throttle WHERE expires_at < now() AND key <> $1
        ORDER BY expires_at LIMIT {PRUNE_PER_HIT} FOR UPDATE SKIP LOCKED))
INSERT INTO auth_throttle AS t (key, hits, expires_at)
SELECT $1, array_fill(now(), ARRAY[$4::int]), now() + make_interval(secs => $3::float8)
WHERE $4::int <= $2::int
ON CONFLICT (key) DO UPDATE
SET hits = ARRAY(SELECT h FROM unnest(t.hits) h WHERE h > now() - make_interval(secs => $3::float8)) || excluded.hits,
    expires_at = excluded.expires_at
WHERE (SELECT count(*) FROM unnest(t.hits) h WHERE h > now() - make_interval(secs => $3::float8)) + $4 <= $2
RETURNING true
"""
_WINDOW = ("SELECT extract(epoch FROM min(h))::float8, count(*)::int FROM auth_throttle t, unnest(t.hits) h "
           "WHERE t.key = $1 AND h > now() - make_interval(secs => $2::float8)")


def digest(key: str) -> bytes:
    """The stored form of a key: fixed size, no personal data, any text (lone surrogates, NUL) accepted."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).digest()


class _MovingWindowOnly(Storage, MovingWindowSupport):
    """A ``limits`` storage for :class:`MovingWindowRateLimiter` alone (fixed windows are not stored)."""

    STORAGE_SCHEME = None  # not registered under a URI scheme: built in code

    async def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        raise NotImplementedError("moving windows only")

    async def get(self, key: str) -> int:
        raise NotImplementedError("moving windows only")

    async def get_expiry(self, key: str) -> float:
        raise NotImplementedError("moving windows only")


class LocalWindows(_MovingWindowOnly):
    """This process's moving windows, bounded in time and in keys (see the module docstring)."""

    def __init__(self, max_keys: int = MAX_KEYS, clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self.max_keys = max_keys
        self._clock = clock
        # per window length: key -> granted hit times, oldest first; keys ordered by their last granted hit
        self._windows: dict[int, OrderedDict[str, deque[float]]] = {}

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return ValueError

    def __len__(self) -> int:
        return sum(len(keys) for keys in self._windows.values())

    def _keys(self, expiry: int, now: float) -> OrderedDict[str, deque[float]]:
        keys = self._windows.setdefault(expiry, OrderedDict())
        while keys:  # amortised O(1): the front holds the least recently granted key
            first = next(iter(keys.values()))
            if first and first[-1] > now - expiry:  # (an emptied one goes too, should the clock step back)
                break
            keys.popitem(last=False)
        return keys

    def _hits(self, keys: OrderedDict[str, deque[float]], key: str, since: float) -> deque[float] | None:
        hits = keys.get(key)
        while hits and hits[0] <= since:  # amortised O(1) however large the limit
            hits.popleft()
        return hits

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        now = self._clock()
        keys = self._keys(expiry, now)
        hits = self._hits(keys, key, now - expiry)
        if (len(hits) if hits else 0) + amount > limit:
            return False  # a refused key keeps its place: its last granted hit is unchanged
        if hits is None:
            hits = keys[key] = deque()
        hits.extend([now] * amount)
        keys.move_to_end(key)
        while len(keys) > self.max_keys:
            keys.popitem(last=False)
            EVICTED.inc()
        return True

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        now = self._clock()
        hits = self._hits(self._keys(expiry, now), key, now - expiry)
        return (hits[0], len(hits)) if hits else (now, 0)

    async def check(self) -> bool:
        return True

    async def reset(self) -> int | None:
        count = len(self)
        self._windows.clear()
        return count

    async def clear(self, key: str) -> None:
        for keys in self._windows.values():
            keys.pop(key, None)


class PostgresWindows(_MovingWindowOnly):
    """Moving windows in the ``auth_throttle`` table, shared by every replica on the database."""

    def __init__(self, pool_of: Callable[[], Any]) -> None:
        super().__init__()
        self._pool_of = pool_of

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return _SHARED_ERRORS

    def _pool(self) -> Any:
        pool = self._pool_of()
        if pool is None:
            raise asyncpg.InterfaceError("no database pool yet")
        return pool

    async def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        return bool(await self._pool().fetchval(_ACQUIRE, digest(key), limit, float(expiry), amount))

    async def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:
        row = await self._pool().fetchrow(_WINDOW, digest(key), float(expiry))
        return (row[0], row[1]) if row[1] else (time.time(), 0)

    async def check(self) -> bool:
        return bool(await self._pool().fetchval("SELECT true"))

    async def reset(self) -> int | None:
        status = await self._pool().execute("DELETE FROM auth_throttle")
        return int(status.split()[-1])

    async def clear(self, key: str) -> None:
        await self._pool().execute("DELETE FROM auth_throttle WHERE key = $1", digest(key))


class Throttle:
    """Moving-window limits: this process's count first, then the replicas' shared count when there is one."""

    def __init__(self, pool_of: Callable[[], Any] | None = None, timeout_s: float = 1.0,
                 max_keys: int = MAX_KEYS) -> None:
        self.local = LocalWindows(max_keys)
        self._local = MovingWindowRateLimiter(self.local)
        self.shared = PostgresWindows(pool_of) if pool_of is not None else None
        self._shared = MovingWindowRateLimiter(self.shared) if self.shared is not None else None
        self.timeout_s = timeout_s
        self._warned_at = -_WARN_EVERY_S

    async def hit(self, limit: str, item: RateLimitItem, *identifiers: str) -> bool:
        """Count one attempt against ``item`` for ``(limit, *identifiers)``; False: refused (not counted)."""
        if not await self._local.test(item, limit, *identifiers):  # this process alone is past it already
            REFUSED.labels(limit).inc()
            return False
        granted = await self._shared_hit(limit, item, *identifiers)
        if granted is None:
            granted = await self._local.hit(item, limit, *identifiers)
        elif granted:
            await self._local.hit(item, limit, *identifiers)  # the shared count decided; the local one follows
        if not granted:
            REFUSED.labels(limit).inc()
        return granted

    async def _shared_hit(self, limit: str, item: RateLimitItem, *identifiers: str) -> bool | None:
        if self._shared is None or item.amount > SHARED_MAX_AMOUNT:
            return None
        try:
            async with asyncio.timeout(self.timeout_s):
                return await self._shared.hit(item, limit, *identifiers)
        except _SHARED_ERRORS as exc:
            LOCAL_ONLY.labels(limit).inc()
            now = time.monotonic()
            if now - self._warned_at >= _WARN_EVERY_S:
                self._warned_at = now
                logger.warning("rate limits: the shared count in PostgreSQL failed (%s: %s); this process counts "
                               "alone until it is back", type(exc).__name__, str(exc)[:200] or "timed out")
            return None
