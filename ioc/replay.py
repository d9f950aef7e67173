"""The live chain in one thread, in simulated time: parse -> live hub -> analytics -> alert engine.

Used where hours of device traffic must be judged in minutes (the alert evaluation in ``benchmarks/``,
the detectors' warm-up before a demo): messages are fed with the time they would have arrived at, and
``advance`` runs the same stage code the service runs on its timers (analytics flush every second,
silence checks every 30 s, alert ticks every second), with that simulated time as the clock. Nothing is
stored or sent: no database, no broker, no notifications; the engine's changes are returned instead.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from ingest.parse import parse_message
from ingest.records import ParsedMessage
from ioc.alerts.config import AlertsConfig
from ioc.alerts.model import Changes
from ioc.alerts.stage import AlertStage
from ioc.analytics_stage import AnalyticsStage
from ioc.geo import City
from ioc.live.hub import LiveHub

logger = logging.getLogger(__name__)


class Replay:
    """Feed (topic, payload, time) messages and advance the clock; collect the alert engine's changes.

    Args:
        city: district outlines, as the service loads them (``ioc.geo.City``).
        alerts: alert settings (``AlertsConfig()`` by default); set ``replay.engine.policies`` and
            ``shifts`` to page.
        flush_s, silence_every_s, tick_s: the service's cadences, in simulated seconds.
    """

    def __init__(self, city: City, alerts: AlertsConfig | None = None, flush_s: float = 1.0,
                 silence_every_s: float = 10.0, tick_s: float = 1.0) -> None:
        self.hub = LiveHub(city.district_of, ring_size=100, client_capacity=10)
        self.analytics = AnalyticsStage(self.hub, None, camera_processes=0)
        self.alerts = AlertStage(self.hub, None, city, alerts or AlertsConfig())
        self.analytics.on_findings, self.analytics.on_health = self.alerts.on_findings, self.alerts.on_health
        self.alerts.loaded = True
        self._arrival = datetime.fromtimestamp(0, UTC)
        self.alerts.clock = lambda: self._arrival  # arrivals happen in simulated time too
        self.engine = self.alerts.engine
        self.flush_s, self.silence_every_s, self.tick_s = flush_s, silence_every_s, tick_s
        self.now: float | None = None
        self._next_flush = self._next_silence = self._next_tick = 0.0
        self.rejected = 0

    def feed(self, topic: str, payload: bytes, at: float, retained: bool = False) -> None:
        """One message as the ingest would have received it at ``at`` (epoch seconds)."""
        when = datetime.fromtimestamp(at, UTC)
        self.feed_parsed(parse_message(topic, payload, when, retained), when)

    def feed_parsed(self, parsed: ParsedMessage, received_at: datetime) -> None:
        """A message already parsed (by a caller that also stores it), received at ``received_at``."""
        self._arrival = received_at
        self.rejected += len(parsed.rejections)
        self.hub.on_parsed(parsed)
        self.analytics.on_parsed(parsed)
        self.alerts.on_parsed(parsed)

    def advance(self, to: float) -> Changes:
        """Run every timer due up to ``to`` (epoch seconds), in order; returns what the engine changed."""
        out = Changes()
        if self.now is None:
            self._next_flush, self._next_silence, self._next_tick = to, to + self.silence_every_s, to
        while True:
            due = min(self._next_flush, self._next_silence, self._next_tick)
            if due > to:
                break
            when = datetime.fromtimestamp(due, UTC)
            if due == self._next_flush or due == self._next_silence:
                silence = due == self._next_silence
                self.analytics.step(when, silence=silence)
                if due == self._next_flush:
                    self._next_flush += self.flush_s
                if silence:
                    self._next_silence += self.silence_every_s
            if due == self._next_tick:
                out.merge(self.alerts.step(when, store=False))
                self._next_tick += self.tick_s
        self.now = to
        return out
