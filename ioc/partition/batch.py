"""One batch of stream messages through a partition's detectors (run in a worker thread, off the event loop that
renews the leases: 256 messages of 600 readings decoded on the loop kept a 2 s lease from being renewed).

Only what the partition's saved state and this process have not learned yet is analysed
(:class:`ioc.partition.replay.Position`); what is not readings is set apart with its reason.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from analytics.findings import Finding
from analytics.numeric.monitor import NumericMonitor
from ioc.analytics_isolation import Isolation, ingest_apart
from ioc.partition.replay import Position
from ioc.partition.stream import decode_message

logger = logging.getLogger(__name__)

#: A set-aside message's text is cut here (its size is kept).
SET_ASIDE_BYTES = 64 * 1024

Aside = tuple[str, str, int, dict[str, Any]]  # what, why, deliveries, the refused payload


@dataclass(slots=True)
class Analysed:
    """What a batch taught the detectors and what it raised."""

    found: list[Finding] = field(default_factory=list)
    failed: dict[str, int] = field(default_factory=dict)  # devices whose readings made the detectors raise
    aside: list[Aside] = field(default_factory=list)
    poison: set[int] = field(default_factory=set)  # ids of messages that are no readings at all: terminated
    learned: int = 0  # readings analysed
    read: int = 0  # readings in the messages, those learned before included
    devices: set[str] = field(default_factory=set)  # devices that learned
    first: int = 0  # stream sequences of the messages applied
    last: int = 0


def _meta(m: Any) -> tuple[int, int]:
    """A message's stream sequence and delivery count (0, 1 without JetStream metadata: not expected)."""
    try:
        meta = m.metadata
        return int(meta.sequence.stream), int(meta.num_delivered)
    except Exception:
        return 0, 1


def analyse(p: int, msgs: list[Any], monitor: NumericMonitor, known: dict[str, str], position: Position,
            isolation: Isolation) -> Analysed:
    """Decode ``msgs`` and run the detectors over what is new (``known``: device -> the district it was declared
    with). Never raises: raising left the batch unacknowledged, redelivered after the ack wait and raising again,
    the partition's consumer restarting for ever."""
    out = Analysed()
    rows: list[Any] = []
    for m in msgs:
        seq, attempts = _meta(m)
        if seq and not position.fresh(seq):
            continue  # applied by this process already (delivered again after the ack wait)
        out.first, out.last = out.first or seq, max(out.last, seq)
        decoded = decode_message(m.data)
        out.read += len(decoded.rows)
        if not seq or position.learns_all(seq):
            rows += decoded.rows
        else:  # a replay: some devices' saved rows have learned this message already
            rows += [r for r in decoded.rows if position.learns(r.device_id, seq)]
        if decoded.reason is None:
            continue
        where = f"{m.subject} #{seq}" if seq else str(m.subject)
        doc: dict[str, Any] = {"subject": m.subject, "size": len(m.data)}
        if decoded.rows or decoded.refused:
            doc["refused"] = decoded.refused[:100]
            doc["refused_count"] = len(decoded.refused)
        else:
            out.poison.add(id(m))
            doc["data"] = m.data[:SET_ASIDE_BYTES].decode("utf-8", "replace")
        out.aside.append((where, decoded.reason, attempts, doc))
        logger.warning("partition %d: stream message %s set apart: %s", p, where, decoded.reason[:200])
    for r in rows:
        # again when its district becomes known (a device first placed by its own id may hash to its district's
        # partition): else it never joined its district's group here
        if known.get(r.device_id) != r.district and (r.district or r.device_id not in known):
            known[r.device_id] = r.district
            monitor.set_device(r.device_id, r.kind, r.district)
    # a device whose readings make the detectors raise is set apart (else the whole partition was stuck)
    out.found, out.failed = ingest_apart(monitor.ingest, [(r.device_id, r.metric, r.ts, r.value) for r in rows],
                                         isolation)
    out.learned = len(rows)
    out.devices = {r.device_id for r in rows} - set(out.failed)
    return out
