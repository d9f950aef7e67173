"""Registry of series (device, metric, kind, group) with per-series facts the rules need."""

from __future__ import annotations

import numpy as np

# float columns kept per series for the domain and group rules
KIND_CODES = {"traffic": 1, "bts": 2}
#: metrics the domain rules read, by code (``SeriesTable.mcode``; 0: any other metric)
RULE_METRIC_CODES = {"speed_kmh": 1, "occupancy_pct": 2, "mains_power": 3, "availability_pct": 4}
FLOAT_COLS = ("last_v", "last_exp", "last_sd", "last_ts", "prev_v", "prev_ts", "flag_ts", "rule_until",
              "n", "first_ts")


def sorted_unique(a: np.ndarray) -> np.ndarray:
    """``np.unique(a)`` (1-D integers), without its sort or hash when ``a`` is already in ascending order."""
    if len(a) == 0 or not bool((a[1:] >= a[:-1]).all()):
        return np.unique(a)
    keep = np.empty(len(a), dtype=bool)
    keep[0] = True
    np.not_equal(a[1:], a[:-1], out=keep[1:])
    return a[keep]


class SeriesTable:
    """Names and rule facts per series row, aligned with the rows of a ``SeriesBank``."""

    def __init__(self) -> None:
        self.keys: dict[tuple[str, str], int] = {}
        self.devices: list[str] = []
        self.metrics: list[str] = []
        self.kinds: list[str] = []
        self.groups: list[str] = []
        self.device_idx: dict[str, int] = {}
        self.group_idx: dict[str, int] = {}
        self.dev = np.zeros(0, dtype=np.intp)
        self.grp = np.zeros(0, dtype=np.intp)
        self.partner = np.zeros(0, dtype=np.intp)
        self.silent = np.zeros(0, dtype=bool)
        self.kcode = np.zeros(0, dtype=np.int8)
        self.mcode = np.zeros(0, dtype=np.int8)
        self._by_dev: tuple[int, np.ndarray, np.ndarray] | None = None  # rows grouped by device (rows_of)
        self.f = {name: np.zeros(0) for name in FLOAT_COLS}
        self.device_kind: list[str] = []
        self.device_group: list[int] = []

    def __len__(self) -> int:
        return len(self.metrics)

    def _grow(self, need: int) -> None:
        cap = len(self.dev)
        if need <= cap:
            return
        cap = max(need, 2 * cap, 16)

        def grow(a: np.ndarray, fill: float | int | bool) -> np.ndarray:
            out = np.full(cap, fill, dtype=a.dtype)
            out[: len(a)] = a
            return out

        self.dev, self.grp = grow(self.dev, -1), grow(self.grp, -1)
        self.partner, self.silent = grow(self.partner, -1), grow(self.silent, False)
        self.kcode, self.mcode = grow(self.kcode, 0), grow(self.mcode, 0)
        self.f = {k: grow(v, np.nan if k != "n" else 0.0) for k, v in self.f.items()}

    def device(self, device_id: str, kind: str = "", group: str = "") -> int:
        """Index of a device, created on first sight; a non-empty kind or group updates it."""
        d = self.device_idx.get(device_id)
        if d is None:
            d = self.device_idx[device_id] = len(self.device_kind)
            self.device_kind.append(kind)
            self.device_group.append(-1)
        if kind:
            self.device_kind[d] = kind
            self.kcode[: len(self)][self.dev[: len(self)] == d] = KIND_CODES.get(kind, 0)
        if group:
            g = self.group_idx.setdefault(group, len(self.group_idx))
            self.device_group[d] = g
            self.grp[: len(self)][self.dev[: len(self)] == d] = g
        return d

    def add(self, device_id: str, metric: str) -> int:
        """Row of (device, metric), appended on first sight (the bank must add the same row)."""
        row = self.keys.get((device_id, metric))
        if row is not None:
            return row
        d = self.device(device_id)
        row = len(self)
        self._grow(row + 1)
        self.keys[(device_id, metric)] = row
        self.devices.append(device_id)
        self.metrics.append(metric)
        self.dev[row] = d
        self.grp[row] = self.device_group[d]
        self.kcode[row] = KIND_CODES.get(self.device_kind[d], 0)
        self.mcode[row] = RULE_METRIC_CODES.get(metric, 0)
        # pair metrics read together by the domain rules
        pairs = {"speed_kmh": "occupancy_pct", "occupancy_pct": "speed_kmh",
                 "mains_power": "battery_pct", "battery_pct": "mains_power"}
        other = self.keys.get((device_id, pairs.get(metric, "")))
        if other is not None:
            self.partner[row] = other
            self.partner[other] = row
        return row

    def devices_of(self, rows: np.ndarray) -> np.ndarray:
        """``np.unique(self.dev[rows])``: the devices of ``rows``, ascending."""
        seen = np.zeros(len(self.device_kind), dtype=bool)
        seen[self.dev[rows]] = True
        return np.flatnonzero(seen)

    def rows_of(self, devices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Every row of each of ``devices`` (device indices, distinct), grouped by device in the order given and
        ascending within a device; and the position in ``devices`` of each row's device."""
        n = len(self)
        if self._by_dev is None or self._by_dev[0] != n:  # rows are only ever appended: rebuilt when one was
            dev = self.dev[:n]
            counts = np.bincount(dev, minlength=len(self.device_kind))
            self._by_dev = (n, np.argsort(dev, kind="stable"), np.r_[0, np.cumsum(counts)])
        _, order, start = self._by_dev
        first, k = start[devices], start[devices + 1] - start[devices]
        pos = np.repeat(np.arange(len(devices)), k)
        ends = np.cumsum(k)
        return order[np.repeat(first - ends + k, k) + np.arange(int(ends[-1]) if len(k) else 0)], pos

    def kind_of(self, row: int) -> str:
        """Device kind of a series row ('' when unknown)."""
        return self.device_kind[int(self.dev[row])]

    def group_name(self, g: int) -> str:
        """Label of a group index."""
        for name, idx in self.group_idx.items():
            if idx == g:
                return name
        return ""

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for serialisation (strings as numpy unicode arrays)."""
        n = len(self)
        groups = sorted(self.group_idx, key=self.group_idx.__getitem__)
        devs = sorted(self.device_idx, key=self.device_idx.__getitem__)
        out = {
            "t_devices": np.array(self.devices, dtype=str), "t_metrics": np.array(self.metrics, dtype=str),
            "t_groups": np.array(groups, dtype=str), "t_devnames": np.array(devs, dtype=str),
            "t_devkind": np.array(self.device_kind, dtype=str),
            "t_devgroup": np.array(self.device_group, dtype=np.int64),
            "t_silent": self.silent[:n],
        }
        out.update({f"t_{k}": v[:n] for k, v in self.f.items()})
        return out

    @classmethod
    def from_arrays(cls, z: dict[str, np.ndarray]) -> SeriesTable:
        """Inverse of ``to_arrays``."""
        t = cls()
        for name in z["t_groups"].tolist():
            t.group_idx[name] = len(t.group_idx)
        for name, kind, g in zip(z["t_devnames"].tolist(), z["t_devkind"].tolist(),
                                 z["t_devgroup"].tolist(), strict=True):
            t.device(name, kind)
            t.device_group[t.device_idx[name]] = int(g)
        for dev, met in zip(z["t_devices"].tolist(), z["t_metrics"].tolist(), strict=True):
            t.add(dev, met)
        n = len(t)
        t.silent[:n] = z["t_silent"]
        for k in FLOAT_COLS:
            t.f[k][:n] = z[f"t_{k}"]
        return t
