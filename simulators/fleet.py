"""The fleet: every device's messages over simulated time, as (topic, payload) values. No I/O.

A heap of (due time, device, channel) drives the ticks; each tick's timestamp is its due time, so a
run's payloads depend only on the scenario and the start time, not on how fast the machine is.
"""

from __future__ import annotations

import heapq
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson

from ingest import contract
from simulators import models, signals
from simulators.city import City, Device
from simulators.clock import iso_utc
from simulators.incidents import Effect, Incident, effects_by_device
from simulators.scene import SceneRenderer

logger = logging.getLogger(__name__)

#: Payload of the last will each per-device connection registers (no ts: the ingest stamps it).
WILL_PAYLOAD = b'{"state":"offline","reason":"connection lost"}'


@dataclass(slots=True)
class Message:
    """One MQTT publish: QoS 1 always; status messages are retained."""

    device_id: str
    channel: str
    topic: str
    payload: bytes
    retain: bool = False
    values: int = 0  # metric values carried (telemetry)


@dataclass(slots=True)
class Control:
    """Connection-level action for the transport: ``kill`` drops the device's connection (the broker then
    publishes its will), ``revive`` reconnects it."""

    device_id: str
    action: str


Output = Message | Control


@dataclass(slots=True)
class FleetOptions:
    """How the fleet speaks: whether devices own connections with wills, the ts format, exit behaviour."""

    wills: bool = False
    ts_format: str = "ms"  # "ms" (epoch milliseconds) or "rfc3339"
    offline_on_exit: bool = True
    position_every: int = 100  # send lat/lon on the first reading and then every N readings
    snapshots: bool = True
    #: first readings spread over this many simulated seconds (None: over one reporting period, the even load a
    #: real fleet has; a demo sets a few seconds so every device is on the map at once)
    first_report_within_s: float | None = None


class _State:
    __slots__ = ("dead", "degraded", "dev", "down", "effects", "low_sent", "mains", "model", "renderer", "seq",
                 "silent", "since_boot", "topics")

    def __init__(self, dev: Device, model: Any, effects: list[Effect]) -> None:
        self.dev, self.model, self.effects = dev, model, effects
        self.seq = self.since_boot = 0
        self.dead = self.silent = self.down = self.low_sent = self.degraded = False
        self.mains = True  # a BTS booting on battery reports mains_power_lost on its first reading
        self.renderer: SceneRenderer | None = None
        self.topics = {ch: contract.topic_for(dev.kind, dev.id, ch) for ch in contract.CHANNELS_BY_KIND[dev.kind]}


class Fleet:
    """Generates the messages of ``devices`` (a shard of ``city``) under the planned ``incidents``."""

    def __init__(self, city: City, devices: list[Device], incidents: list[Incident],
                 options: FleetOptions | None = None) -> None:
        self.city = city
        self.options = options or FleetOptions()
        sc = city.scenario
        self.intervals = {"traffic": sc.intervals.traffic_s, "bts": sc.intervals.bts_s, "camera": sc.intervals.camera_s}
        self.snapshot_s = sc.intervals.snapshot_s
        effects = effects_by_device(incidents)
        self.states: list[_State] = []
        for dev in devices:
            model: Any
            if dev.kind == "traffic":
                model = models.TrafficModel(city, dev, self.intervals["traffic"])
            elif dev.kind == "bts":
                model = models.BtsModel(city, dev)
            else:
                model = models.CameraModel(city, dev)
            self.states.append(_State(dev, model, effects.get(dev.id, [])))
        self._heap: list[tuple[float, int, int, str]] = []
        self._n = 0
        self.lost = 0  # readings a silent device "took" but never sent: they show as seq gaps
        self.snapshots_skipped = 0

    def _push(self, due: float, idx: int, channel: str) -> None:
        self._n += 1
        heapq.heappush(self._heap, (due, self._n, idx, channel))

    def start(self, t0: float) -> list[Output]:
        """Boot: every device announces itself online (retained) and its first ticks are scheduled."""
        out: list[Output] = []
        for idx, st in enumerate(self.states):
            # Spread first readings over one period so the load is even, not a thundering herd.
            phase = models.device_rng(self.city.scenario.seed, f"phase:{st.dev.id}")
            spread = self.intervals[st.dev.kind]
            if self.options.first_report_within_s is not None:
                spread = min(spread, self.options.first_report_within_s)
            self._push(t0 + phase.random() * spread, idx, "telemetry")
            if st.dev.kind == "camera" and self.options.snapshots:
                self._push(t0 + phase.random() * self.snapshot_s, idx, "snapshot")
            out.append(self._status(st, t0, "online", "boot"))
            # Alarms are event-driven on a real site controller (mains loss and return are reported when they
            # happen, not at the next telemetry report), and a connection drops when it drops.
            for e in st.effects:
                if e.kind in ("power_outage", "device_silent"):
                    for t in (e.start, e.end):
                        if t >= t0:
                            self._push(t, idx, "alarm")
        return out

    def next_due(self) -> float:
        """Simulated time of the next tick (``inf`` if none)."""
        return self._heap[0][0] if self._heap else float("inf")

    def advance(self, now: float, shed_snapshots: bool | Callable[[float], bool] = False) -> Iterator[Output]:
        """Yield everything due up to ``now``. Safe to abandon between items (state is updated first).

        ``shed_snapshots`` (a flag, or a predicate of the snapshot's due time) drops snapshots, which cost
        a hundred times more than a reading to make, when the generator cannot keep up.
        """
        while self._heap and self._heap[0][0] <= now:
            due, _, idx, channel = heapq.heappop(self._heap)
            st = self.states[idx]
            if channel == "snapshot":
                self._push(due + self.snapshot_s, idx, channel)
                if shed_snapshots(due) if callable(shed_snapshots) else shed_snapshots:
                    self.snapshots_skipped += 1
                    continue
                msg = self._snapshot(st, due)
                if msg:
                    yield msg
                continue
            if channel == "alarm":
                yield from self._alarm(st, due)
                continue
            self._push(due + self.intervals[st.dev.kind], idx, channel)
            yield from self._tick(st, due)

    def stop(self, t: float) -> list[Output]:
        """End of run: devices still connected say they go offline (so screens do not show stale 'online')."""
        if not self.options.offline_on_exit:
            return []
        return [self._status(st, t, "offline", "simulator stopped") for st in self.states if not st.down]

    # -- messages ---------------------------------------------------------------------------------

    def _ts(self, t: float) -> int | str:
        return round(t * 1000) if self.options.ts_format == "ms" else iso_utc(t)

    def _status(self, st: _State, t: float, state: str, reason: str) -> Message:
        body = orjson.dumps({"ts": iso_utc(t), "state": state, "reason": reason})
        return Message(st.dev.id, "status", st.topics["status"], body, retain=True)

    def _event(self, st: _State, t: float, etype: str, severity: str, detail: dict[str, Any]) -> Message:
        body = orjson.dumps({"ts": iso_utc(t), "type": etype, "severity": severity, "detail": detail})
        return Message(st.dev.id, "event", st.topics["event"], body)

    def _down(self, st: _State, t: float, reason: str) -> list[Output]:
        st.down = True
        if self.options.wills:
            return [Control(st.dev.id, "kill")]  # the broker publishes the will: offline, connection lost
        return [self._status(st, t, "offline", reason)]

    def _up(self, st: _State, t: float, reason: str) -> list[Output]:
        st.down = False
        st.since_boot = 0
        out: list[Output] = [Control(st.dev.id, "revive")] if self.options.wills else []
        out.append(self._status(st, t, "online", reason))
        return out

    def _tick(self, st: _State, t: float) -> list[Output]:
        dev = st.dev
        out: list[Output] = []
        events: list[Message] = []
        active = [e for e in st.effects if e.start <= t < e.end]
        alive = True
        power = None
        if dev.kind == "bts":
            power = st.model.power(t, st.effects)
            alive = power.alive
        if not alive and not st.dead:
            st.dead = True
            if not st.down:
                out += self._down(st, t, "battery exhausted")
        elif alive and st.dead:
            st.dead = False
            if not st.silent:
                out += self._up(st, t, "power restored")
        out += self._silence(st, t, active)
        if st.dead:
            return out
        if power is not None:
            # Tracked only while alive, so a site that died on battery reports the restoration after booting.
            events = self._power_events(st, t, power)
            out += self._degraded_status(st, t, active)
        st.seq += 1
        if st.silent:
            self.lost += 1 + len(events)
            return out
        out += events
        metrics = st.model.sample(t, st.effects, power) if power else st.model.sample(t, st.effects)
        doc: dict[str, Any] = {"ts": self._ts(t), "seq": st.seq, "metrics": metrics}
        st.since_boot += 1
        if st.since_boot == 1 or st.seq % self.options.position_every == 0:
            doc["lat"], doc["lon"] = dev.lat, dev.lon
        out.append(Message(dev.id, "telemetry", st.topics["telemetry"], orjson.dumps(doc), values=len(metrics)))
        return out

    def _silence(self, st: _State, t: float, active: list[Effect]) -> list[Output]:
        """A device going quiet (and maybe dropping its connection) or coming back."""
        silent = next((e for e in active if e.kind == "device_silent"), None)
        if silent and not st.silent:
            st.silent = True
            if silent.params.get("disconnect") and not st.down:
                return self._down(st, t, "connection lost")
        elif not silent and st.silent:
            st.silent = False
            if st.down and not st.dead:
                return self._up(st, t, "reconnected")
        return []

    def _alarm(self, st: _State, t: float) -> list[Output]:
        """What happens at an incident's own instant, not at the next report: a site's power changing (a dead,
        silent or disconnected site says nothing), a device dropping its connection or coming back."""
        out = self._silence(st, t, [e for e in st.effects if e.start <= t < e.end])
        if st.dev.kind == "bts" and not (st.dead or st.silent or st.down):
            out += self._power_events(st, t, st.model.power(t, st.effects))
        return out

    def _power_events(self, st: _State, t: float, power: signals.PowerState) -> list[Message]:
        events: list[Message] = []
        detail = {"site": st.dev.site, "battery_pct": round(power.battery_pct, 1)}
        if power.mains != st.mains:
            if power.mains:
                events.append(self._event(st, t, "mains_power_restored", "info", detail))
            else:
                events.append(self._event(st, t, "mains_power_lost", "major", detail))
        st.mains = power.mains
        if not power.mains and power.battery_pct < 20 and not st.low_sent and power.alive:
            st.low_sent = True
            events.append(self._event(st, t, "battery_low", "critical", detail))
        elif power.mains:
            st.low_sent = False
        return events

    def _degraded_status(self, st: _State, t: float, active: list[Effect]) -> list[Output]:
        reported = any(e.kind == "bts_degradation" and e.params.get("report_status") for e in active)
        if reported != st.degraded and not st.silent:
            st.degraded = reported
            return [self._status(st, t, "degraded" if reported else "online",
                                 "high drop call rate" if reported else "recovered")]
        return []

    def _snapshot(self, st: _State, t: float) -> Message | None:
        if st.dead or st.silent or st.down:
            return None
        dev = st.dev
        sc = self.city.scenario
        if st.renderer is None:
            st.renderer = SceneRenderer(dev.id, sc.seed, sc.snapshot_width, sc.snapshot_height, dev.lanes or 2,
                                        sc.jpeg_quality)
        hour, weekday, _ = signals.local_time(t, self.city.utc_offset_hours)
        local = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t + self.city.utc_offset_hours * 3600))
        density = signals.traffic_demand(hour, weekday) if dev.road else 0.25 * signals.daylight(hour)
        jpeg = st.renderer.snapshot(t, local, signals.daylight(hour), density, models.camera_jam(st.effects, t),
                                    models.fault_mode(st.effects, t))
        return Message(dev.id, "snapshot", st.topics["snapshot"], jpeg)
