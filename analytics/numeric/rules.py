"""Domain rules (traffic, BTS) and group context, evaluated on the facts of a ``SeriesTable``."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime

import numpy as np

from analytics.findings import Finding
from analytics.numeric import kernel
from analytics.numeric.config import DetectorConfig
from analytics.numeric.explain import label, num, slot, value
from analytics.numeric.table import KIND_CODES, RULE_METRIC_CODES, SeriesTable, sorted_unique

SPEED, OCCUPANCY, MAINS, BATTERY, AVAILABILITY = "speed_kmh", "occupancy_pct", "mains_power", "battery_pct", \
    "availability_pct"
TRAFFIC_METRICS = frozenset({SPEED, OCCUPANCY, "flow_veh_h"})
BTS_METRICS = frozenset({MAINS, BATTERY, AVAILABILITY})
_SPEED, _OCCUPANCY, _MAINS, _AVAILABILITY = (RULE_METRIC_CODES[m] for m in (SPEED, OCCUPANCY, MAINS, AVAILABILITY))


def utc(ts: float) -> datetime:
    """Epoch seconds to an aware UTC datetime."""
    return datetime.fromtimestamp(float(ts), UTC)


def infer_kind(metric: str) -> str:
    """Device kind guessed from a metric name when the pipeline did not say."""
    if metric in TRAFFIC_METRICS:
        return "traffic"
    if metric in BTS_METRICS:
        return "bts"
    return ""


class DomainRules:
    """Traffic speed collapse, BTS mains loss, availability drop, and group events.

    Each ``apply`` looks only at the series touched by the batch and at the latest facts of their
    partner series, so it stays cheap; a rule fires once per episode (until its condition clears).
    """

    def __init__(self, config: DetectorConfig) -> None:
        self.cfg = config
        # Episode memory beyond the series' own facts, saved with the learned state (episodes.py, device_state.py)
        # so that a restart or a partition hand-over does not report an ongoing episode again.
        self.group_active: set[tuple[int, str]] = set()  # (group, kind) whose episode was reported
        self.group_changes = 0  # episodes started or ended: a saver compares it with ``group_saved``
        self.group_saved = 0
        self.frozen_active: set[int] = set()  # devices whose freeze was reported (until one metric moves)
        self.frozen_ended: set[int] = set()  # devices whose freeze ended since the monitor last took them

    def apply(self, table: SeriesTable, rows: np.ndarray, ts: np.ndarray) -> list[Finding]:
        """Findings of the rules for the series rows just updated (table facts already current)."""
        out: list[Finding] = []
        touched = sorted_unique(rows)
        code = table.mcode[touched]
        # the same rows in the same order as a scan of every touched row's metric name: the same sets and lists
        pick = (code == _SPEED) | (code == _OCCUPANCY)
        speed_rows = {r if c == _SPEED else p for r, c, p in zip(touched[pick].tolist(), code[pick].tolist(),
                                                                  table.partner[touched[pick]].tolist(), strict=True)}
        out += self._speed_collapse(table, [r for r in speed_rows if r >= 0])
        out += self._mains(table, touched[code == _MAINS].tolist())
        out += self._availability(table, touched[code == _AVAILABILITY].tolist())
        groups = {g for g in table.grp[touched].tolist() if g >= 0}
        out += self.groups(table, groups, float(ts.max()) if len(ts) else 0.0)
        return out

    def _episode(self, table: SeriesTable, r: int, condition: bool, need_history: bool = True) -> bool:
        """True when ``condition`` starts a new episode on row ``r`` (one finding per episode)."""
        f = table.f
        if not condition:
            f["rule_until"][r] = np.nan  # episode over: the next one may fire
            return False
        f["flag_ts"][r] = f["last_ts"][r]
        # the usual value for this time of day is known only after a day of data
        learnt = f["last_ts"][r] - f["first_ts"][r] >= self.cfg.min_days_daily * 86400.0
        if need_history and not (f["n"][r] >= self.cfg.warmup and learnt):
            return False
        if not np.isnan(f["rule_until"][r]):
            return False  # this episode was already reported
        f["rule_until"][r] = f["last_ts"][r]  # episode start
        return True

    def _speed_collapse(self, table: SeriesTable, speed_rows: Iterable[int]) -> list[Finding]:
        cfg, f, out = self.cfg, table.f, []
        for s in speed_rows:
            v, e, sd, t = f["last_v"][s], f["last_exp"][s], f["last_sd"][s], f["last_ts"][s]
            o = int(table.partner[s])
            ov, oe, osd = (f["last_v"][o], f["last_exp"][o], f["last_sd"][o]) if o >= 0 else (0.0, 0.0, 0.0)
            collapse = bool(o >= 0 and v < cfg.speed_collapse_frac * e and v < e - 3 * sd
                            and abs(f["last_ts"][o] - t) <= cfg.rule_window_s and ov > oe + cfg.occupancy_up_z * osd)
            slow = bool(f["n"][s] >= cfg.warmup and v < e - cfg.slow_z * sd and v < cfg.slow_frac * e)
            if not self._episode(table, s, collapse):
                if slow:
                    f["flag_ts"][s] = t  # slowing, for the neighbourhood rule
                continue
            depth = float(np.clip(1.0 - v / max(e, 1e-9), 0.0, 1.0))
            out.append(Finding(
                table.devices[s], SPEED, utc(t), "speed_collapse", round(0.6 + 0.4 * depth, 3),
                f"speed {value(SPEED, v)} vs usual {num(e)}±{num(sd)} for {slot(utc(t))}, "
                f"occupancy up to {value(OCCUPANCY, ov)} (usual {num(oe)})",
                {"value": float(v), "expected": float(e), "spread": float(sd), "occupancy": float(ov),
                 "occupancy_expected": float(oe)}))
        return out

    def _mains(self, table: SeriesTable, mains_rows: Iterable[int]) -> list[Finding]:
        f, out = table.f, []
        for r in mains_rows:
            t = f["last_ts"][r]
            if not self._episode(table, r, bool(f["last_v"][r] < 0.5), need_history=False):
                continue
            b = int(table.partner[r])
            detail: dict[str, float] = {}
            text = "mains power lost"
            score = 0.8
            if b >= 0 and np.isfinite(f["last_v"][b]):
                dt = f["last_ts"][b] - f["prev_ts"][b]
                rate = (f["last_v"][b] - f["prev_v"][b]) / dt * 3600.0 if dt > 0 else float("nan")
                detail = {"battery_pct": float(f["last_v"][b]), "battery_rate_pct_h": float(rate)}
                text += f"; battery {value(BATTERY, f['last_v'][b])}"
                if np.isfinite(rate) and rate < 0:
                    text += f" and draining ({num(rate)}%/h)"
                    score = 0.95
            out.append(Finding(table.devices[r], MAINS, utc(t), "mains_power_lost", score, text, detail))
        return out

    def _availability(self, table: SeriesTable, avail_rows: Iterable[int]) -> list[Finding]:
        cfg, f, out = self.cfg, table.f, []
        for r in avail_rows:
            v, e, sd, t = f["last_v"][r], f["last_exp"][r], f["last_sd"][r], f["last_ts"][r]
            if not self._episode(table, r, bool(v < e - max(3 * sd, cfg.availability_drop_pts))):
                continue
            drop = e - v
            out.append(Finding(
                table.devices[r], AVAILABILITY, utc(t), "availability_drop",
                round(float(np.clip(0.5 + drop / 20.0, 0.5, 1.0)), 3),
                f"availability {value(AVAILABILITY, v)} vs usual {num(e)}±{num(sd)} for {slot(utc(t))}",
                {"value": float(v), "expected": float(e), "spread": float(sd)}))
        return out

    def frozen(self, table: SeriesTable, F: np.ndarray, rows: np.ndarray) -> list[Finding]:
        """Devices (of those just updated) whose usually-changing metrics all stopped changing at once.

        One frozen metric among moving ones is the bank's ``stuck`` business, judged by how rare such a run
        is for that series. All of a device's lively metrics repeating together is a different fault, a
        sensor resending its last packet, and is called after a few readings even where one series alone
        would not be (a morning's speed can stand still; speed, occupancy and flow together cannot).
        """
        cfg, n = self.cfg, len(table)
        if n == 0 or len(rows) == 0:
            return []
        touched = table.devices_of(rows)
        mine_all, at = table.rows_of(touched)  # every series of the touched devices (not only those just read)
        lively = (F[mine_all, kernel.REP] < cfg.frozen_rep) & (F[mine_all, kernel.N] >= cfg.warmup)
        still = lively & (F[mine_all, kernel.RUN] >= cfg.frozen_run)
        n_lively = np.bincount(at[lively], minlength=len(touched))
        n_still = np.bincount(at[still], minlength=len(touched))
        out: list[Finding] = []
        hit = n_still >= np.maximum(cfg.frozen_min_series, n_lively)
        if self.frozen_active:  # moving again: the next freeze is new (and the device's saved state must say so)
            ended = self.frozen_active.intersection(touched[~hit].tolist())
            self.frozen_active -= ended
            self.frozen_ended |= ended
        for k in np.flatnonzero(hit).tolist():
            d = int(touched[k])
            if d in self.frozen_active:
                continue
            self.frozen_active.add(d)
            mine = mine_all[still & (at == k)]  # ascending rows
            r = int(mine[np.argmin(F[mine, kernel.REP])])  # the one that changes most often speaks for all
            names = ", ".join(label(table.metrics[int(i)]) for i in mine)
            run = int(F[mine, kernel.RUN].min()) + 1
            t, v = table.f["last_ts"][r], table.f["last_v"][r]
            out.append(Finding(
                table.devices[r], table.metrics[r], utc(t), "stuck", 0.8,
                f"{names}: the same values {run} readings in a row (they usually change every reading); "
                "the sensor looks frozen",
                {"value": float(v), "metrics": [table.metrics[int(i)] for i in mine], "run": run}))
        return out

    def groups(self, table: SeriesTable, groups: Iterable[int], now: float) -> list[Finding]:
        """Group events: BTS of one district failing together, traffic sensors slowing together."""
        cfg, out = self.cfg, []
        n = len(table)
        # only series flagged in the last four windows matter: few in normal life, so the scan of every
        # series (to count a group's devices) is done only for a group with enough of them flagged
        flag = table.f["flag_ts"][:n]
        lately = np.flatnonzero(flag >= now - 4 * cfg.rule_window_s)
        recent = flag[lately] >= now - cfg.rule_window_s
        grp, kcode, dev = table.grp[:n][lately], table.kcode[:n][lately], table.dev[:n][lately]
        flagged = set(grp.tolist())
        of_kind = {kind: kcode == code for kind, code in KIND_CODES.items()}
        for g in groups:
            members = grp == g if g in flagged else None  # None: no series of the group flagged lately
            for kind, ftype, what in (("bts", "group_outage", "BTS failing"),
                                      ("traffic", "group_slowdown", "traffic sensors slowing")):
                is_kind = None if members is None else members & of_kind[kind]
                if is_kind is None or not is_kind.any():
                    if (g, kind) in self.group_active:  # over once all have been back for a while
                        self.group_active.discard((g, kind))
                        self.group_changes += 1
                    continue
                flagged_now = dev[is_kind & recent]
                if len(flagged_now) < cfg.group_min_devices:  # fewer series, so fewer devices, than needed
                    continue
                hit_devs = np.unique(flagged_now)
                hit = len(hit_devs)
                if hit < cfg.group_min_devices:
                    continue
                all_kind = (table.grp[:n] == g) & (table.kcode[:n] == KIND_CODES[kind])
                total = len(np.unique(table.dev[:n][all_kind]))
                if hit < cfg.group_min_frac * total:
                    continue
                if (g, kind) in self.group_active:
                    continue  # one finding per group episode
                self.group_active.add((g, kind))
                self.group_changes += 1
                name = table.group_name(g)
                devs = sorted(table.devices[int(np.flatnonzero(table.dev[:n] == d)[0])] for d in hit_devs)
                out.append(Finding(
                    f"group:{name}", "*", utc(now), ftype, round(min(1.0, 0.5 + 0.5 * hit / max(total, 1)), 3),
                    f"{hit} of {total} {what} together in {name}", {"devices": devs, "group": name}))
        return out
