"""The live hub: turns ingested records into frames and fans them out to WebSocket clients.

* Frames are built from the in-memory records as they are ingested, never read back from the database.
* Every frame has a sequence number; the last ``ring_size`` frames are kept so a client that reconnects
  with the last number it saw (and the hub's epoch) gets what it missed, or else a fresh snapshot.
* Frames are batched per audience (screens sharing a subscription) every ``batch_s`` (50 ms in a served app):
  at 2,000 frames/s a screen gets ~20 WebSocket messages a second rather than one per event-loop turn, and a
  batch is joined once for its whole audience, so a screen costs one ``send`` per batch.
* Each client has a bounded queue. A client that falls behind stops getting individual frames: the
  hub remembers which devices changed and, when the client catches up, sends each one's latest state
  once with a ``lagged`` notice. Pushing to a client is O(1) and never waits, so a stalled screen can
  slow neither the other screens nor the ingest.
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import time
import uuid
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from analytics.findings import Finding
from ingest.metrics import HANDLER_ERRORS
from ingest.records import DeviceEvent, ParsedMessage, Reading, Record, Snapshot, StatusUpdate
from ingest.text import clean_json
from ioc.live.budget import Budgets
from ioc.live.client import LAG_EDGES, Audience, ClientSession, Frame
from ioc.live.config import LiveConfig
from ioc.live.filters import Subscription
from ioc.live.state import DeviceState, DeviceTable

logger = logging.getLogger(__name__)

DistrictOf = Callable[[float | None, float | None], str | None]
_OPTS = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC
_LIVE_DEFAULTS = LiveConfig.model_fields
#: A snapshot this recent is reused for another screen of the same subscription (plus the frames since it).
SNAPSHOT_REUSE_S = 0.5
#: The loop's lateness is sampled every TICK_S; lateness (or a send's wait) over STALL_S counts as a stall.
TICK_S = 0.05
STALL_S = 0.1


def encode(doc: dict[str, Any]) -> str:
    """One frame as JSON text; never raises. A document orjson refuses (a lone surrogate or a 65-bit integer
    that got this far, an odd type) is encoded again with the text rule applied to every string and key."""
    try:
        return orjson.dumps(doc, option=_OPTS).decode()
    except (TypeError, orjson.JSONEncodeError):
        HANDLER_ERRORS.labels("frame_encode").inc()
        return orjson.dumps(clean_json(_plain(doc)), option=_OPTS).decode()


def _plain(doc: Any) -> Any:
    """Datetimes as ISO text (what orjson would have written), so :func:`clean_json` keeps them."""
    if isinstance(doc, datetime):
        return orjson.dumps(doc, option=_OPTS).decode().strip('"')
    if isinstance(doc, dict):
        return {k: _plain(v) for k, v in doc.items()}
    if isinstance(doc, list | tuple):
        return [_plain(v) for v in doc]
    return doc


class LiveHub:
    """State + fan-out. All methods run on the event loop thread."""

    def __init__(self, district_of: DistrictOf = lambda lat, lon: None, ring_size: int = 50_000,
                 client_capacity: int = 2000, heartbeat_s: float = 10.0, batch_s: float = 0.0) -> None:
        self.district_of = district_of
        self.table = DeviceTable()
        self.ring: deque[Frame] = deque(maxlen=ring_size)
        self.clients: set[ClientSession] = set()
        # Screens grouped by subscription: frames are filtered and batched once per group (ioc/live/client.py).
        self.audiences: dict[Subscription, Audience] = {}
        self._snapshots: dict[Subscription, tuple[float, int, str]] = {}  # (built at, seq, text)
        self._flush_scheduled = False
        self.batch_s = batch_s  # frames wait this long to go out together (0: at the end of the loop turn)
        self._flush_timer: asyncio.TimerHandle | asyncio.Handle | None = None
        # Each device's state encoded once per change (``device`` frames for lagging screens and snapshots):
        # without it every lagging screen re-encoded thousands of devices, most of a busy replica's time.
        self._device_texts: dict[str, str] = {}
        self.client_capacity = client_capacity
        self.heartbeat_s = heartbeat_s
        self.epoch = uuid.uuid4().hex[:12]
        self.seq = 0
        self.frames_out = 0
        # Why screens fall behind, for GET /api/live/stats: the event loop held up (a replica's own CPU work or
        # the host's scheduler), or sends waiting for a screen's socket (the screen or its network not reading).
        self.lagged_closed = 0  # ``lagged`` turns of clients already gone
        self.lagged_socket_closed = 0  # ... of which while their socket was not taking data
        self.loop_stalls = 0  # heartbeat ticks late by more than STALL_S
        self.loop_stall_s = 0.0  # total lateness of those ticks
        self.loop_late_max_s = 0.0
        self.slow_sends = 0  # sends that waited more than STALL_S for the socket
        self.send_wait_s = 0.0  # total time of those sends
        self.out_lag_counts = [0] * (len(LAG_EDGES) + 1)  # sends by flush -> sent (LAG_EDGES; the last: beyond)
        # Extra sections of the snapshot on connect (the alert stage adds live incidents).
        self.snapshot_extra: Callable[[], dict[str, Any]] = dict
        # What incidents on the feed carry (IOC_LIVE__SNAPSHOT_INCIDENTS, IOC_LIVE__INCIDENT_MEMBERS): a province's
        # storm (3,000 live incidents, one of 20,000 members) made every connecting screen's snapshot 6.9 MB.
        self.snapshot_incidents: int = _LIVE_DEFAULTS["snapshot_incidents"].default
        self.incident_members: int = _LIVE_DEFAULTS["incident_members"].default
        # What keeps the pipeline from making progress (ioc/health.py): rides on heartbeats to the screens.
        self.problems: list[str] = []
        # The event loop's time each client address's screens may take for their own messages.
        self.budgets = Budgets()

    # --- input ---------------------------------------------------------------------------------------

    def load_devices(self, devices: list[dict[str, Any]], latest: list[dict[str, Any]]) -> None:
        """Seed state from the database at start (registry rows and recent latest values)."""
        self._device_texts.clear()
        for row in devices:
            dev = self.table.get_or_create(row["device_id"], row["kind"])
            dev.lat, dev.lon = row.get("lat"), row.get("lon")
            dev.state, dev.state_reason, dev.state_ts = row["state"], row.get("state_reason"), row.get("state_ts")
            dev.last_seen = row.get("last_seen")
            dev.district = self.district_of(dev.lat, dev.lon)
        for row in latest:
            known = self.table.devices.get(row["device_id"])
            if known is not None:
                known.latest[row["metric"]] = (row["ts"], row["value"])

    def place(self, device_id: str, lat: float, lon: float) -> None:
        """Position a known device that has not reported one yet (from the registry)."""
        dev = self.table.devices.get(device_id)
        if dev is not None and dev.lat is None:
            dev.lat, dev.lon = lat, lon
            dev.district = self.district_of(lat, lon)
            self._device_texts.pop(device_id, None)
            # screens knew the device without a place: tell them now, not at its next report (a BTS may
            # report once a minute, and until then a district tile would miss it)
            self.emit("device", dev, {"coalesced": True, **dev.to_dict()}, True)

    def on_parsed(self, parsed: ParsedMessage) -> None:
        """Ingest sink: one parsed MQTT message (called before it is committed)."""
        received_at = datetime.now(UTC)
        for rec in parsed.records:
            self.on_record(rec, received_at)

    def on_parsed_late(self, parsed: ParsedMessage) -> None:
        """Sink for a message the live intake set aside as late (ioc/live/intake.py): applied to the state and
        sent as the device's latest state (a ``device`` frame, as to a lagging screen), not as a reading."""
        received_at = datetime.now(UTC)
        changed: dict[str, DeviceState] = {}
        for rec in parsed.records:
            self._device_texts.pop(rec.device_id, None)
            dev, moved, news = self.table.apply(rec, received_at)
            if moved or (dev.district is None and dev.lat is not None):
                dev.district = self.district_of(dev.lat, dev.lon)
            if news:
                changed[dev.device_id] = dev
        for dev in changed.values():
            self.emit("device", dev, {"coalesced": True, **dev.to_dict()}, True)

    def on_record(self, rec: Record, received_at: datetime) -> None:
        self._device_texts.pop(rec.device_id, None)  # last_seen changes even when nothing else does
        dev, moved, news = self.table.apply(rec, received_at)
        if moved or (dev.district is None and dev.lat is not None):
            dev.district = self.district_of(dev.lat, dev.lon)
        if not news:
            return  # e.g. a reading the broker redelivered after a worker restart
        if isinstance(rec, Reading):
            self.emit("reading", dev, {"ts": rec.ts, "metrics": rec.metrics, "dev_seq": rec.seq}, True)
        elif isinstance(rec, StatusUpdate):
            self.emit("status", dev, {"ts": rec.ts, "state": dev.state, "reason": dev.state_reason}, True)
        elif isinstance(rec, DeviceEvent):
            self.emit("event", dev, {"ts": rec.ts, "event_type": rec.type, "severity": rec.severity,
                                     "detail": rec.detail}, False)
        elif isinstance(rec, Snapshot):
            self.emit("image", dev, {"ts": rec.ts, "width": rec.width, "height": rec.height,
                                     "url": f"/api/devices/{dev.device_id}/snapshot"}, True)

    def emit(self, frame_type: str, dev: DeviceState, body: dict[str, Any], coalescable: bool) -> Frame:
        """Sequence, encode once, keep in the ring and push to every interested client."""
        self.seq += 1
        doc = {"type": frame_type, "seq": self.seq, "device_id": dev.device_id, "kind": dev.kind,
               "district": dev.district, **body}
        if frame_type != "reading" or dev.lat is not None:
            doc["lat"], doc["lon"] = dev.lat, dev.lon
        frame = Frame(self.seq, frame_type, dev.device_id, dev.kind, dev.district, dev.lat, dev.lon,
                      encode(doc), coalescable)
        self.ring.append(frame)
        waiting = False
        for audience in self.audiences.values():
            if frame.visible_to(audience.sub):
                audience.pending.append(frame)
                waiting = True
        if waiting and not self._flush_scheduled:
            # Everything emitted within ``batch_s`` (or this turn of the event loop) goes out as one batch per
            # audience.
            try:
                loop = asyncio.get_running_loop()
                self._flush_timer = (loop.call_later(self.batch_s, self.flush) if self.batch_s > 0
                                     else loop.call_soon(self.flush))
                self._flush_scheduled = True
            except RuntimeError:  # no loop (replays, tests): flushed when a client takes its frames
                pass
        return frame

    def flush(self) -> None:
        """Batch the frames waiting for each audience and hand them to its screens."""
        self._flush_scheduled = False
        if self._flush_timer is not None:
            self._flush_timer.cancel()  # flushed early (a screen attached): the timer has nothing left to do
            self._flush_timer = None
        for audience in self.audiences.values():
            self.frames_out += audience.flush()

    def take(self, client: ClientSession) -> list[str]:
        """A client's frames one by one (tests, tools); screens use :meth:`take_messages`."""
        self.flush()
        return client.take_frames(self.catch_up)

    def take_messages(self, client: ClientSession) -> list[str]:
        """WebSocket messages for a screen, each a JSON array of frames."""
        self.flush()
        return client.take_messages(self.catch_up)

    def catch_up(self, client: ClientSession) -> list[str]:
        """A lagging client's way back: a ``lagged`` notice, the control frames queued meanwhile, the latest
        state of each device that changed, and the events kept while it lagged."""
        out = [encode({"type": "lagged", "seq": self.seq, "dropped_frames": client.dropped,
                       "devices_resent": len(client.behind)})]
        out.extend(q for q in client.queue if isinstance(q, str))
        out.extend(self.device_frame(d) for d in client.behind if d in self.table.devices)
        out.extend(client.behind_other)
        client.clear_queue()
        client.behind.clear()
        client.behind_other.clear()
        client.lagging, client.dropped = False, 0
        return out

    def set_health(self, device_id: str, health: dict[str, Any]) -> None:
        """Record a camera's analysed health; a change of label is pushed as a ``finding`` frame's context."""
        dev = self.table.devices.get(device_id)
        if dev is not None:
            changed = dev.health.get("label") != health.get("label")
            dev.health = health
            self._device_texts.pop(device_id, None)
            if changed:
                self.emit("health", dev, {"ts": health.get("ts"), **{k: v for k, v in health.items() if k != "ts"}},
                          True)

    def emit_finding(self, finding: Finding) -> None:
        """Push a detector finding (devices the hub does not know, e.g. ``group:LC``, are sent as kind "group")."""
        dev = self.table.devices.get(finding.device_id) or DeviceState(finding.device_id, "group",
                                                                      district=finding.device_id.partition(":")[2]
                                                                      or None)
        self.emit("finding", dev, {"ts": finding.ts, "series": finding.series, "finding_type": finding.type,
                                   "score": round(float(finding.score), 3), "explanation": finding.explanation},
                  False)

    def emit_alert(self, frame_type: str, item_id: int, district: str | None, body: dict[str, Any],
                   device_id: str | None = None) -> None:
        """Push an ``alert`` or ``incident`` change (filters see the device's kind, or kind "incident")."""
        dev = self.table.devices.get(device_id or "") or DeviceState(f"{frame_type}:{item_id}", "incident",
                                                                    district=district)
        self.emit(frame_type, dev, {frame_type: body}, False)

    # --- clients -------------------------------------------------------------------------------------

    def attach(self, sub: Subscription, resume_from: int | None = None, epoch: str | None = None) -> ClientSession:
        """Register a client; queue its catch-up (missed frames) or a snapshot of current state."""
        self.flush()  # frames emitted before the snapshot belong to it, not after it
        client = ClientSession(sub, self.client_capacity)
        self._prime(client, resume_from, epoch)
        self.clients.add(client)
        self._join(client)
        return client

    def _join(self, client: ClientSession) -> None:
        audience = self.audiences.get(client.sub)
        if audience is None:
            audience = self.audiences[client.sub] = Audience(client.sub)
        audience.clients.add(client)

    def _leave(self, client: ClientSession) -> None:
        audience = self.audiences.get(client.sub)
        if audience is not None:
            audience.clients.discard(client)
            if not audience.clients:
                del self.audiences[client.sub]

    def resubscribe(self, client: ClientSession, sub: Subscription, resume_from: int | None = None,
                    epoch: str | None = None) -> None:
        """Change a client's filter: what it had queued is dropped and it starts again from a snapshot."""
        self.flush()
        self._leave(client)
        client.sub = sub
        self._join(client)
        client.clear_queue()
        client.behind.clear()
        client.behind_other.clear()
        client.lagging, client.dropped = False, 0
        self._prime(client, resume_from, epoch)

    def _prime(self, client: ClientSession, resume_from: int | None, epoch: str | None) -> None:
        if resume_from is not None and epoch == self.epoch and self._can_resume(resume_from):
            client.push_control(encode({"type": "resumed", "seq": self.seq, "epoch": self.epoch,
                                        "from": resume_from}))
            for frame in self.ring:
                if frame.seq > resume_from and frame.visible_to(client.sub):
                    client.push(frame)
        else:
            self._push_snapshot(client)

    def _push_snapshot(self, client: ClientSession) -> None:
        """A snapshot for a new screen. Walls reconnect together (a replica restarted, a network blip): a snapshot
        of the same subscription built less than ``SNAPSHOT_REUSE_S`` ago is sent again, followed by the frames
        since it from the ring, instead of encoding thousands of devices once per screen."""
        now = time.monotonic()
        cached = self._snapshots.get(client.sub)
        if cached is not None and now - cached[0] <= SNAPSHOT_REUSE_S and self._can_resume(cached[1]):
            client.push_control(cached[2])
            since = []
            for frame in reversed(self.ring):
                if frame.seq <= cached[1]:
                    break
                since.append(frame)
            for frame in reversed(since):
                if frame.visible_to(client.sub):
                    client.push(frame)
            return
        text = self.snapshot_frame(client.sub)
        if len(self._snapshots) >= 64:
            self._snapshots.clear()
        self._snapshots[client.sub] = (now, self.seq, text)
        client.push_control(text)

    def detach(self, client: ClientSession) -> None:
        client.closed = True
        if client in self.clients:
            self.lagged_closed += client.lag_count
            self.lagged_socket_closed += client.lag_on_socket
        self.clients.discard(client)
        self._leave(client)

    def _can_resume(self, seq: int) -> bool:
        if seq > self.seq:
            return False
        if seq == self.seq:
            return True
        return bool(self.ring) and self.ring[0].seq <= seq + 1

    def snapshot_frame(self, sub: Subscription) -> str:
        devices = [self._device_text(d) for d in self.table.devices.values()
                   if sub.matches_device(d.kind, d.device_id, d.district, d.lat, d.lon)]
        try:
            extra = self.snapshot_extra()
        except Exception as err:  # a new screen still gets the devices when a section cannot be built
            HANDLER_ERRORS.labels("snapshot").inc()
            logger.exception("snapshot section failed; sent without it")
            extra = {"snapshot_errors": [f"{type(err).__name__}: {err}"[:300]]}
        head = encode({"type": "snapshot", "seq": self.seq, "epoch": self.epoch, "server_time": datetime.now(UTC)})
        tail = encode(extra)[1:] if extra else "}"  # the extra sections after the devices, as before
        return f'{head[:-1]},"devices":[{",".join(devices)}]{"," if extra else ""}{tail}'

    def _device_text(self, dev: DeviceState) -> str:
        """The device's state as a JSON object, encoded once until the device changes."""
        text = self._device_texts.get(dev.device_id)
        if text is None:
            text = self._device_texts[dev.device_id] = encode(dev.to_dict())
        return text

    def device_frame(self, device_id: str) -> str:
        body = self._device_text(self.table.devices[device_id])
        return f'{{"type":"device","seq":{self.seq},"coalesced":true,{body[1:]}'

    @property
    def lagged_total(self) -> int:
        """Times a client fell behind since start."""
        return self.lagged_closed + sum(c.lag_count for c in self.clients)

    @property
    def lagged_on_socket(self) -> int:
        """Times a client fell behind while a send to it was waiting for its socket (the screen not reading)."""
        return self.lagged_socket_closed + sum(c.lag_on_socket for c in self.clients)

    def sent(self, waited_s: float) -> None:
        """A send to a screen took ``waited_s`` (its socket's back-pressure, or the loop's)."""
        if waited_s > STALL_S:
            self.slow_sends += 1
            self.send_wait_s += waited_s

    def delivered(self, client: ClientSession) -> None:
        """A screen's sends are done: count how long its oldest batch waited after its flush."""
        if client.taken_at:
            self.out_lag_counts[bisect.bisect_left(LAG_EDGES, time.monotonic() - client.taken_at)] += 1
            client.taken_at = 0.0

    async def heartbeat_loop(self) -> None:
        """Tell every client we are alive and where the sequence stands; measure how late the loop runs."""
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + self.heartbeat_s
        while True:
            due = loop.time() + TICK_S
            await asyncio.sleep(TICK_S)
            late = loop.time() - due
            self.loop_late_max_s = max(self.loop_late_max_s, late)
            if late > STALL_S:
                self.loop_stalls += 1
                self.loop_stall_s += late
            if loop.time() < next_beat:
                continue
            next_beat = loop.time() + self.heartbeat_s
            text = encode({"type": "heartbeat", "seq": self.seq, "epoch": self.epoch,
                           "server_time": datetime.now(UTC), "mono": time.monotonic(), "problems": self.problems})
            for client in list(self.clients):
                if not client.control_full:  # not reading its answers: it would only queue up
                    client.push_control(text)

    def summary(self) -> list[dict[str, Any]]:
        """Device counts by district, kind and state."""
        counts: dict[tuple[str | None, str], dict[str, int]] = {}
        for dev in self.table.devices.values():
            row = counts.setdefault((dev.district, dev.kind), {})
            row[dev.state] = row.get(dev.state, 0) + 1
        return [{"district": district, "kind": kind, "total": sum(c.values()), **{
                 s: c.get(s, 0) for s in ("online", "offline", "degraded", "unknown")}}
                for (district, kind), c in sorted(counts.items(), key=lambda kv: (kv[0][0] or "", kv[0][1]))]
