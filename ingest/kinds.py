"""A device's kind is fixed once known: a message claiming another kind for a known device is quarantined.

The kind of a message comes from its topic (``ioc/v1/<kind>/<id>/<channel>``), so one id could otherwise be a
camera, then a BTS, then a traffic sensor: its data fed the wrong kind's detectors and rules, the wall showed it
under one kind, and a spoofing or misconfigured device polluted another device's history. The registry
(``devices.kind``, see :mod:`storage.kinds`) fixes it:

* every process that parses messages (ingest workers, the API's live listener, the brain) holds the registry's
  kinds in memory, loaded from the database at start, and refuses a message of a known device under another kind
  before any sink sees it: reason ``kind_conflict``, one dictionary lookup per message (all the records of a
  message share the topic's device and kind);
* a device this process has not seen in the registry is accepted under the kind it first comes with here
  (provisional); a message of it under another kind is kept from the sinks, its records held. An ingest worker
  claims the device's kind in the registry inside the transaction that stores the rows, and the database decides
  between two workers (or two messages) that claimed one new id under two kinds: at each commit every message is
  held to the registry's kind (one lookup per message), the loser's records go to the quarantine, held records of
  the winning kind are stored after all (the live screens and detectors of that process missed them). The
  processes that only follow the broker read the registry's kinds of their provisional devices every
  :data:`RECHECK_S` seconds;
* a refused device is read again from the registry at the next round too: an administrator who changed its kind
  there (``ioc devices set-kind``) is followed within :data:`RECHECK_S` seconds; a device deleted from the
  registry is new again.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import orjson

from ingest.contract import topic_for
from ingest.records import DeviceEvent, ParsedMessage, Reading, Reason, Record, Rejection, Snapshot, StatusUpdate
from storage.kinds import device_kinds

logger = logging.getLogger(__name__)

#: How often provisional and refused devices are read again from the registry.
RECHECK_S = 5.0
#: Devices read again per round at most (a flood of new or refused ids costs one bounded query per round).
RECHECK_MAX = 5_000
#: Provisional devices held at most: beyond it they are forgotten (each comes again as new, the ingest's claim
#: still decides). The registry's kinds are held whole: one entry per row of ``devices``.
MAX_PROVISIONAL = 200_000


class DeviceKinds:
    """The registry's kinds in memory, with the devices seen first here and those refused since the last round."""

    def __init__(self) -> None:
        self.known: dict[str, str] = {}  # the registry's (the database's) kinds
        self.provisional: dict[str, str] = {}  # first seen here under this kind, not (yet) read from the registry
        self.recheck: set[str] = set()  # refused since the last round: read again (an administrator's change)
        self.loaded = False

    def kind_of(self, device_id: str) -> str | None:
        """The kind this process holds for ``device_id`` (the registry's, else the one it was first seen with)."""
        return self.known.get(device_id) or self.provisional.get(device_id)

    def check(self, parsed: ParsedMessage, topic: str, received_at: datetime, payload: bytes) -> ParsedMessage:
        """Refuse (in place) a message whose device is known under another kind: its records become one
        ``kind_conflict`` rejection carrying the whole payload. A new device is taken under the message's kind; a
        message of it under another kind is kept from the sinks too, its records held for the registry's decision
        at the ingest's commit (:meth:`settle`)."""
        if not parsed.records:
            return parsed
        first = parsed.records[0]
        device_id, kind = first.device_id, first.kind
        fixed = self.known.get(device_id)
        if fixed is None:
            fixed = self.provisional.get(device_id)
            if fixed is None:
                if len(self.provisional) >= MAX_PROVISIONAL:
                    self.provisional.clear()
                self.provisional[device_id] = kind
                return parsed
            if fixed != kind:
                self._refuse(parsed, fixed, topic, received_at, payload, hold=True)
        elif fixed != kind:
            self._refuse(parsed, fixed, topic, received_at, payload)
        return parsed

    def _refuse(self, parsed: ParsedMessage, fixed: str, topic: str, received_at: datetime, payload: bytes,
                hold: bool = False) -> None:
        first = parsed.records[0]
        if len(self.recheck) < RECHECK_MAX:
            self.recheck.add(first.device_id)
        parsed.rejections.append(Rejection(topic, received_at, Reason.KIND_CONFLICT,
                                           _detail(first.device_id, fixed, first.kind), payload,
                                           held=parsed.records if hold else None))
        parsed.records = []

    # --- the ingest's commit: the registry decides -------------------------------------------------------------

    def claims(self, messages: Iterable[tuple[datetime, ParsedMessage]]) -> dict[str, tuple[str, datetime]]:
        """Devices of these messages not known from the registry: device id -> (kind, first received). The first
        message of a device names the kind claimed (a later one of another kind is held, see :meth:`check`)."""
        out: dict[str, tuple[str, datetime]] = {}
        known = self.known
        for received_at, parsed in messages:
            records = parsed.records or _held(parsed)
            if records:
                device_id = records[0].device_id
                if device_id not in known and device_id not in out:
                    out[device_id] = (records[0].kind, received_at)
        return out

    def settle(self, messages: Iterable[tuple[str, datetime, ParsedMessage]], claimed: Mapping[str, str]) -> int:
        """Hold the messages ``(channel, received at, parsed)`` to the registry's kinds (``claimed`` at this commit,
        else those known): refuse (in place) those of a device it holds under another kind, store the held records
        of a new device after all if it gave the device their kind. Returns how many were refused here (counted
        now: the held ones were not counted on arrival). A refused message's payload is rebuilt from its records
        (the raw bytes are not kept)."""
        refused = 0
        known = self.known
        for channel, received_at, parsed in messages:
            if parsed.records:
                first = parsed.records[0]
                fixed = claimed.get(first.device_id) or known.get(first.device_id)
                if fixed is not None and fixed != first.kind:
                    self._refuse(parsed, fixed, topic_for(first.kind, first.device_id, channel), received_at,
                                 record_payload(parsed.records))
                    refused += 1
            for rej in parsed.rejections:
                if rej.held is None:
                    continue
                first = rej.held[0]
                fixed = claimed.get(first.device_id) or known.get(first.device_id)
                if fixed == first.kind:  # the registry gave the device this message's kind: stored after all
                    parsed.records = rej.held
                    parsed.rejections.remove(rej)
                else:
                    rej.held = None
                    rej.detail = _detail(first.device_id, fixed or "(not registered)", first.kind)
                    refused += 1
                break  # one held rejection per message at most
        return refused

    def learn(self, registry: Mapping[str, str]) -> None:
        """Take the registry's kinds (read, or claimed by a commit that succeeded)."""
        self.known.update(registry)
        for device_id in registry:
            self.provisional.pop(device_id, None)

    # --- the registry read again ------------------------------------------------------------------------------

    async def load(self, conn: Any) -> None:
        """Every kind of the registry (at start)."""
        self.known = await device_kinds(conn)
        self.provisional = {d: k for d, k in self.provisional.items() if d not in self.known}
        self.loaded = True

    async def refresh(self, conn: Any) -> None:
        """Read again the devices refused since the last round and the provisional ones (bounded)."""
        recheck = list(self.recheck)[:RECHECK_MAX]
        ids = recheck + [d for d in list(self.provisional)[:RECHECK_MAX] if d not in self.recheck]
        if not ids:
            return
        registry = await device_kinds(conn, ids)
        for device_id in recheck:
            self.recheck.discard(device_id)
            if device_id not in registry and device_id in self.known:
                del self.known[device_id]  # deleted from the registry: new again
        self.learn(registry)

    async def run(self, pool: Any, every_s: float = RECHECK_S) -> None:
        """Load the registry's kinds (until it answers), then read again what needs it every ``every_s``."""
        while True:
            try:
                async with pool.acquire(timeout=10) as conn:
                    if self.loaded:
                        await self.refresh(conn)
                    else:
                        await self.load(conn)
            except asyncio.CancelledError:
                raise
            except Exception as err:  # the kinds held go on being used; the next round tries again
                logger.warning("device kinds not read from the registry (%s); retrying", err)
            await asyncio.sleep(every_s)


def _detail(device_id: str, fixed: str, kind: str) -> str:
    return (f"kind_conflict: device {device_id!r} is a {fixed}, the message says {kind} (a device's kind is fixed in "
            "the registry; docs/device-api.md says how to change it)")


def _held(parsed: ParsedMessage) -> list[Record] | None:
    for rej in parsed.rejections:
        if rej.held is not None:
            return rej.held
    return None


def record_payload(records: list[Record]) -> bytes:
    """A stand-in for a message's payload rebuilt from its records (a snapshot: its JPEG)."""
    if len(records) == 1 and isinstance(records[0], Snapshot):
        return records[0].jpeg
    docs = [_doc(rec) for rec in records]
    return orjson.dumps(docs[0] if len(docs) == 1 else docs)


def _doc(rec: Record) -> dict[str, Any]:
    if isinstance(rec, Reading):
        doc: dict[str, Any] = {"ts": rec.ts, "metrics": rec.metrics}
        if rec.seq is not None:
            doc["seq"] = rec.seq
        if rec.lat is not None:
            doc["lat"], doc["lon"] = rec.lat, rec.lon
        return doc
    if isinstance(rec, StatusUpdate):
        return {"ts": rec.ts, "state": rec.state, "reason": rec.reason}
    if isinstance(rec, DeviceEvent):
        detail = rec.detail if rec.stored_detail is None else orjson.Fragment(rec.stored_detail)  # whole, not the view
        return {"ts": rec.ts, "type": rec.type, "severity": rec.severity, "detail": detail}
    return {"ts": rec.ts, "snapshot_bytes": len(rec.jpeg)}
