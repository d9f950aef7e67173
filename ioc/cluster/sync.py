"""Every replica's screens follow the database: LISTEN for changed incidents, alerts and findings.

The leader's flush NOTIFYs the ids it changed in the same transaction (delivered on commit); each
replica reads those rows back and pushes them on its own live hub, and keeps the live incidents it
serves in a snapshot (a screen connecting to any replica gets the database's incidents). The leader's
own process skips pushing what its stage already pushed. A lost LISTEN connection is re-opened and
followed by a full reload, as is every ``resync_s``.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from analytics.findings import Finding
from ioc.alerts.feed_view import newest_critical
from ioc.alerts.from_rows import alert_from_row
from ioc.alerts.model import LIVE, rank
from ioc.cluster.views import DistrictName, bounded_views, incident_rows, live_rows, off_loop
from ioc.live.hub import LiveHub, encode
from storage import alerts as store
from storage import cluster as sql
from storage.writes import FindingRow

logger = logging.getLogger(__name__)

_LIVE = {s.value for s in LIVE}


class ReplicaSync:
    """Keeps a replica's hub and incident snapshot equal to the database."""

    def __init__(self, dsn: str, pool: Any, hub: LiveHub, district_name: DistrictName, process_id: str,
                 resync_s: float = 30.0) -> None:
        self.dsn, self.pool, self.hub, self.district_name = dsn, pool, hub, district_name
        self.process_id, self.resync_s = process_id, resync_s
        # Live incidents as the feed carries them (members capped: hub.incident_members), each one's JSON (encoded
        # once per change, off the loop when many) and its place in the snapshot (most severe, then oldest, first).
        self.live: dict[int, dict[str, Any]] = {}
        self._texts: dict[int, str] = {}
        self._keys: dict[int, tuple[int, datetime, int]] = {}
        self._section: tuple[int, dict[str, Any]] | None = None  # the snapshot's incidents, for this limit
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(maxsize=10_000)
        self._conn: Any = None
        self.ready = asyncio.Event()
        self.notifications = 0

    def snapshot(self) -> dict[str, Any]:
        """Live incidents for the feed's snapshot on connect (the hub's ``snapshot_extra``): the
        ``hub.snapshot_incidents`` most severe (then oldest) and the newest unacknowledged critical ones left out
        (:func:`newest_critical`), each encoded once per change and joined here, with
        ``incidents_total`` and ``incidents_truncated``. Kept until the live set changes."""
        limit = self.hub.snapshot_incidents
        if self._section is None or self._section[0] != limit:
            ids = heapq.nsmallest(limit, self._keys, key=self._keys.__getitem__)
            chosen = set(ids)
            ids += newest_critical((i for i in self._keys if i not in chosen), self._open_critical,
                                   lambda i: (self._keys[i][1], i))
            joined = "[" + ",".join(self._texts[i] for i in ids) + "]"
            self._section = (limit, {"incidents": orjson.Fragment(joined), "incidents_total": len(self.live),
                                     "incidents_truncated": len(self.live) > len(ids)})
        return self._section[1]

    def _open_critical(self, incident_id: int) -> bool:
        view = self.live[incident_id]
        return view.get("state") == "open" and view.get("severity") == "critical"

    def _keep(self, row: dict[str, Any], view: dict[str, Any], text: str) -> None:
        self.live[view["id"]], self._texts[view["id"]] = view, text
        self._keys[view["id"]] = (-rank(row["severity"]), row["started_at"], row["id"])
        self._section = None

    def _forget(self, incident_id: int) -> None:
        for held in (self.live, self._texts, self._keys):
            held.pop(incident_id, None)
        self._section = None

    def _on_notify(self, conn: Any, pid: int, channel: str, payload: str) -> None:
        try:
            doc = orjson.loads(payload)
        except orjson.JSONDecodeError:
            return
        self.notifications += 1
        try:
            self._queue.put_nowait((channel, doc))
        except asyncio.QueueFull:  # far behind: one full reload catches up
            self._drain()
            self._queue.put_nowait((sql.CHANNEL_ALERTS, {"all": True}))

    def _drain(self) -> None:
        while not self._queue.empty():
            self._queue.get_nowait()

    async def run(self) -> None:
        """Listen until cancelled; reconnect and reload after any loss."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                await self._listen()
                await self.reload()
                last = loop.time()
                while not self._conn.is_closed():
                    try:
                        channel, doc = await asyncio.wait_for(self._queue.get(), 1.0)
                    except TimeoutError:
                        if loop.time() - last >= self.resync_s:
                            last = loop.time()
                            await self.reload()
                        continue
                    await self._handle(channel, doc)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                logger.warning("replica sync interrupted (%s); reconnecting", err)
                await asyncio.sleep(1.0)
            finally:
                await self._close()

    async def _listen(self) -> None:
        self._conn = await asyncpg.connect(self.dsn, timeout=5,
                                           server_settings={"application_name": f"ioc-sync {self.process_id}"})
        for channel in (sql.CHANNEL_ALERTS, sql.CHANNEL_FINDINGS, sql.CHANNEL_HEALTH):
            await self._conn.add_listener(channel, self._on_notify)
        self._drain()

    async def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()

    async def reload(self) -> None:
        """Read every live incident again (at start, after a reconnect, periodically)."""
        async with self.pool.acquire(timeout=5) as conn:
            rows, _ = await live_rows(conn, None)
            views = await bounded_views(conn, self.district_name, rows, self.hub.incident_members)
        texts = await _encoded(views)
        fresh = {v["id"] for v in views}
        gone = [i for i in self.live if i not in fresh]
        self.live, self._texts, self._keys = {}, {}, {}
        for row, view, text in zip(rows, views, texts, strict=True):
            self._keep(row, view, text)
        self._section = None
        self.ready.set()
        if gone:  # resolved/closed while we missed it: tell the screens with the stored row
            await self._refresh(gone, [], push=True)

    async def _handle(self, channel: str, doc: dict[str, Any]) -> None:
        own = doc.get("origin") == self.process_id
        if channel == sql.CHANNEL_FINDINGS:
            if not own:
                for row in doc.get("findings") or []:
                    self.hub.emit_finding(_finding(row))
            return
        if channel == sql.CHANNEL_HEALTH:
            if not own:
                for device_id, health in (doc.get("health") or {}).items():
                    ts = health.get("ts")
                    self.hub.set_health(device_id, {**health, "ts": datetime.fromisoformat(ts) if ts else None})
            return
        if doc.get("all"):
            await self.reload()
            return
        await self._refresh([int(i) for i in doc.get("incidents") or []], [int(i) for i in doc.get("alerts") or []],
                            push=not own)

    async def _refresh(self, incident_ids: list[int], alert_ids: list[int], push: bool) -> None:
        async with self.pool.acquire(timeout=5) as conn:
            rows = await incident_rows(conn, incident_ids) if incident_ids else []
            views = await bounded_views(conn, self.district_name, rows, self.hub.incident_members)
            alerts = [store._parse(r, "evidence") for r in await conn.fetch(
                f"SELECT {store._ALERT_COLS} FROM alerts WHERE id = ANY($1::int8[])", alert_ids)] if alert_ids else []
        texts = await _encoded(views)
        for row, v, text in zip(rows, views, texts, strict=True):
            if v["state"] in _LIVE:
                self._keep(row, v, text)
            else:
                self._forget(v["id"])
            if push:
                self.hub.emit_alert("incident", v["id"], v["district"], v)
        if push:
            for row in alerts:
                a = alert_from_row(row)
                self.hub.emit_alert("alert", a.id, a.district, a.to_dict(), device_id=a.device_id)


async def _encoded(views: list[dict[str, Any]]) -> list[str]:
    """Each view's JSON, on a worker thread when they hold many members."""
    return await off_loop(sum(len(v["members"]) + 1 for v in views), lambda: [encode(v) for v in views])


def findings_payloads(origin: str, rows: list[FindingRow]) -> list[dict[str, Any]]:
    """NOTIFY documents (each under PostgreSQL's payload limit) carrying new findings to other replicas."""
    docs: list[dict[str, Any]] = []
    batch: list[dict[str, Any]] = []
    size = 0
    for ts, device_id, series, ftype, score, explanation, detail in rows:
        item = {"ts": ts.isoformat(), "device_id": device_id, "series": series, "type": ftype, "score": score,
                "explanation": explanation, "detail": detail}
        n = len(orjson.dumps(item))
        if n > sql.MAX_PAYLOAD - 200:
            item["detail"] = "{}"
            n = len(orjson.dumps(item))
        if batch and size + n > sql.MAX_PAYLOAD - 200:
            docs.append({"origin": origin, "findings": batch})
            batch, size = [], 0
        batch.append(item)
        size += n
    if batch:
        docs.append({"origin": origin, "findings": batch})
    return docs


def health_payloads(origin: str, changed: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """NOTIFY documents carrying cameras' changed health (device -> label, confidence, activity, objects, ts)."""
    docs: list[dict[str, Any]] = []
    batch: dict[str, Any] = {}
    size = 0
    for device_id, health in changed.items():
        item = {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in health.items()}
        n = len(orjson.dumps(item)) + len(device_id) + 8
        if batch and size + n > sql.MAX_PAYLOAD - 200:
            docs.append({"origin": origin, "health": batch})
            batch, size = {}, 0
        batch[device_id] = item
        size += n
    if batch:
        docs.append({"origin": origin, "health": batch})
    return docs


def _finding(item: dict[str, Any]) -> Finding:
    detail = item.get("detail") or "{}"
    return Finding(device_id=item["device_id"], series=item["series"], ts=datetime.fromisoformat(item["ts"]),
                   type=item["type"], score=float(item["score"]), explanation=item.get("explanation") or "",
                   detail=orjson.loads(detail) if isinstance(detail, str) else detail)
