"""Learned numeric state one device at a time: saved incrementally, restored by the next leader.

A device's bytes hold its kind, group and, for each of its series, the bank's rows (every array of
``SeriesBank``) and the rule facts of ``SeriesTable``. Only devices that learned something since the
last save are encoded (``NumericMonitor.dirty``), so a province (tens of thousands of series) is not
rewritten whole every few seconds. Format: one version byte, then zlib of
``u32 header length | JSON header | raw arrays``; no pickle.
"""

from __future__ import annotations

import json
import logging
import struct
import zlib
from collections.abc import Iterable
from typing import Any

import numpy as np

from analytics.numeric.bank import ARRAYS
from analytics.numeric.monitor import NumericMonitor
from analytics.numeric.table import FLOAT_COLS

logger = logging.getLogger(__name__)

VERSION = 1
_LEVEL = 1  # zlib level: fastest; level 6 saves a few % more for several times the time
_HEAD = struct.Struct("<I")


def _shapes(mon: NumericMonitor) -> dict[str, list[str | int]]:
    """Dtype and per-row shape of every bank array under the monitor's configuration."""
    return {name: [getattr(mon.bank, name).dtype.str, *getattr(mon.bank, name).shape[1:]] for name in ARRAYS}


def encode_devices(mon: NumericMonitor, device_ids: Iterable[str]) -> list[tuple[str, bytes]]:
    """The saved form of each known device in ``device_ids`` (unknown ones are skipped)."""
    table, bank = mon.table, mon.bank
    n = len(table)
    named = [(d, table.device_idx[d]) for d in device_ids if d in table.device_idx]
    if not named:
        return []
    wanted = [d for _, d in named]
    dev = table.dev[:n]
    order = np.argsort(dev, kind="stable")  # rows grouped by device, in row order within each
    starts = np.searchsorted(dev[order], wanted, side="left")
    ends = np.searchsorted(dev[order], wanted, side="right")
    shapes = _shapes(mon)
    groups = sorted(table.group_idx, key=table.group_idx.__getitem__)
    facts = np.stack([table.f[k][:n] for k in FLOAT_COLS], axis=1)  # (rows, cols) float64
    out = []
    for (device_id, d), lo, hi in zip(named, starts.tolist(), ends.tolist(), strict=True):
        rows = order[lo:hi]
        g = table.device_group[d]
        head = json.dumps({"kind": table.device_kind[d], "group": groups[g] if g >= 0 else "",
                           "metrics": [table.metrics[r] for r in rows.tolist()], "shapes": shapes},
                          separators=(",", ":")).encode()
        parts = [_HEAD.pack(len(head)), head]
        parts += [np.ascontiguousarray(getattr(bank, name)[rows]).tobytes() for name in ARRAYS]
        parts += [facts[rows].tobytes(), table.silent[rows].tobytes()]
        out.append((device_id, bytes([VERSION]) + zlib.compress(b"".join(parts), _LEVEL)))
    return out


def restore_devices(mon: NumericMonitor, items: Iterable[tuple[str, bytes]]) -> int:
    """Add saved devices the monitor does not know yet (those it learns live are newer); returns how many.

    A device saved under another detector configuration (array shapes differ) or in bytes this version
    cannot read is skipped with a warning: it learns afresh.
    """
    table, bank = mon.table, mon.bank
    shapes = _shapes(mon)
    decoded = []
    skipped = 0
    for device_id, data in items:
        if device_id in table.device_idx:
            continue
        try:
            decoded.append((device_id, *_decode(data, shapes)))
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
    for device_id, head, arrays, facts, silent in decoded:
        rows = np.array([table.add(device_id, m) for m in head["metrics"]], dtype=np.intp)
        if len(rows) and rows.max() >= bank.size:
            bank.add(int(rows.max()) + 1 - bank.size)
        for name, values in arrays.items():
            getattr(bank, name)[rows] = values
        for i, k in enumerate(FLOAT_COLS):
            table.f[k][rows] = facts[:, i]
        table.silent[rows] = silent
    mon.declare_ranges(mon.ranges)  # today's declared ranges, as NumericMonitor.from_state does
    return len(decoded)


def _decode(data: bytes, shapes: dict[str, list[str | int]]) -> tuple[dict[str, Any], dict[str, np.ndarray],
                                                                       np.ndarray, np.ndarray]:
    if not data or data[0] != VERSION:
        raise ValueError(f"unknown device state version {data[:1]!r}")
    try:
        raw = zlib.decompress(data[1:])
        (size,) = _HEAD.unpack_from(raw)
        head = json.loads(raw[_HEAD.size:_HEAD.size + size])
    except (zlib.error, struct.error, json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"not a device state: {err}") from err
    if head.get("shapes") != shapes:
        raise ValueError("saved under another detector configuration")
    k = len(head["metrics"])
    pos = _HEAD.size + size
    arrays: dict[str, np.ndarray] = {}
    try:
        for name in ARRAYS:
            dtype = np.dtype(str(shapes[name][0]))
            shape = (k, *(int(x) for x in shapes[name][1:]))
            count = int(np.prod(shape))
            arrays[name] = np.frombuffer(raw, dtype=dtype, count=count, offset=pos).reshape(shape)
            pos += count * dtype.itemsize
        facts = np.frombuffer(raw, dtype=np.float64, count=k * len(FLOAT_COLS), offset=pos).reshape(k, -1)
        pos += facts.nbytes
        silent = np.frombuffer(raw, dtype=bool, count=k, offset=pos)
        pos += k
    except ValueError as err:
        raise ValueError(f"device state truncated: {err}") from err
    if pos != len(raw):
        raise ValueError("device state has trailing bytes")
    return head, arrays, facts, silent
