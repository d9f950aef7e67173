"""The outbox dispatcher: claim due notifications, pace them per target, send, record the outcome.

Outcomes: sent; a transient failure is retried with exponential backoff and jitter up to
``max_attempts``, then 'failed'; a permanent failure (4xx, SMTP 5xx) is 'failed' at once. A
rate-limited notification is deferred, not dropped; when too many wait for one target, older ones of
the same incident are 'dropped' as superseded. Every row keeps its attempts and last error.

Under a leader (ioc/cluster) every write is fenced by its lease's epoch: the claim, the check just before each
send that the row is still under this pass's claim (a leader paused after its claim finds the next leader took
the row back, and sends nothing), the rate-limit token, and every outcome. A refused write stops the pass and
is counted (``ioc_notifications_fenced``); a page already on its way when the lease was lost is sent again by
the next leader under the same notification id, which receivers drop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
from prometheus_client import Counter, Gauge

from ingest.backoff import Backoff, backoff_delay
from ioc.alerts.notify.config import NotifyConfig
from ioc.alerts.notify.email import build_message, send_email
from ioc.alerts.notify.ratelimit import Key, RateLimiter
from ioc.alerts.notify.render import Rendered
from ioc.alerts.notify.webhook import DeliveryError, send_webhook
from storage import cluster as cluster_sql
from storage import notifications as outbox
from storage.cluster import FencedError
from storage.notifications import Claim, NotificationRow

logger = logging.getLogger(__name__)

SENT = Counter("ioc_notifications_sent", "Notifications delivered", ["channel"])
FAILURES = Counter("ioc_notification_failures", "Failed delivery attempts", ["channel", "transient"])
DEFERRED = Counter("ioc_notifications_deferred", "Notifications postponed by the per-target rate limit",
                   ["channel"])
SUPERSEDED = Counter("ioc_notifications_superseded", "Waiting notifications dropped for a newer one of the "
                     "same incident", ["channel"])
PENDING = Gauge("ioc_notifications_pending", "Notifications waiting in the outbox")
FENCED = Counter("ioc_notifications_fenced", "Dispatcher writes refused because this process no longer leads "
                 "(claim, send: the page not sent, outcome: a delivery or failure not recorded)", ["what"])
LOST_CLAIMS = Counter("ioc_notifications_claims_lost", "Claimed notifications not sent because their claim was "
                      "taken back meanwhile (by the next leader, or after the claim's lease)")

CHANNELS = ("email", "webhook")
#: Longest pause after the database failed a pass; the outbox is durable, so waiting loses nothing.
MAX_OUTAGE_BACKOFF_S = 30.0
_OUTAGE_ERRORS = (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError)


def targets_for(config: NotifyConfig, officers: list[dict[str, Any]], channels: list[str]) -> list[tuple[str, str]]:
    """(channel, target) pairs for a policy's channels and the officers to reach.

    Email goes to each officer's address (officers without one, or every officer when email is
    disabled, are skipped); each configured webhook URL gets one message, not one per officer. Other
    channels (the WebSocket feed) are not delivered through the outbox and are ignored here.
    """
    pairs: list[tuple[str, str]] = []
    for channel in channels:
        if channel == "email" and config.smtp_host:
            pairs += [("email", str(o["email"])) for o in officers if o.get("email")]
        elif channel == "webhook":
            pairs += [("webhook", url) for url in config.webhook_urls]
    return list(dict.fromkeys(pairs))


def notification_rows(rendered: Rendered, incident_id: int | None, reason: str,
                      targets: list[tuple[str, str]]) -> list[NotificationRow]:
    """Outbox rows for one rendered notification to each (channel, target)."""
    return [NotificationRow(incident_id=incident_id, channel=channel, target=target, reason=reason,
                            subject=rendered.subject, body=rendered.payload) for channel, target in targets]


def _dt(ts: float) -> datetime:
    return datetime.fromtimestamp(ts, UTC)


class NotificationDispatcher:
    """Sends the outbox. Several processes may run one each on the same database.

    Args:
        pool: asyncpg pool.
        config: Notification settings.
        clock: Unix time source (tests inject one).
        client: HTTP client for webhooks (default: one owned by the dispatcher).
        rng: Random source for the retry jitter.
    """

    def __init__(self, pool: Any, config: NotifyConfig, clock: Callable[[], float] = time.time, *,
                 client: httpx.AsyncClient | None = None, rng: random.Random | None = None) -> None:
        self._pool = pool
        self._config = config
        self._clock = clock
        self._client = client
        self._own_client = client is None
        self._rng = rng or random.Random()
        self._secret = config.webhook_secret.get_secret_value() if config.webhook_secret else None
        self._limiter = RateLimiter(config.rate_per_minute, config.burst)
        # High availability (ioc/cluster): the lease's fence, awaited inside the claim transaction, and rate
        # limits kept in the database (notify_rate) so that every dispatcher paces one shared bucket per target.
        self.guard: Callable[[Any], Awaitable[None]] | None = None
        self.shared_limits = False
        # The leader's epoch: its claims carry it, and its first pass takes back the claims of older epochs
        # (a leader killed between claim and send would otherwise hold those pages back for the claim's lease).
        self.epoch: int | None = None
        self._stale_released = False
        self.fenced = 0  # writes refused by the fence (this process no longer leads)

    async def run(self) -> None:
        """Send due notifications every ``poll_s`` until cancelled; database outages only pause it."""
        if self._config.webhook_urls and not self._secret:
            logger.warning("webhook_secret is not set: webhooks are sent unsigned")
        outage = Backoff(self._config.poll_s, MAX_OUTAGE_BACKOFF_S, self._rng)
        try:
            while True:
                try:
                    processed = await self.send_once()
                    pause = self._config.poll_s
                    outage.reset()
                except FencedError as exc:  # the lease is lost: the brain stops this task
                    processed = 0
                    pause = outage.next_delay()
                    logger.warning("notification pass refused: %s", exc)
                except _OUTAGE_ERRORS as exc:
                    processed = 0
                    pause = outage.next_delay()
                    logger.warning("notification pass failed (%s: %s); next try in %.1f s",
                                   type(exc).__name__, exc, pause)
                except Exception:
                    processed = 0
                    pause = outage.next_delay()
                    logger.exception("notification pass failed; next try in %.1f s", pause)
                # A full batch means more may be due: go again without waiting.
                if processed < self._config.batch:
                    await asyncio.sleep(pause)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP client the dispatcher owns."""
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    async def send_once(self) -> int:
        """One pass: claim due notifications, send them, record outcomes. Returns how many were claimed.

        Raises:
            Exception: whatever the database raised (the notifications stay in the outbox).
        """
        async with self._pool.acquire() as conn, conn.transaction():
            await self._fence(conn, "claim")
            if self.epoch is not None and not self._stale_released:
                released = await outbox.release_stale_claims(conn, self.epoch, _dt(self._clock()))
                if released:
                    logger.warning("took back %d notification claims of an earlier leader", released)
            rows = await outbox.claim_due(conn, _dt(self._clock()), self._config.batch, self._config.lease_s,
                                          self.epoch)
        self._stale_released = True  # only once the claim transaction committed
        groups: dict[Key, list[dict[str, Any]]] = {}
        for row in rows:
            groups.setdefault((row["channel"], row["target"]), []).append(row)
        # Targets in parallel, each target in order: one slow receiver does not hold up the others.
        results = await asyncio.gather(*(self._send_group(k, g) for k, g in groups.items()),
                                       return_exceptions=True)
        async with self._pool.acquire() as conn:
            PENDING.set(await outbox.pending_count(conn))
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return len(rows)

    async def _fence(self, conn: Any, what: str) -> None:
        """The lease's fence, first in a write transaction; a refusal is counted and raised."""
        if self.guard is None:
            return
        try:
            await self.guard(conn)
        except FencedError:
            self.fenced += 1
            FENCED.labels(what).inc()
            raise

    def _claim(self, row: dict[str, Any]) -> Claim:
        return self.epoch, row["next_attempt"]

    async def _send_group(self, key: Key, rows: list[dict[str, Any]]) -> None:
        for index, row in enumerate(rows):
            now = self._clock()
            wait = await self._turn(key, row, now)
            if wait is None:
                continue
            if wait > 0:
                await self._hold_back(key, rows[index:], now + wait)
                return
            await self._deliver(row)

    async def _turn(self, key: Key, row: dict[str, Any], now: float) -> float | None:
        """Just before sending ``row``: under the fence, is it still under this pass's claim (None: no, skip it),
        and may its target receive now (0.0) or in how many seconds (the rate limit's token)?

        A claim is taken back by the next leader's first pass (or by any dispatcher after the claim's lease): a
        process that was paused since its claim must not send what another now sends.
        """
        async with self._pool.acquire() as conn, conn.transaction():
            await self._fence(conn, "send")
            if not await outbox.still_claimed(conn, row["id"], self._claim(row)):
                LOST_CLAIMS.inc()
                logger.warning("notification %s not sent: its claim was taken back meanwhile", row["id"])
                return None
            if not self.shared_limits:
                return self._limiter.acquire(key, now)
            return await cluster_sql.take_token(conn, key[0], key[1], self._limiter.rate_per_s, self._limiter.burst)

    async def _hold_back(self, key: Key, rows: list[dict[str, Any]], until: float) -> None:
        channel, target = key
        async with self._pool.acquire() as conn, conn.transaction():
            await self._fence(conn, "outcome")
            dropped = await outbox.supersede(conn, channel, target, self._config.coalesce_after)
            deferred = await outbox.defer(conn, [r["id"] for r in rows], _dt(until), self._claim(rows[0]))
        DEFERRED.labels(channel).inc(deferred)
        SUPERSEDED.labels(channel).inc(dropped)
        logger.info("rate limit for %s %s: %d deferred to %s, %d superseded", channel, target, deferred,
                    _dt(until).isoformat(timespec="seconds"), dropped)

    async def _attempt(self, row: dict[str, Any]) -> DeliveryError | None:
        """Send one notification; return the failure instead of raising it."""
        channel = row["channel"]
        body = row["body"] if isinstance(row["body"], dict) else {}
        try:
            if channel == "webhook":
                data = json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()
                await send_webhook(self._http(), row["target"], data, row["id"], self._secret, now=self._clock())
            elif channel == "email":
                msg = build_message(subject=row["subject"], text=str(body.get("text") or row["subject"]),
                                    sender=self._config.smtp_from, to=row["target"], notification_id=row["id"],
                                    incident_id=row["incident_id"])
                await send_email(msg, self._config)
            else:
                return DeliveryError(False, f"unknown channel {channel!r}")
        except DeliveryError as exc:
            return exc
        except Exception as exc:  # a bug or an unforeseen library error: retry, and leave a trace
            logger.exception("unexpected error sending notification %s", row["id"])
            return DeliveryError(True, f"unexpected error: {type(exc).__name__}: {exc}")
        return None

    async def _deliver(self, row: dict[str, Any]) -> None:
        channel, target, nid = row["channel"], row["target"], row["id"]
        attempt = int(row["attempts"]) + 1
        error = await self._attempt(row)
        if error is None:
            SENT.labels(channel).inc()
            try:
                async with self._pool.acquire() as conn, conn.transaction():
                    await self._fence(conn, "outcome")
                    await outbox.mark_sent(conn, nid, _dt(self._clock()), self._claim(row))
            except FencedError:
                logger.warning("notification %s was delivered as this process lost its lease: not recorded, the "
                               "next leader sends it again under the same id (receivers drop the repeat)", nid)
                raise
            logger.info("notification %s (%s) sent by %s to %s, attempt %d", nid, row["reason"], channel, target,
                        attempt)
            return
        FAILURES.labels(channel, "true" if error.transient else "false").inc()
        if error.transient and attempt < self._config.max_attempts:
            delay = backoff_delay(attempt, self._config.retry_base_s, self._config.retry_max_s, self._rng)
            if error.retry_after:
                delay = max(delay, min(error.retry_after, self._config.retry_max_s))
            async with self._pool.acquire() as conn, conn.transaction():
                await self._fence(conn, "outcome")
                await outbox.mark_retry(conn, nid, _dt(self._clock() + delay), error.message, self._claim(row))
            logger.warning("notification %s by %s to %s failed (attempt %d/%d, retry in %.1f s): %s", nid, channel,
                           target, attempt, self._config.max_attempts, delay, error.message)
            return
        message = error.message if not error.transient else f"gave up after {attempt} attempts: {error.message}"
        async with self._pool.acquire() as conn, conn.transaction():
            await self._fence(conn, "outcome")
            await outbox.mark_failed(conn, nid, message, self._claim(row))
        logger.error("notification %s by %s to %s failed for good: %s", nid, channel, target, message)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self._config.webhook_timeout_s, follow_redirects=False)
        return self._client
