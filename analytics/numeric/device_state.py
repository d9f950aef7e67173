"""Learned numeric state one device at a time: saved incrementally, restored by the next leader.

A device's bytes hold its kind, group, whether its frozen-sensor episode was reported (``rules.frozen``)
and, for each of its series, the bank's rows (every array of ``SeriesBank``) and the rule facts of
``SeriesTable``. Only devices that learned something since the
last save are encoded (``NumericMonitor.dirty``), so a province (tens of thousands of series) is not
rewritten whole every few seconds. Format: one version byte, then zlib of
``u32 header length | JSON header | raw arrays``; no pickle.
"""

from __future__ import annotations

import json
import logging
import math
import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from analytics.numeric.bank import ARRAYS, SeriesBank
from analytics.numeric.monitor import NumericMonitor
from analytics.numeric.table import FLOAT_COLS

logger = logging.getLogger(__name__)

VERSION = 1
_LEVEL = 1  # zlib level: fastest; level 6 saves a few % more for several times the time
_HEAD = struct.Struct("<I")


# arrays added after this format: left out while their member is off, so states saved before still restore
_OPTIONAL = ("Lk",)


def _names(bank: SeriesBank) -> list[str]:
    return [n for n in ARRAYS if not (n in _OPTIONAL and getattr(bank, n).shape[1] == 0)]


def _shapes(mon: NumericMonitor) -> dict[str, list[str | int]]:
    """Dtype and per-row shape of every bank array under the monitor's configuration."""
    return {name: [getattr(mon.bank, name).dtype.str, *getattr(mon.bank, name).shape[1:]] for name in _names(mon.bank)}


@dataclass(slots=True)
class Gathered:
    """Copies of some devices' state, taken from a monitor (fast, under its lock) to be packed outside it."""

    devices: list[str]
    heads: list[bytes]
    counts: list[int]  # series per device, in ``devices`` order
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # the devices' rows, one device after another


def gather(mon: NumericMonitor, device_ids: Iterable[str]) -> Gathered:
    """Copy the state of each known device in ``device_ids`` (unknown ones are skipped)."""
    table, bank = mon.table, mon.bank
    n = len(table)
    named = [(d, table.device_idx[d]) for d in device_ids if d in table.device_idx]
    if not named:
        return Gathered([], [], [])
    wanted = [d for _, d in named]
    dev = table.dev[:n]
    order = np.argsort(dev, kind="stable")  # rows grouped by device, in row order within each
    starts = np.searchsorted(dev[order], wanted, side="left")
    ends = np.searchsorted(dev[order], wanted, side="right")
    rows = np.concatenate([order[lo:hi] for lo, hi in zip(starts.tolist(), ends.tolist(), strict=True)])
    shapes = _shapes(mon)
    groups = sorted(table.group_idx, key=table.group_idx.__getitem__)
    heads, counts = [], (ends - starts).tolist()
    frozen = mon.rules.frozen_active
    pos = 0
    for (_, d), k in zip(named, counts, strict=True):
        g = table.device_group[d]
        head: dict[str, Any] = {"kind": table.device_kind[d], "group": groups[g] if g >= 0 else "",
                "metrics": [table.metrics[r] for r in rows[pos:pos + k].tolist()], "shapes": shapes}
        if d in frozen:  # its freeze was reported: the next owner does not report it again
            head["frozen"] = True
        heads.append(json.dumps(head, separators=(",", ":")).encode())
        pos += k
    arrays = {name: getattr(bank, name)[rows] for name in _names(bank)}  # fancy indexing copies
    arrays["facts"] = np.stack([table.f[k][rows] for k in FLOAT_COLS], axis=1)  # (rows, cols) float64
    arrays["silent"] = table.silent[rows]
    return Gathered([name for name, _ in named], heads, counts, arrays)


def pack(g: Gathered) -> list[tuple[str, bytes]]:
    """The saved form of every gathered device (the slow part: compression; needs no lock)."""
    out = []
    pos = 0
    for device_id, head, k in zip(g.devices, g.heads, g.counts, strict=True):
        parts = [_HEAD.pack(len(head)), head]
        parts += [a[pos:pos + k].tobytes() for a in g.arrays.values()]
        out.append((device_id, bytes([VERSION]) + zlib.compress(b"".join(parts), _LEVEL)))
        pos += k
    return out


def encode_devices(mon: NumericMonitor, device_ids: Iterable[str]) -> list[tuple[str, bytes]]:
    """The saved form of each known device in ``device_ids`` (unknown ones are skipped)."""
    return pack(gather(mon, device_ids))


def restore_devices(mon: NumericMonitor, items: Iterable[tuple[str, bytes]]) -> int:
    """Add saved devices the monitor does not know yet (those it learns live are newer); returns how many.

    A device saved under another detector configuration (array shapes differ) or in bytes this version
    cannot read is skipped with a warning: it learns afresh.
    """
    table, bank = mon.table, mon.bank
    shapes = _shapes(mon)
    layout = _layout(shapes)
    decoded = []
    skipped = 0
    for device_id, data in items:
        if device_id in table.device_idx:
            continue
        try:
            decoded.append((device_id, *_decode(data, shapes, layout)))
        except ValueError as err:
            skipped += 1
            if skipped <= 3:
                logger.warning("numeric state of %s not restored (%s); it learns afresh", device_id, err)
    if skipped:
        logger.warning("numeric state of %d devices not restored", skipped)
    # Devices first, with kind and group, so adding their series needs no scan of the rows added before.
    for device_id, head, _, _, _ in decoded:
        d = table.device(device_id, head["kind"])
        if head["group"]:
            table.device_group[d] = table.group_idx.setdefault(head["group"], len(table.group_idx))
        if head.get("frozen"):  # absent from states saved before the episode memory was
            mon.rules.frozen_active.add(d)
    if not decoded:
        return 0
    rows = np.array([table.add(device_id, m) for device_id, head, *_ in decoded for m in head["metrics"]],
                    dtype=np.intp)
    if len(rows) and rows.max() >= bank.size:
        bank.add(int(rows.max()) + 1 - bank.size)
    for name in _names(bank):  # one assignment per array for all devices
        getattr(bank, name)[rows] = np.concatenate([arrays[name] for _, _, arrays, _, _ in decoded])
    facts = np.concatenate([f for *_, f, _ in decoded])
    for i, k in enumerate(FLOAT_COLS):
        table.f[k][rows] = facts[:, i]
    table.silent[rows] = np.concatenate([s for *_, s in decoded])
    mon.declare_ranges(mon.ranges)  # today's declared ranges, as NumericMonitor.from_state does
    return len(decoded)


Layout = list[tuple[str, np.dtype[Any], tuple[int, ...], int]]


def _check_older(saved: Any, shapes: dict[str, list[str | int]]) -> None:
    """Accept a state saved before this version added scalar columns or arrays (an upgrade keeps what was
    learned: added columns start at 0, added arrays empty); any other difference is another configuration."""
    if not isinstance(saved, dict) or not set(saved) <= set(shapes):
        raise ValueError("saved under another detector configuration")
    for name, was in saved.items():
        now = shapes[name]
        older_f = name == "F" and len(was) == 2 and was[0] == now[0] and int(was[1]) <= int(now[1])
        if was != now and not older_f:
            raise ValueError("saved under another detector configuration")


def _upgrade(arrays: dict[str, np.ndarray], shapes: dict[str, list[str | int]], k: int) -> dict[str, np.ndarray]:
    """Arrays of an older state in today's shapes: scalar columns added since at 0, arrays added since empty."""
    out: dict[str, np.ndarray] = {}
    for name, (dtype, *row) in shapes.items():
        full = np.zeros((k, *(int(r) for r in row)), dtype=np.dtype(str(dtype)))
        if name in arrays:
            old = arrays[name]
            full[:, : old.shape[1]] = old
        out[name] = full
    return out


def _layout(shapes: dict[str, list[str | int]]) -> Layout:
    """Per array: name, dtype, per-row shape, values per row."""
    out: Layout = []
    for name in shapes:
        row = tuple(int(x) for x in shapes[name][1:])
        out.append((name, np.dtype(str(shapes[name][0])), row, math.prod(row)))
    return out


def _decode(data: bytes, shapes: dict[str, list[str | int]], layout: Layout) -> tuple[
        dict[str, Any], dict[str, np.ndarray], np.ndarray, np.ndarray]:
    if not data or data[0] != VERSION:
        raise ValueError(f"unknown device state version {data[:1]!r}")
    try:
        raw = zlib.decompress(data[1:])
        (size,) = _HEAD.unpack_from(raw)
        head = json.loads(raw[_HEAD.size:_HEAD.size + size])
    except (zlib.error, struct.error, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"not a device state: {err}") from err
    saved = head.get("shapes")
    if saved != shapes:
        _check_older(saved, shapes)
        layout = _layout(saved)
    k = len(head["metrics"])
    pos = _HEAD.size + size
    arrays: dict[str, np.ndarray] = {}
    try:
        for name, dtype, row, per_row in layout:
            count = k * per_row
            arrays[name] = np.frombuffer(raw, dtype=dtype, count=count, offset=pos).reshape((k, *row))
            pos += count * dtype.itemsize
        facts = np.frombuffer(raw, dtype=np.float64, count=k * len(FLOAT_COLS), offset=pos).reshape(k, -1)
        pos += facts.nbytes
        silent = np.frombuffer(raw, dtype=bool, count=k, offset=pos)
        pos += k
    except ValueError as err:
        raise ValueError(f"device state truncated: {err}") from err
    if pos != len(raw):
        raise ValueError("device state has trailing bytes")
    if saved != shapes:
        arrays = _upgrade(arrays, shapes, k)
    return head, arrays, facts, silent
