"""Exactly-once learning over the at-least-once reading stream: a partition's position is saved with its state.

JetStream delivers a message again until it is acknowledged, and a worker may stop anywhere: after its
detectors ran over a batch but before the batch's findings or acks went through (a lost database connection,
NATS gone), or killed before its periodic save. The acknowledgements cannot say what the saved state has
learned (they come before the saves: devices are saved in two tiers, analytics/numeric/save_tiers.py), so the
position is kept in the database, in the fenced transaction of every save (``analytics_state`` row
``position:<scope>``):

* ``floor``: every message of the partition at or below this stream sequence is in every device's saved row;
* ``saved``: per device saved beyond the floor, the last message its row has learned.

The next owner (or this one after a failure) restores the rows and the position, has the partition's
consumer start again right after the floor if its acks went past it (or messages were in flight), and
learns a reading of device ``d`` in message ``s`` only if ``s`` is beyond both the floor and ``saved[d]``.
A reading is thus learned once whatever failed where; what was learned but not saved is learned again
from the stream (kept ``max_age_s``), not lost. Findings raised again by such a replay are stored once
(``findings_once``) and only those stored now go on to the brain (:func:`store_findings`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

import orjson

from storage.writes import FindingRow


def position_name(scope: str) -> str:
    """The ``analytics_state`` row of the position of the devices saved under ``scope``."""
    return f"position:{scope}"


class Position:
    """What a partition's saved state has learned, and what this process applied since (stream sequences).

    ``legacy``: rows saved by a version without positions; the consumer's acknowledgements are the position
    until the first save here.
    """

    def __init__(self, floor: int = 0, saved: dict[str, int] | None = None, legacy: bool = False) -> None:
        self.floor, self.saved, self.legacy = floor, saved or {}, legacy
        self.hi = floor  # the last message applied by this process (a redelivery at or below it is skipped)
        self.unsaved: dict[str, int] = {}  # device -> first message applied to it since its last save
        self._top = max(self.saved.values(), default=floor)  # beyond it every reading is learned

    @classmethod
    def load(cls, doc: bytes | None, has_rows: bool) -> Position:
        if doc is None:
            return cls(legacy=has_rows)
        data = orjson.loads(doc)
        return cls(int(data["floor"]), {str(d): int(s) for d, s in data["saved"].items()})

    def forget(self) -> None:
        """The saved position is of another stream (made again since: its sequences start over): unusable."""
        self.floor, self.saved, self.hi, self._top, self.unsaved, self.legacy = 0, {}, 0, 0, {}, True

    def beyond(self, last_seq: int) -> bool:
        """Whether the position names messages past the stream's last one (a stream made again)."""
        return max(self._top, self.hi) > last_seq

    def learns_all(self, seq: int) -> bool:
        """Whether every reading of message ``seq`` is new to the saved state."""
        return seq > self._top

    def learns(self, device_id: str, seq: int) -> bool:
        """Whether the reading of ``device_id`` in message ``seq`` is not in the saved state yet."""
        return seq > self._top or seq > max(self.floor, self.saved.get(device_id, 0))

    def fresh(self, seq: int) -> bool:
        """Whether message ``seq`` was not applied by this process yet."""
        return seq > self.hi

    def applied(self, first: int, last: int, devices: Iterable[str]) -> None:
        """Messages ``first``..``last`` applied; ``devices`` learned from them."""
        for d in devices:
            self.unsaved.setdefault(d, first)
        self.hi = max(self.hi, last)

    def save(self, taken: Iterable[str], still_dirty: Callable[[str], bool]
             ) -> tuple[bytes | None, Callable[[], None]]:
        """The position to write with a save of the devices ``taken`` (all they applied, up to ``hi``; None when
        it does not move), and what to apply once that transaction committed. ``still_dirty``: whether a device
        keeps unsaved learning."""
        taken = set(taken)
        unsaved = {d: s for d, s in self.unsaved.items() if d not in taken and still_dirty(d)}
        floor = min(unsaved.values()) - 1 if unsaved else self.hi
        saved = {d: s for d, s in self.saved.items() if s > floor}
        if self.hi > floor:
            saved.update((d, self.hi) for d in taken)
        moved = bool(taken) or self.legacy or floor != self.floor or saved != self.saved
        doc = orjson.dumps({"floor": floor, "saved": saved}) if moved else None

        def done() -> None:
            self.floor, self.saved, self.unsaved, self.legacy = floor, saved, unsaved, False
            self._top = max(saved.values(), default=floor)

        return doc, done


def start_config(position: Position, info: Any | None, ack_wait_s: float) -> tuple[bool, Any]:
    """Whether the partition's durable consumer (``info``: its ``consumer_info``, None if missing) must be made
    again, and the config to make it with: starting right after the saved floor. Its acks went past the floor
    (learned, acknowledged, not saved: a worker killed before its save), or messages are still in flight to a
    previous owner (they would come back after the ack wait, behind newer ones)."""
    from nats.js.api import ConsumerConfig, DeliverPolicy

    config = ConsumerConfig(ack_wait=ack_wait_s)
    if position.legacy:
        return False, config
    if position.floor:
        config = ConsumerConfig(ack_wait=ack_wait_s, deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                opt_start_seq=position.floor + 1)
    stale = info is not None and bool(info.num_ack_pending or (info.ack_floor and
                                                               info.ack_floor.stream_seq > position.floor))
    return stale, config


_NEW_FINDINGS = (
    "INSERT INTO findings (ts, device_id, series, type, score, explanation, detail) "
    "SELECT t, d, s, ty, sc, e, x::jsonb FROM unnest($1::timestamptz[], $2::text[], $3::text[], $4::text[], "
    "$5::float8[], $6::text[], $7::text[]) AS u(t, d, s, ty, sc, e, x) ON CONFLICT DO NOTHING "
    "RETURNING ts, device_id, series, type")


FindingKey = tuple[int, str, str, str]


def finding_key(ts: datetime, device_id: str, series: str, ftype: str) -> FindingKey:
    """A finding's identity (``findings_once``), its time in microseconds as PostgreSQL keeps it."""
    return round(ts.timestamp() * 1e6), device_id, series, ftype


async def store_findings(conn: Any, rows: list[FindingRow]) -> set[FindingKey]:
    """Store findings once (``findings_once``); returns the keys of those stored now: a finding raised again by
    a replay is neither stored nor sent a second time."""
    if not rows:
        return set()
    columns = [list(col) for col in zip(*rows, strict=True)]
    return {finding_key(r["ts"], r["device_id"], r["series"], r["type"])
            for r in await conn.fetch(_NEW_FINDINGS, *columns)}
