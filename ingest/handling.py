"""One MQTT message through the parser to its sinks, whatever it holds: the structural catch-all of ingest.

Shared by the ingest workers (which store and quarantine), the live listener and the brain (which only follow
the broker).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

import paho.mqtt.client as mqtt

from ingest import metrics as m
from ingest.device_rate import DeviceRate
from ingest.guard import MetricNameGuard
from ingest.kinds import DeviceKinds
from ingest.parse import internal_error, parse_message
from ingest.records import ParsedMessage

logger = logging.getLogger("ingest.worker")  # the name the operators' log filters know
errors = m.RateLimitedLog(logger)

ParsedSink = Callable[[ParsedMessage], None]


def handle_message(message: mqtt.MQTTMessage, received_at: datetime, guard: MetricNameGuard,
                   sinks: tuple[ParsedSink, ...], stores: bool = True,
                   kinds: DeviceKinds | None = None, rate: DeviceRate | None = None) -> ParsedMessage:
    """Parse one MQTT message and hand it to the sinks; never raises.

    The structural rule of ingest: whatever raises while handling one message (parsing, the caps, any
    sink: live hub, analytics, alerts) adds an ``internal_error`` rejection with the exception text to
    that message, so it lands in the quarantine, and the session goes on. Records that parsed are still
    stored: a sink's failure does not cost the data. ``stores`` is False for processes that only follow the
    broker (live listener, brain): they count nothing as quarantined, the ingest workers do. ``kinds`` refuses a
    message of a known device under another kind (:mod:`ingest.kinds`) before the caps and the sinks. ``rate``
    quarantines, unparsed, a message its device cannot pay for (:mod:`ingest.device_rate`).
    """
    topic, payload = "(topic not decoded)", b""
    try:
        topic = message._topic.decode("utf-8", "replace")
        payload = message.payload if isinstance(message.payload, bytes) else bytes(message.payload)
        # Over its device's rate: quarantined unparsed; the sinks are still told (a stage's acks count every message).
        over = rate.check(topic, payload, received_at) if rate is not None else None
        if over is not None:
            parsed = over
        else:
            parsed = parse_message(topic, payload, received_at, retained=bool(message.retain))
            if kinds is not None:  # before the caps: a refused message adds no metric name to the device's
                parsed = kinds.check(parsed, topic, received_at, payload)
            parsed = guard.apply(parsed, topic)
    except Exception as err:
        m.HANDLER_ERRORS.labels("parse").inc()
        errors.log("handling a message on %r raised; quarantined as internal_error", topic[:200])
        parsed = internal_error(topic, payload, received_at, "parsing", err)
    if stores:
        for rej in parsed.rejections:
            if rej.held is None:  # held records are counted once the registry decided (ingest/kinds.py)
                m.quarantined(rej.reason.value).inc()
    for sink in sinks:
        try:
            sink(parsed)
        except Exception as err:  # a consumer's bug must never stop ingest, and the message says so
            m.HANDLER_ERRORS.labels("sink").inc()
            if stores:
                m.quarantined("internal_error").inc()
            errors.log("ingest sink %r raised on a message on %r; quarantined as internal_error",
                       getattr(sink, "__qualname__", sink), topic[:200])
            where = f"sink {getattr(sink, '__qualname__', type(sink).__name__)}"
            parsed.rejections.extend(internal_error(topic, payload, received_at, where, err).rejections)
    return parsed
