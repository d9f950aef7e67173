"""Frozen-stream evidence: has anything changed since the last snapshot beyond JPEG re-encoding?

A stalled encoder or a relay that keeps re-sending its last picture re-compresses the same image, so
the bytes differ but the mean of every 8x8 JPEG block (its DC term) can only move by the DC
quantiser's rounding, ``dc_q / 16`` grey levels per snapshot. Any real scene change, sensor noise or
video-codec flicker moves some blocks further. Such a "still" snapshot is a freeze at once on a camera
that is hardly ever still; on a camera with naturally still spells (an empty road at night) only a
spell well beyond the longest healthy one is.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from analytics.camera.config import CameraConfig
from analytics.camera.features import Measures


def changed_map(cur: Measures, prev: Measures, cfg: CameraConfig) -> np.ndarray | None:
    """JPEG blocks whose mean moved more than re-encoding can move it (None: not comparable)."""
    a, b = cur.blocks, prev.blocks
    if a.size == 0 or a.shape != b.shape:
        return None
    tol = (cur.dc_q + prev.dc_q) / 16.0 + cfg.still_margin
    return np.asarray(np.abs(a.astype(np.float32) - b) > tol)


def changed_blocks(cur: Measures, prev: Measures, cfg: CameraConfig) -> int:
    """Number of JPEG blocks whose mean moved more than re-encoding can move it (-1: not comparable)."""
    changed = changed_map(cur, prev, cfg)
    return -1 if changed is None else int(np.count_nonzero(changed))


_TEXT_JOIN = np.ones((1, 3), np.uint8)  # characters of one line of text join into one box


class FreezeTracker:
    """Still-spell bookkeeping, the burnt-in overlay's blocks, and the freeze verdict of one camera."""

    __slots__ = ("alarm", "busy", "changes", "last_small", "max_spell", "n_healthy", "n_move", "n_rate", "n_still",
                 "rate", "spell")

    def __init__(self) -> None:
        self.changes = np.full(32, -1, np.int32)  # changed-block counts of recent healthy snapshots (ring)
        self.n_healthy = 0  # healthy snapshots recorded in the ring
        self.n_move = 0  # healthy snapshots that changed
        self.n_still = 0  # still snapshots in spells that ended healthily
        self.max_spell = 0  # longest such spell
        self.spell = 0  # still snapshots in the current spell
        self.alarm = False  # the current spell was reported as a freeze
        self.rate = np.zeros((0, 0), np.uint8)  # how often each JPEG block changed lately (0..255)
        self.n_rate = 0  # snapshots behind ``rate``
        # blocks (flat indices) with small changes since the scene last moved (see ``outside``)
        self.last_small = np.zeros(0, np.int32)
        self.busy = 0.0  # share of snapshots lately too busy for ``rate`` to learn from (an EMA)

    def overlay(self, cfg: CameraConfig) -> np.ndarray | None:
        """Blocks of a burnt-in clock: small boxes that change nearly every snapshot, amid blocks that do not.

        A recorder's date and time tick with every snapshot, also on a stalled picture. Its digits
        make small, compact boxes of blocks that change almost always, while the blocks around them
        seldom do; busy parts of a scene (a lane of traffic) are large or have busy surroundings.
        Each box is widened along its line, where the slower digits (minutes, hours) tick now and then.
        """
        if self.n_rate < cfg.overlay_learn:
            return None
        r = self.rate
        hot = (r >= int(255 * cfg.overlay_rate)).astype(np.uint8)
        if not hot.any():
            return None
        n, labels, stats, _ = cv2.connectedComponentsWithStats(cv2.dilate(hot, _TEXT_JOIN), connectivity=8)
        h_all, w_all = r.shape
        out = np.zeros(r.shape, bool)
        for i, (x, y, w, h, _area) in enumerate(stats[1:n], start=1):
            if w * h > cfg.overlay_box * r.size or h > max(4, 0.15 * h_all):
                continue  # not a line of text
            if int(np.count_nonzero(hot[y:y + h, x:x + w] & (labels[y:y + h, x:x + w] == i))) < 2:
                continue  # one lone block: flicker (leaves, a lamp), not digits
            x0, y0, x1, y1 = max(0, x - 2), max(0, y - 2), min(w_all, x + w + 2), min(h_all, y + h + 2)
            box = r[y:y + h, x:x + w]
            ring = (float(r[y0:y1, x0:x1].sum(dtype=np.int64)) - float(box.sum(dtype=np.int64))) / max(
                1, (y1 - y0) * (x1 - x0) - w * h)
            if ring > 255 * cfg.overlay_ring or ring > 0.4 * float(box.mean()):
                continue  # its surroundings change too: the scene moving, not a clock
            grow = max(2, w)
            out[y:y + h, max(0, x - grow):x + w + grow] = True
        n_out = int(np.count_nonzero(out))
        if n_out == 0 or n_out > 2 * cfg.overlay_box * r.size:
            return None  # none, or too many to be one caption: no clear overlay
        return out

    def outside(self, changed: np.ndarray, cfg: CameraConfig, zone: np.ndarray | None) -> int:
        """Changed blocks outside ``zone`` (:meth:`overlay`); then learn this snapshot's changes."""
        if zone is not None and zone.shape != changed.shape:
            zone = None
        n = int(np.count_nonzero(changed & ~zone)) if zone is not None else int(np.count_nonzero(changed))
        if self.rate.shape != changed.shape:
            self.rate = np.zeros(changed.shape, np.uint8)
            self.n_rate = 0
        box = cfg.overlay_box * changed.size
        seen_small = self.last_small
        if n > box:
            self.last_small = np.zeros(0, np.int32)  # the scene moved: a quiet stretch starts afresh
        too_busy = n > cfg.overlay_global * changed.size
        self.busy += (float(too_busy) - self.busy) / cfg.overlay_memory
        if too_busy:
            return n  # the whole picture changed (exposure, noise): says nothing about where a clock is
        seen = n
        if n:
            rest = changed if zone is None else changed & ~zone
            if n <= box:
                # where small changes were seen in this quiet stretch: a clock ticks in one place, while
                # anything that wanders soon spreads beyond a caption's size
                both = np.union1d(seen_small, np.flatnonzero(rest)).astype(np.int32)
                self.last_small = both if both.size <= box else np.flatnonzero(rest).astype(np.int32)
                # only where the rates seldom learn: a quiet camera's rates know its clock, and there a
                # person fidgeting in one place would pass for one
                known = seen_small if self.busy >= cfg.overlay_busy else np.zeros(0, np.int32)
                if self.n_rate >= cfg.overlay_learn or known.size:
                    seen = self._ticking(rest, cfg, known)
        self.n_rate += 1
        k = min(self.n_rate, cfg.overlay_memory)  # a running mean at first, then an EMA
        r = self.rate.astype(np.int16)
        r += (changed.astype(np.int16) * 255 - r) // k
        self.rate = r.astype(np.uint8)
        return seen

    def _ticking(self, changed: np.ndarray, cfg: CameraConfig, known: np.ndarray) -> int:
        """0 if the only change is one or two small text boxes where a clock ticks.

        Judged on this snapshot (its surroundings did not change), so a clock is recognised before
        :meth:`overlay` has learned it, e.g. when a busy scene stalls. A box is a clock's if it holds
        a block that changes nearly always (``rate``), or one that already changed, alone with at
        most another small box, earlier in this quiet stretch (``known``, flat indices; given only on
        a camera whose rates seldom learn, since most of its snapshots are too busy).
        """
        n_all = int(np.count_nonzero(changed))
        n, labels, stats, _ = cv2.connectedComponentsWithStats(cv2.dilate(changed.astype(np.uint8), _TEXT_JOIN),
                                                               connectivity=8)
        if n - 1 > 2:
            return n_all
        hot = self.rate >= int(255 * cfg.overlay_rate)
        if known.size:
            hot = hot.copy()
            hot.flat[known[known < hot.size]] = True
        for i, (x, y, w, h, _area) in enumerate(stats[1:n], start=1):
            if w * h > cfg.overlay_box * changed.size or h > max(4, 0.15 * changed.shape[0]):
                return n_all
            if not (hot[y:y + h, x:x + w] & (labels[y:y + h, x:x + w] == i)).any():
                return n_all
        return 0

    def quietest(self) -> int:
        """Fewest changed blocks among recent healthy snapshots."""
        seen = self.changes[self.changes >= 0]
        return int(seen.min()) if len(seen) else 0

    def typical(self, z: float) -> float:
        """Changed blocks ``z`` spreads below this camera's typical healthy snapshot (log-normal fit).

        z=1.28 is a rather quiet snapshot (10th percentile), z=2.33 about its quietest (1st).
        """
        seen = np.log1p(self.changes[self.changes >= 0].astype(np.float32))
        if len(seen) < 2:
            return 0.0
        return float(np.expm1(seen.mean() - z * (seen.std() + 0.2)))

    def verdict(self, still: bool, same_bytes: bool, cfg: CameraConfig) -> float:
        """Confidence that this snapshot is frozen (0 if not)."""
        if same_bytes:
            return 1.0
        if not still:
            return 0.0
        if self.alarm:
            return 0.95  # already reported: keep saying so until the picture changes
        spell = self.spell + 1
        if self.n_move < cfg.freeze_history:
            return 0.0  # hardly seen moving: a still scene (an empty road at night) is not a frozen one
        quiet = self.quietest()
        last = int(self.changes[(self.n_healthy - 1) % len(self.changes)])
        if (spell == 1 and self.n_still == 0 and self.n_healthy >= cfg.freeze_history + 2
                and quiet >= cfg.freeze_busy and last >= self.typical(1.28)):
            # even this camera's quietest snapshots change many blocks, and the scene was not
            # calming down just before: stillness out of the blue is a stalled stream
            return float(min(1.0, 0.8 + 0.02 * quiet))
        # a camera whose quietest snapshots change almost nothing is still for a while naturally
        short = cfg.freeze_short
        if quiet < cfg.freeze_quiet:
            # ... as long as chance allows: a spell this camera's own share of still snapshots makes
            # unlikely (a prior of 1 still in 4 until it has shown otherwise)
            p = (self.n_still + 1.0) / (self.n_still + self.n_move + 4.0)
            short = max(cfg.freeze_short + 1, math.ceil(math.log(cfg.freeze_chance) / math.log(p)))
        need = max(short, int(cfg.freeze_spell_factor * self.max_spell) + 1)
        if spell >= need:
            return float(min(1.0, 0.6 + 0.05 * (spell - need)))
        return 0.0

    def update(self, still: bool, healthy: bool, frozen: bool, changed: int, flicker: int = 0) -> None:
        """Record the outcome of a snapshot (``frozen``: it was labelled a freeze; ``changed``: blocks).

        A snapshot where at most ``flicker`` blocks moved ends a still spell but is no evidence that
        the camera moves: grain on a static picture is not a scene that lives.
        """
        if still:
            self.spell += 1
            self.alarm = self.alarm or frozen
            return
        if healthy:
            if self.spell and (not self.alarm or self.spell <= 2):
                # a spell that ends in motion was healthy (one reported within a snapshot or two of
                # its start most likely was too): only now do its still snapshots count as normal
                self.n_still += self.spell
                self.max_spell = max(self.max_spell, self.spell)
                for _ in range(min(self.spell, len(self.changes))):
                    self._record(0)
            if changed < 0 or changed > flicker:
                self.n_move += 1
            if changed >= 0:
                self._record(changed)
        self.spell = 0
        self.alarm = False

    def _record(self, changed: int) -> None:
        self.changes[self.n_healthy % len(self.changes)] = changed
        self.n_healthy += 1
