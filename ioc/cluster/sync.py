"""Every replica's screens follow the database: LISTEN for changed incidents, alerts and findings.

The leader's flush NOTIFYs the ids it changed in the same transaction (delivered on commit); each
replica reads those rows back and pushes them on its own live hub, and keeps the live incidents it
serves in a snapshot (a screen connecting to any replica gets the database's incidents). The leader's
own process skips pushing what its stage already pushed. A lost LISTEN connection is re-opened and
followed by a full reload, as is every ``resync_s``.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from analytics.findings import Finding
from ioc.alerts.model import LIVE
from ioc.cluster.views import DistrictName, incident_views
from ioc.live.hub import LiveHub
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
        self.live: dict[int, dict[str, Any]] = {}
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(maxsize=10_000)
        self._conn: Any = None
        self.ready = asyncio.Event()
        self.notifications = 0

    def snapshot(self) -> dict[str, Any]:
        """Live incidents for the feed's snapshot on connect (the hub's ``snapshot_extra``)."""
        from ioc.alerts.model import rank

        views = sorted(self.live.values(), key=lambda v: (-rank(v["severity"]), v["started_at"]))
        return {"incidents": views}

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
            views = await incident_views(conn, self.district_name)
        fresh = {v["id"]: v for v in views}
        gone = [v for i, v in self.live.items() if i not in fresh]
        self.live = fresh
        self.ready.set()
        if gone:  # resolved/closed while we missed it: tell the screens with the stored row
            await self._refresh([v["id"] for v in gone], [], push=True)

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
            views = await incident_views(conn, self.district_name, incident_ids) if incident_ids else []
            alerts = [store._parse(r, "evidence") for r in await conn.fetch(
                f"SELECT {store._ALERT_COLS} FROM alerts WHERE id = ANY($1::int8[])", alert_ids)] if alert_ids else []
        for v in views:
            if v["state"] in _LIVE:
                self.live[v["id"]] = v
            else:
                self.live.pop(v["id"], None)
            if push:
                self.hub.emit_alert("incident", v["id"], v["district"], v)
        if push:
            from ioc.alerts.stage import _alert

            for row in alerts:
                a = _alert(row)
                self.hub.emit_alert("alert", a.id, a.district, a.to_dict(), device_id=a.device_id)


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
