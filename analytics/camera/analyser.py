"""Per-camera snapshot analyser: learns the camera's normal scene and labels each snapshot.

Usage::

    an = CameraAnalyser("cam-17")
    res = an.analyse(jpeg_bytes, ts)      # -> SnapshotResult(label, confidence, activity, findings)

The analyser holds only small arrays (a 96x72 reference thumbnail, per-cell statistics, the
previous thumbnail and a sparse noise probe), about 50 KB; ``state_dict()`` / ``from_state()``
move it between processes.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import cv2
import numpy as np

from analytics.camera import evidence as ev
from analytics.camera.config import CameraConfig
from analytics.camera.features import Measures, decode_work, measure
from analytics.findings import Finding

LABELS = ("ok", "black", "freeze", "blur", "occlusion", "shift", "brightness", "noise")
# When several faults are seen at once, report the one that explains the others.
PRIORITY = ("black", "freeze", "brightness", "noise", "occlusion", "shift", "blur")
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


class CameraAnalyser:
    """Stateful per-camera fault and activity analyser (pure: bytes in, result out)."""

    def __init__(self, device_id: str, config: CameraConfig | None = None) -> None:
        self.device_id = device_id
        self.cfg = config or CameraConfig()
        self.n_seen = 0  # snapshots analysed
        self.n_learned = 0  # snapshots learned into the reference
        self.ref: ev.Ref | None = None
        self.prev: Measures | None = None
        self.prev_hash = b""
        self.anchor: np.ndarray | None = None  # thumbnail at the start of the current still spell
        self.spell = 0  # snapshots in the current still spell
        self.spell_alarm = False  # the current still spell was reported as a freeze
        self.max_spell = 0  # longest still spell that ended healthily
        self.n_spells = 0  # healthy still spells seen
        self.acts = np.full(32, np.nan, np.float32)  # recent healthy activity levels (ring)
        self.last_act = 0.0  # activity of the last moving snapshot
        self.floors = np.full(9, np.nan, np.float32)  # temporal noise of recent still healthy snapshots
        self.streak: dict[str, int] = {}
        self.last_label = "ok"

    # ------------------------------------------------------------------ public API
    def analyse(self, jpeg: bytes, ts: datetime) -> SnapshotResult:
        """Analyse one JPEG snapshot; snapshots must come in time order."""
        index = self.n_seen
        self.n_seen += 1
        work = decode_work(jpeg)
        if work is None:
            f = self._finding("black", 1.0, ts, index, "Snapshot does not decode as a JPEG.", {})
            return SnapshotResult(index, ts, "black", 1.0, 0.0, 0, [f])
        digest = hashlib.blake2b(jpeg, digest_size=8).digest()
        same_bytes = digest == self.prev_hash
        self.prev_hash = digest
        return self.analyse_measures(measure(work), ts, index, same_bytes)

    def analyse_measures(self, m: Measures, ts: datetime, index: int, same_bytes: bool = False) -> SnapshotResult:
        """Analyse already-measured snapshot (used by :meth:`analyse`)."""
        cfg = self.cfg
        cand: dict[str, float] = {}  # fault -> confidence, before confirmation
        scores: dict[str, float] = {"mean": m.mean, "contrast": m.contrast}
        black = ev.black(m, self.ref, cfg)
        if black > 0:
            cand["black"] = black
        activity, objects = ev.activity(m, self.prev, self.ref, cfg)
        still, noise_level = self._still(m)
        scores.update(activity=activity, still=float(still), spell=float(self.spell), tnoise=noise_level)
        warm = self.ref is not None and self.n_learned >= cfg.warmup and self.ref.coverage() >= 0.6
        if warm and self.ref is not None:
            fz = self._freeze(still, same_bytes, noise_level)
            if fz > 0:
                cand["freeze"] = fz
            cmp = ev.compare(m, self.ref, cfg)
            scores.update(cmp.scores)
            for name, conf in cmp.candidates.items():
                cand.setdefault(name, conf)
        label, conf = self._confirm(cand, scores)
        findings: list[Finding] = []
        if label != "ok" and (label != self.last_label or label == "shift"):
            detail = {"index": index, **{k: round(v, 4) for k, v in scores.items()}}
            findings.append(self._finding(label, conf, ts, index, _EXPLAIN[label], detail))
        self._learn(m, label, cand, still, activity)
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
            setattr(an, k, state[k])
        return an

    def memory_bytes(self) -> int:
        """Approximate memory held by the learned state, in bytes."""
        total = 0
        for v in self.state_dict().values():
            if isinstance(v, np.ndarray):
                total += v.nbytes
            elif isinstance(v, ev.Ref):
                total += v.nbytes()
            elif isinstance(v, Measures):
                total += sum(getattr(v, a).nbytes for a in ("thumb", "probe", "cell_mean", "cell_coarse",
                                                             "cell_fine", "cell_noise"))
            else:
                total += 16
        return total

    # ------------------------------------------------------------------ internals
    def _still(self, m: Measures) -> tuple[bool, float]:
        """Whether nothing moved since the still-spell anchor, and the temporal noise level."""
        if self.prev is None:
            return False, 0.0
        d = np.abs(m.probe.astype(np.int16) - self.prev.probe.astype(np.int16))
        # clipped mean: sensor noise counts, edges of moving objects do not dominate
        noise_level = float(np.minimum(d, 8).mean())
        if self.anchor is None:
            self.anchor = _u8(self.prev.thumb)
        changed = int(np.count_nonzero(cv2.absdiff(_u8(m.thumb), self.anchor) > self.cfg.still_level))
        return changed <= self.cfg.still_pixels, noise_level

    def _freeze(self, still: bool, same_bytes: bool, noise_level: float) -> float:
        """Confidence that the stream is frozen (0 if not)."""
        cfg = self.cfg
        if same_bytes:
            return 1.0
        if not still:
            return 0.0
        if self.spell_alarm:
            return 0.9  # the spell already counted as frozen: keep reporting until motion returns
        # A camera that shows sensor noise while still: the noise vanishing means a stalled stream.
        floors = self.floors[~np.isnan(self.floors)]
        if len(floors) >= 5 and float(np.median(floors)) >= 1.2 and noise_level < 0.4 * float(floors.min()):
            return 0.9
        spell = self.spell + 1
        acts = self.acts[~np.isnan(self.acts)]
        if len(acts) < cfg.freeze_history:
            return 0.0  # hardly ever seen moving: a still scene is not a frozen one
        if spell == 1:
            # A busy scene (never still, activity well above zero) that stops dead at once, right
            # after a normally busy snapshot, has stalled; quiet scenes calm down gradually.
            la = np.log(acts + 1e-3)
            z = (float(la.mean()) - math.log(1e-3)) / (float(la.std()) + 0.3)
            if z > cfg.freeze_busy_z and self.last_act >= float(np.quantile(acts, 0.25)):
                return float(min(1.0, 0.5 + 0.1 * z))
        # Otherwise only a still spell much longer than this camera's healthy ones.
        need = max(cfg.freeze_long, 2 * self.max_spell + 1)
        if self.n_spells >= 2:
            need = min(need, max(cfg.freeze_short, int(cfg.freeze_spell_factor * self.max_spell) + 1))
        if spell >= need:
            return float(min(1.0, 0.6 + 0.05 * (spell - need)))
        return 0.0

    def _confirm(self, cand: dict[str, float], scores: dict[str, float]) -> tuple[str, float]:
        """Apply per-fault confirmation counts and the priority order."""
        for name in PRIORITY:
            self.streak[name] = self.streak.get(name, 0) + 1 if name in cand else 0
        need = {"occlusion": self.cfg.occlusion_confirm, "blur": self.cfg.blur_confirm,
                "shift": 1 if scores.get("shift_strong") else self.cfg.shift_confirm,
                "brightness": 1 if scores.get("brightness_sure") else self.cfg.brightness_confirm}
        for name in PRIORITY:
            if name in cand and self.streak[name] >= need.get(name, 1):
                return name, round(float(cand[name]), 3)
        return "ok", round(1.0 - max(cand.values(), default=0.0) * 0.5, 3)

    def _learn(self, m: Measures, label: str, cand: dict[str, float], still: bool, activity: float) -> None:
        """Update the learned state after a snapshot."""
        # still-spell bookkeeping (needed whatever the label)
        if label == "freeze" and still:
            self.spell_alarm = True
        if still:
            self.spell += 1
        else:
            if label == "ok" and self.prev is not None:
                if self.spell and not self.spell_alarm:
                    self.max_spell = max(self.max_spell, self.spell)
                    self.n_spells += 1
                if not cand:
                    self.acts[self.n_seen % len(self.acts)] = activity
            self.spell = 0
            self.spell_alarm = False
            # a suspect snapshot's motion says nothing about the scene's normal pace
            self.last_act = activity if label == "ok" and not cand else 0.0
            self.anchor = _u8(m.thumb)
        if label == "shift":
            # A re-pointing is reported once, then the new view becomes the reference.
            self.ref = ev.Ref(m)
            self.n_learned = 1
            self.streak.clear()
            return
        if label != "ok" or cand:
            return  # never learn a suspect snapshot
        if still and self.prev is not None and self.n_learned > 0:
            nl = float(np.minimum(np.abs(m.probe.astype(np.int16) - self.prev.probe.astype(np.int16)), 8).mean())
            self.floors[self.n_learned % len(self.floors)] = nl
        if self.ref is None:
            self.ref = ev.Ref(m)
        elif self.prev is not None:
            self.ref.update(m, self.prev, self.cfg)
        self.n_learned += 1

    def _finding(self, kind: str, conf: float, ts: datetime, index: int, text: str,
                 detail: dict[str, Any]) -> Finding:
        return Finding(self.device_id, "snapshot", ts, kind, float(conf), text, {"index": index, **detail})


def _u8(a: np.ndarray) -> np.ndarray:
    return np.clip(a + 0.5, 0, 255).astype(np.uint8)


_STATE_KEYS = ("n_seen", "n_learned", "ref", "prev", "prev_hash", "anchor", "spell", "spell_alarm", "max_spell",
               "n_spells", "acts", "last_act",
               "floors", "streak", "last_label")
