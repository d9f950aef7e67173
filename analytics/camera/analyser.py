"""Per-camera snapshot analyser: learns the camera's normal scene and labels each snapshot.

Usage::

    an = CameraAnalyser("cam-17")
    res = an.analyse(jpeg_bytes, ts)      # -> SnapshotResult(label, confidence, activity, findings)

The analyser holds only small arrays (a 96x72 reference thumbnail, per-cell statistics, the
previous snapshot's measures), under 100 KB; ``state_dict()`` / ``from_state()`` move it between
processes.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np

from analytics.camera import evidence as ev
from analytics.camera.config import CameraConfig
from analytics.camera.features import FINE_X, FINE_Y, Measures, decode_work, measure, median
from analytics.camera.freeze import FreezeTracker, changed_map
from analytics.camera.reference import Ref, Spread
from analytics.camera.shift import Alignment, align, self_match
from analytics.findings import Finding

LABELS = ("ok", "black", "freeze", "blur", "occlusion", "shift", "brightness", "noise")
# When several faults are seen at once, report the one that explains the others: a dark picture
# hides motion (so it looks still), a cover removes detail (so it looks blurred), and so on.
PRIORITY = ("black", "brightness", "freeze", "noise", "occlusion", "shift", "blur")
_EXPLAIN = {
    "black": "Video loss: the picture is uniform (black, blue or grey screen).",
    "freeze": "Frozen stream: the picture has stopped changing.",
    "blur": "Picture out of focus: fine detail has dropped across the scene.",
    "occlusion": "Lens covered: part of the view is hidden behind a flat surface.",
    "shift": "Camera re-pointed: the scene no longer matches the reference view.",
    "brightness": "Brightness failure: the whole picture is much darker or brighter than usual.",
    "noise": "Heavy image noise.",
}


@dataclass(slots=True)
class SnapshotResult:
    """Verdict on one snapshot.

    Attributes:
        index: snapshot counter of this analyser (0-based).
        ts: snapshot time.
        label: ``"ok"`` or the fault name (one of :data:`LABELS`).
        confidence: confidence in the label, 0..1.
        activity: scene motion level, share of the picture that changed since the last snapshot.
        objects: rough count of moving objects (blobs that differ from the learned background).
        findings: findings to raise (empty when ok).
        scores: raw evidence values, for debugging and tuning.
    """

    index: int
    ts: datetime
    label: str
    confidence: float
    activity: float
    objects: int
    findings: list[Finding] = field(default_factory=list)
    scores: dict[str, float] = field(default_factory=dict)


def _spreads() -> dict[str, Spread]:
    """Priors of the per-camera score statistics."""
    return {"blur": Spread(0.0, 0.06), "noise": Spread(0.0, 0.06), "ncc": Spread(0.7, 0.1)}


class CameraAnalyser:
    """Stateful per-camera fault and activity analyser (pure: bytes in, result out)."""

    def __init__(self, device_id: str, config: CameraConfig | None = None) -> None:
        self.device_id = device_id
        self.cfg = config or CameraConfig()
        self.n_seen = 0  # snapshots analysed
        self.n_learned = 0  # snapshots learned into the reference
        self.ready = False  # the reference has fitted the view once (see _warm)
        self.ref: Ref | None = None
        self.prev: Measures | None = None
        self.prev_hash = b""
        self.digests = b""  # digests (8 bytes each, oldest first) of the last _RECENT pictures analysed
        self.freeze = FreezeTracker()
        self.spreads = _spreads()
        self.align: Alignment | None = None  # last candidate re-pointing
        self.cover_rate = np.full((FINE_Y, FINE_X), 0.5, np.float32)  # how often each cell looked covered
        self.occ_mask: np.ndarray | None = None  # cells of the cover being tracked
        self.streak: dict[str, int] = {}
        self.last_label = "ok"
        self.last_gain = 1.0  # exposure gain of the previous snapshot against the reference
        self.exposure = 1.0  # ... and of healthy snapshots lately (an EMA)
        self.noise_recent = 0.0  # noise score of recent snapshots (an EMA over those with no noise candidate)
        # how the noise score follows the JPEG quantiser on this camera: EMAs of x = log(dc_q), y = the
        # score, their variance and covariance, over healthy snapshots (count, mx, my, vx, cxy)
        self.noise_q = np.zeros(5, np.float64)
        self.jitter = 0.0  # mean square displacement (thumbnail px) of ok snapshots: wind shake
        self.jitter_wait: Alignment | None = None  # a displacement learned once it proves passing
        self._changed = -1
        self._zone: np.ndarray | None = None  # blocks of the burnt-in clock (this snapshot's view of it)

    # ------------------------------------------------------------------ public API
    def analyse(self, jpeg: bytes, ts: datetime) -> SnapshotResult:
        """Analyse one JPEG snapshot; snapshots must come in time order."""
        index = self.n_seen
        self.n_seen += 1
        dec = decode_work(jpeg)
        if dec is None:
            f = self._finding("black", 1.0, ts, index, "Snapshot does not decode as a JPEG.", {})
            return SnapshotResult(index, ts, "black", 1.0, 0.0, 0, [f])
        digest = _digest(jpeg)
        same_bytes = digest == self.prev_hash
        self.prev_hash = digest
        self.digests = (self.digests + digest)[-_DIGEST * _RECENT:]
        return self.analyse_measures(measure(*dec), ts, index, same_bytes)

    def replayed(self, jpeg: bytes, redelivered: bool = False) -> bool:
        """Whether ``jpeg`` is a copy of a picture analysed lately, not to be analysed again.

        The input is at least once: after a reconnection, or to the next leader after a takeover, the broker
        sends again what was not acknowledged, marked as sent before (``redelivered``: MQTT DUP). Stamped when
        received, such a copy of the camera's last picture would look like the camera re-sending it, a frozen
        stream at once. Unmarked, the same bytes as the last picture are the camera's own (a stalled stream);
        an earlier picture again is a replay either way (a camera does not go back to an older picture).
        """
        digest = _digest(jpeg)
        if digest == self.prev_hash:
            return redelivered
        rec = self.digests
        return any(rec[i:i + _DIGEST] == digest for i in range(0, len(rec), _DIGEST))

    def analyse_measures(self, m: Measures, ts: datetime, index: int, same_bytes: bool = False) -> SnapshotResult:
        """Analyse an already-measured snapshot (used by :meth:`analyse`)."""
        cfg = self.cfg
        cand: dict[str, float] = {}  # fault -> confidence, before confirmation
        strong: set[str] = set()  # candidates sure enough to need no confirmation
        scores: dict[str, float] = {"mean": m.mean, "contrast": m.contrast}
        activity, objects = ev.activity(m, self.prev, self.ref, cfg)
        still = self._still(m)
        blk = ev.black(m, self.ref, cfg, self._zone)
        if blk > 0:
            cand["black"] = blk
            strong.add("black")
        scores.update(activity=activity, still=float(still), spell=float(self.freeze.spell),
                      changed=float(self._changed))
        cmp: ev.Comparison | None = None
        al: Alignment | None = None
        covered = None
        if self.ref is not None:
            covered, occ_scores = ev.cover_map(m, self.ref, cfg)
            scores.update(occ_scores)
        if self._warm(m) and self.ref is not None and covered is not None:
            self._occlusion(m, covered, scores, cand, strong)
            fz = self.freeze.verdict(still, same_bytes, cfg)
            # a stalled stream repeats its last picture; a view that turned into a cover and stays put is
            # still because nothing behind the cover shows, not because the stream stalled (on a busy
            # camera the first still snapshot was called a freeze before the cover's confirmation)
            if fz > 0 and "occlusion" in cand and not same_bytes:
                fz = 0.0
            if fz > 0:
                cand["freeze"] = fz
                strong.add("freeze")
            q_off = self._noise_q_offset(m.dc_q)
            cmp = ev.compare(m, self.ref, cfg, self.spreads, covered, scores.get("g_occ"), self.exposure,
                             self.noise_recent, q_off)
            if q_off:
                cmp.scores["noise_q"] = q_off
            scores.update(cmp.scores)
            for name, conf in cmp.candidates.items():
                cand.setdefault(name, conf)
            strong |= cmp.strong
            if self.last_gain < cfg.dark_step:
                # already dimming before: an exposure swing settling, not a lamp failing at once
                strong.discard("brightness")
            if "black" not in cand:
                al = align(m, self.ref, self.spreads["ncc"], cfg)
                self._shift(m, al, cand, strong, scores)
                if "shift" in cand and scores["lift"] >= cfg.shift_sure:
                    # a moved view uncovers flat areas where structure was: a moved copy of the
                    # reference explaining the picture says re-pointed, not covered
                    cand.pop("occlusion", None)
                    strong.discard("occlusion")
                    self.occ_mask = None
        label, conf = self._confirm(cand, strong)
        if covered is not None:
            self.cover_rate += cfg.cover_rate_alpha * (covered - self.cover_rate)
        findings: list[Finding] = []
        if label != "ok" and (label != self.last_label or label == "shift"):
            detail = {"index": index, **{k: round(v, 4) for k, v in scores.items()}}
            findings.append(self._finding(label, conf, ts, index, _EXPLAIN[label], detail))
        g_now = scores.get("g_occ", 1.0)
        if "noise" in scores and "noise" not in cand:
            self.noise_recent += cfg.noise_recent_alpha * (scores["noise"] - self.noise_recent)
        self._learn(m, label, cand, still, scores, al, g_now)
        self.last_gain = 1.0 if label == "shift" else g_now
        self.last_label = label
        self.prev = m
        return SnapshotResult(index, ts, label, conf, activity, objects, findings, scores)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume this analyser elsewhere (numpy arrays and plain values)."""
        return {k: getattr(self, k) for k in _STATE_KEYS}

    @classmethod
    def from_state(cls, device_id: str, state: dict[str, Any], config: CameraConfig | None = None,
                   ) -> CameraAnalyser:
        """Rebuild an analyser from :meth:`state_dict` output."""
        an = cls(device_id, config)
        for k in _STATE_KEYS:
            if k in state:  # a state saved before a key was added keeps its initial value
                setattr(an, k, state[k])
        return an

    def memory_bytes(self) -> int:
        """Approximate memory held by the learned state, in bytes."""
        total = 0
        for v in self.state_dict().values():
            if isinstance(v, np.ndarray):
                total += v.nbytes
            elif isinstance(v, (Ref, Measures)):
                total += v.nbytes()
            else:
                total += 64
        return total

    # ------------------------------------------------------------------ internals
    def _warm(self, m: Measures) -> bool:
        """Whether the reference is ready: learned long enough, and it explains the current view.

        A reference learned while the camera's exposure was still settling, or with a car that has
        since left, predicts the scene badly; it keeps learning until it fits once. From then on
        a poor fit is evidence of a fault, not immaturity.
        """
        ref = self.ref
        if self.ready:
            return True
        if ref is None or self.n_learned < self.cfg.warmup or ref.coverage() < 0.6:
            return False
        fit = float(ev.match_cells(m, ref, ev.gain(m, ref)).mean())
        self.ready = fit >= self.cfg.warm_fit
        return self.ready

    def _still(self, m: Measures) -> bool:
        """Whether nothing changed since the previous snapshot beyond JPEG re-encoding."""
        if self.prev is None:
            return False
        changed = changed_map(m, self.prev, self.cfg)
        if changed is not None:
            # a burnt-in clock keeps ticking on a stalled picture: its blocks do not count
            self._zone = self.freeze.overlay(self.cfg)
            n = self._changed = self.freeze.outside(changed, self.cfg, self._zone)
            return n == 0
        self._changed = -1
        self._zone = None
        # no JPEG block grid (the picture was resized after decoding): thumbnail pixels instead
        d = np.abs(m.thumb - self.prev.thumb)
        return int(np.count_nonzero(d > self.cfg.still_level)) <= self.cfg.still_pixels

    def _shift(self, m: Measures, al: Alignment, cand: dict[str, float], strong: set[str],
               scores: dict[str, float]) -> None:
        """Turn an alignment into a shift candidate.

        Either a moved copy of the reference explains the view, or, when no transform is found
        (a flat scene, a turn the search does not try), the scene stopped matching the reference
        and the new view is steady from one snapshot to the next: it changed and stayed changed.
        """
        cfg = self.cfg
        lift = al.c - al.c0
        typ = self.spreads["ncc"]
        mismatch = typ.n >= cfg.spread_warmup and al.c0 < typ.level - max(cfg.shift_mismatch, 3.0 * typ.dev)
        scores.update(ncc0=al.c0, ncc=al.c, lift=lift, dx=al.dx, dy=al.dy, angle=al.angle, disp=al.disp,
                      mismatch=float(mismatch))
        if not (al.moved(cfg) and lift >= cfg.shift_gain and al.c >= cfg.shift_match):
            # a moved copy found lately still explains a view that keeps mismatching (snow or shake
            # can hide it from one snapshot's search)
            held = self.align if mismatch and self.align is not None and self.align.overlap >= 0.5 else None
            self.align = held
            if mismatch and not cand:  # nothing else explains it (a cover, blur, a dark picture)
                # steady: the new view matches itself as well as the old one matched the reference
                steady = held is not None or (
                    self.prev is not None
                    and self_match(m, self.prev) >= max(cfg.shift_steady, typ.level - cfg.shift_mismatch / 2))
                if steady or not self.streak.get("shift"):
                    cand["shift"] = 0.6  # needs confirming: the first snapshot, then a steady second
            return
        cand["shift"] = ev.sig(3.0 * (lift - cfg.shift_gain) + al.disp)
        typical = self.spreads["ncc"].level
        # a camera shaking in the wind moves by random offsets that average out around its view: a
        # re-pointing must stand out of that jitter (sure: several times its size; otherwise it
        # must hold for one snapshot more)
        shake = float(np.sqrt(self.jitter))
        scores["jitter"] = shake
        shaky = shake >= cfg.jitter_px
        if (lift >= cfg.shift_sure and al.c >= min(typical, 0.9) - 0.2
                and al.disp >= cfg.shift_sure_px * (2.0 if shaky else 1.0)
                and math.hypot(al.dx, al.dy) >= cfg.jitter_sure * shake):
            strong.add("shift")
        elif not al.agrees(self.align):
            self.streak["shift"] = 0  # a different displacement than last time: start again
        self.align = al

    def _occlusion(self, m: Measures, covered: np.ndarray, scores: dict[str, float], cand: dict[str, float],
                   strong: set[str]) -> None:
        """A cover appears at once over cells that were not covered before, then stays put.

        Cells that have looked covered for a while are the reference's fault (a parked car that
        left, say), not the lens's; a cover being tracked must keep most of its cells, and their
        grey levels (a car moves on, a cover does not).
        """
        cfg = self.cfg
        if self.occ_mask is not None and self.prev is not None:
            mask = self.occ_mask
            n_mask = int(np.count_nonzero(mask))
            level = np.abs(m.fine_mean - self.prev.fine_mean)[mask]
            steady = median(level) if n_mask else 99.0
            if (np.count_nonzero(covered & mask) >= cfg.occlusion_overlap * n_mask
                    and steady <= 3.0 + 0.1 * median(m.fine_mean[mask])):
                share = n_mask / covered.size
                cand["occlusion"] = ev.sig(4.0 * (share - cfg.occlusion_share))
                return
            self.occ_mask = None
        new = covered & (self.cover_rate < 0.5)
        share = float(new.mean())
        scores["covered_new"] = share
        if share < cfg.occlusion_share or self.ref is None:
            return
        if scores["untouched"] < 0.05 and share < cfg.occlusion_alone:
            # nothing of the view left as it was: a global change, unless the cover is most of it
            return
        if share < cfg.occlusion_rim_share:
            # a modest new flat region must bring an outline with it (a departed car takes one away)
            edge = scores["cover_edge"] = ev.cover_edge(m, self.ref, new)
            if edge < cfg.occlusion_edge:
                return
        cand["occlusion"] = ev.sig(4.0 * (share - cfg.occlusion_share))
        self.occ_mask = new
        if share >= cfg.occlusion_sure:
            strong.add("occlusion")

    def _confirm(self, cand: dict[str, float], strong: set[str]) -> tuple[str, float]:
        """Apply per-fault confirmation counts and the priority order."""
        cfg = self.cfg
        for name in PRIORITY:
            self.streak[name] = self.streak.get(name, 0) + 1 if name in cand else 0
        need = {"occlusion": cfg.occlusion_confirm, "blur": cfg.blur_confirm,
                "shift": cfg.shift_confirm + (1 if self.jitter >= cfg.jitter_px ** 2 else 0),  # (see _shift)
                "brightness": cfg.brightness_confirm, "noise": 2}
        for name in PRIORITY:
            if name in cand and (name in strong or self.streak[name] >= need.get(name, 1)):
                return name, round(float(cand[name]), 3)
        return "ok", round(1.0 - max(cand.values(), default=0.0) * 0.5, 3)

    def _suspect(self, scores: dict[str, float]) -> bool:
        """Scores halfway to a fault: do not learn this snapshot into the reference."""
        if scores.get("blur", 0.0) < 0.5 * scores.get("blur_thr", -1.0):
            return True
        if scores.get("noise", 0.0) > 0.5 * scores.get("noise_thr", 1.0):
            return True
        if scores.get("mismatch"):
            return True  # the view no longer matches the reference: do not learn it before it is judged
        return scores.get("lift", 0.0) >= 0.5 * self.cfg.shift_gain and scores.get("disp", 0.0) >= self.cfg.shift_px

    def _learn(self, m: Measures, label: str, cand: dict[str, float], still: bool, scores: dict[str, float],
               al: Alignment | None, g_now: float) -> None:
        """Update the learned state after a snapshot."""
        healthy = label == "ok" and not cand
        self.freeze.update(still, healthy, label == "freeze", self._changed, self.cfg.still_flicker)
        if label == "ok" and al is not None and al.searched:
            self._learn_jitter(al, "shift" in cand)
        if label == "shift":
            # A re-pointing is reported once, then the new view becomes the reference.
            self.ref = Ref(m)
            self.n_learned = 1
            self.ready = False
            self.exposure = 1.0
            self.streak.clear()
            self.align = None
            self.spreads["ncc"] = _spreads()["ncc"]
            return
        if "occlusion" not in cand:
            self.occ_mask = None
        if not healthy:
            return  # never learn a suspect snapshot
        if "g_occ" in scores:
            self.exposure += self.cfg.exposure_alpha * (scores["g_occ"] - self.exposure)
        # a score beyond its threshold is learned as if at the threshold: a fault that misses its
        # other tests (a blur seen through a shaking view) must not widen its own threshold at once,
        # while a lasting change (rain softening the view) still widens it, step by step
        if "blur" in scores:
            self.spreads["blur"].update(max(scores["blur"], scores.get("blur_thr", -9.0)))
        if "noise" in scores:
            self.spreads["noise"].update(min(scores["noise"], scores.get("noise_thr", 9.0)))
            self._learn_noise_q(m.dc_q, min(scores["noise"] + scores.get("noise_q", 0.0), scores.get("noise_thr", 9.0)))

        if self._suspect(scores):
            return  # a view that may be moved neither teaches the usual match nor the background
        if al is not None:
            self.spreads["ncc"].update(al.c0)
        if self.ref is None:
            self.ref = Ref(m)
        elif self.prev is not None:
            self.ref.update(m, self.prev, self.cfg, g_now, self.last_gain, self.jitter >= self.cfg.jitter_learn ** 2)
        self.n_learned += 1

    def _learn_jitter(self, al: Alignment, candidate: bool) -> None:
        """Learn the wind shake from the displacements of ok snapshots whose view matched poorly in place.

        A displacement large enough to be a shift candidate is learned only once the next snapshot
        shows it was passing (a re-pointing persists, and must not teach the camera to shake).
        """
        def learn(a: Alignment) -> None:
            moved = min(a.dx * a.dx + a.dy * a.dy, _JITTER_CAP) if a.c > a.c0 else 0.0
            self.jitter += self.cfg.jitter_alpha * (moved - self.jitter)

        wait, self.jitter_wait = self.jitter_wait, None
        if wait is not None and not (candidate and math.hypot(al.dx - wait.dx, al.dy - wait.dy)
                                     <= max(1.5, 0.5 * math.hypot(wait.dx, wait.dy))):
            learn(wait)  # it went away, or jumped elsewhere: a shake
        if candidate:
            self.jitter_wait = al
        else:
            learn(al)

    def _noise_q_offset(self, dc_q: int) -> float:
        """Grain a finer quantiser than usual lets through, as this camera has shown it (>= 0)."""
        n, mx, _, vx, cxy = self.noise_q
        if n < self.cfg.spread_warmup or vx < 0.02:
            return 0.0
        slope = min(0.0, cxy / vx)  # finer quantiser (smaller log dc_q), more grain
        return float(max(0.0, slope * (np.log(max(dc_q, 1)) - mx)))

    def _learn_noise_q(self, dc_q: int, y: float) -> None:
        q = self.noise_q
        q[0] += 1
        a = max(0.1, 1.0 / q[0])
        x = float(np.log(max(dc_q, 1)))
        dx, dy = x - q[1], y - q[2]
        q[1] += a * dx
        q[2] += a * dy
        q[3] += a * ((1 - a) * dx * dx - q[3])
        q[4] += a * ((1 - a) * dx * dy - q[4])

    def _finding(self, kind: str, conf: float, ts: datetime, index: int, text: str,
                 detail: dict[str, Any]) -> Finding:
        return Finding(self.device_id, "snapshot", ts, kind, float(conf), text, {"index": index, **detail})


def _digest(jpeg: bytes) -> bytes:
    return hashlib.blake2b(jpeg, digest_size=_DIGEST).digest()


_DIGEST = 8  # bytes of a picture's digest
_RECENT = 64  # pictures whose digests are kept (replayed): five minutes of snapshots every 5 s
_STATE_KEYS = ("n_seen", "n_learned", "ready", "ref", "prev", "prev_hash", "digests", "freeze", "spreads", "align",
               "cover_rate", "occ_mask", "streak", "last_label", "last_gain", "exposure", "noise_recent", "noise_q",
               "jitter", "jitter_wait")
_JITTER_CAP = 9.0  # square thumbnail px: one big jolt teaches no more than a 3-pixel one
