"""Device liveness: which devices stopped talking, judged by arrival times on the service's clock.

A device is silent when nothing from it (telemetry, snapshot, event) has arrived for ``factor`` of its
usual gap between messages, and at least ``min_s``. The usual gap is learned per device from the gaps
themselves (an exponential mean that ignores outage-sized gaps), so a camera sending a snapshot every
10 s is missed after ~1.5 minutes and a BTS reporting every minute after ~3.5 minutes, with no
configuration per device. Devices that said they are offline are the offline rule's business, not
this one's. Arrival times, not device timestamps: a device with a wrong clock is not silent.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime


@dataclass(slots=True)
class _Device:
    last: datetime
    gap: float = 0.0  # learned usual gap, seconds
    n: int = 0  # gaps learned
    offline: bool = False
    silent: bool = False


class Liveness:
    """Per-device arrival bookkeeping; pure (the caller passes the clock)."""

    def __init__(self, factor: float = 3.5, min_s: float = 90.0, min_gaps: int = 3) -> None:
        self.factor, self.min_s, self.min_gaps = factor, min_s, min_gaps
        self.devices: dict[str, _Device] = {}

    def arrived(self, device_id: str, at: datetime) -> bool:
        """Something arrived from the device at ``at``; True when that ends a reported silence."""
        d = self.devices.get(device_id)
        if d is None:
            self.devices[device_id] = _Device(at)
            return False
        gap = (at - d.last).total_seconds()
        if gap > 0:
            # learn from ordinary gaps only, so one outage does not teach the device to be slow
            if d.n < self.min_gaps or gap < 3.0 * d.gap:
                d.gap = gap if d.n == 0 else 0.8 * d.gap + 0.2 * gap
                d.n += 1
            d.last = at
        d.offline = False
        ended, d.silent = d.silent, False
        return ended

    def state(self, device_id: str, state: str) -> None:
        """The device's own report: while it says ``offline`` it is not also called silent."""
        d = self.devices.get(device_id)
        if d is not None:
            d.offline = state == "offline"

    def unmark(self, device_ids: Iterable[str]) -> None:
        """Forget that these were reported silent (the caller decided not to report them)."""
        for device_id in device_ids:
            self.devices[device_id].silent = False

    def overdue(self, now: datetime, since: datetime | None = None) -> list[tuple[str, float, float]]:
        """Devices newly silent at ``now``: (device id, seconds since the last message, usual gap).

        ``since`` (the service's start after a restart): lateness counts from no earlier than this, as
        nothing could be heard while the service was down.
        """
        out = []
        for device_id, d in self.devices.items():
            if d.silent or d.offline or d.n < self.min_gaps:
                continue
            late = (now - d.last).total_seconds()
            judged = late if since is None else min(late, (now - since).total_seconds())
            if judged > max(self.factor * d.gap, self.min_s):
                d.silent = True
                out.append((device_id, late, d.gap))
        return out

    def to_state(self) -> bytes:
        """What was learned per device (last arrival, usual gap, reported states) as JSON bytes."""
        devices = {k: [d.last.isoformat(), d.gap, d.n, d.offline, d.silent] for k, d in self.devices.items()}
        return json.dumps({"version": 1, "devices": devices}).encode()

    def restore(self, data: bytes) -> int:
        """Take over devices from :meth:`to_state` output not heard from yet; returns how many.

        So a device that died while the service was down is still called silent after a restart (once its
        usual gap has passed since then). Raises ``ValueError`` for bytes that are not such a state.
        """
        try:
            doc = json.loads(data)
            if doc.get("version") != 1:
                raise ValueError(f"unknown liveness state version {doc.get('version')!r}")
            restored = {k: _Device(datetime.fromisoformat(v[0]), float(v[1]), int(v[2]), bool(v[3]), bool(v[4]))
                        for k, v in doc["devices"].items()}
        except (KeyError, TypeError, IndexError, AttributeError, json.JSONDecodeError) as err:
            raise ValueError(f"not a liveness state: {err}") from err
        fresh = {k: d for k, d in restored.items() if k not in self.devices}
        self.devices.update(fresh)
        return len(fresh)
