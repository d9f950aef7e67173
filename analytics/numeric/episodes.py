"""The group rules' episode memory, saved beside the per-device state so a restart does not repeat a finding.

``DomainRules.group_active`` holds the (group, kind) episodes already reported ("BTS of a district failing
together"): a group spans devices, so it is not part of any device's bytes (device_state.py) but one small
row per monitor (the brain's, or a partition's), ``analytics_state`` under :func:`state_name`. A saver asks
:func:`pending` for it when an episode started or ended since its last write, writes it in the same fenced
transaction as the devices (a partition worker also with the findings that started it) and then calls
:func:`done`. Restored by :func:`restore` after the devices. Format: JSON ``{"v": 1, "groups": [[name,
kind], ...]}``; groups by name, since table indices differ between processes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from analytics.numeric.monitor import NumericMonitor
from analytics.numeric.rules import DomainRules
from analytics.numeric.table import KIND_CODES

logger = logging.getLogger(__name__)

VERSION = 1
MAX_BYTES = 1 << 20  # a province has tens of districts; anything far larger is not ours


def state_name(scope: str) -> str:
    """The ``analytics_state`` row of a monitor whose devices are saved under ``scope`` in ``series_state``."""
    return f"episodes:{scope}"


@dataclass(frozen=True, slots=True)
class Pending:
    """Episode memory to write: its bytes and the change count they include."""

    rules: DomainRules
    changes: int
    data: bytes


def encode(mon: NumericMonitor) -> bytes:
    """The monitor's reported group episodes as bytes."""
    names = {g: name for name, g in mon.table.group_idx.items()}
    groups = sorted([names[g], kind] for g, kind in mon.rules.group_active if g in names)
    return json.dumps({"v": VERSION, "groups": groups}, separators=(",", ":")).encode()


def pending(mon: NumericMonitor) -> Pending | None:
    """The episode memory if an episode started or ended since the last :func:`done` (call under the
    monitor's lock: it reads the rules' sets)."""
    rules = mon.rules
    if rules.group_changes == rules.group_saved:
        return None
    return Pending(rules, rules.group_changes, encode(mon))


def done(p: Pending) -> None:
    """``p`` is committed: nothing to write until the next change."""
    p.rules.group_saved = max(p.rules.group_saved, p.changes)


def restore(mon: NumericMonitor, data: bytes | None) -> int:
    """Mark the saved group episodes as reported in ``mon`` (after its devices are restored); returns how
    many. Bytes this version cannot read are skipped with a warning: an ongoing episode is then reported
    once more, as before this memory was saved."""
    if not data:
        return 0
    try:
        if len(data) > MAX_BYTES:
            raise ValueError(f"{len(data)} bytes")
        doc = json.loads(data)
        if not isinstance(doc, dict) or doc.get("v") != VERSION or not isinstance(doc.get("groups"), list):
            raise ValueError("unknown format")
        items = [(str(name), str(kind)) for name, kind in doc["groups"]]
    except (ValueError, TypeError, UnicodeDecodeError) as err:
        logger.warning("group episodes not restored (%s); an ongoing one is reported again", err)
        return 0
    table, rules = mon.table, mon.rules
    n = 0
    for name, kind in items:
        if kind in KIND_CODES and name:
            rules.group_active.add((table.group_idx.setdefault(name, len(table.group_idx)), kind))
            n += 1
    rules.group_saved = rules.group_changes  # what is in memory is what is saved
    return n
