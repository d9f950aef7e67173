"""The "wild" camera evaluation set: the kit's clips and faults under street-camera nuisances.

    python benchmarks/camera_wild.py --seed 5 --out /tmp/camwild      # -> sequences/ + labels.jsonl

Our own generator (the kit's ``make_eval.py`` is only borrowed for clip loading, the crop window
and the standard fault injection, so faults are exactly the kit's). Every sequence gets one
nuisance at one of three strengths, and most get a burnt-in date/time overlay that ticks with
every snapshot (a recorder or IP camera stamps it on the picture, so it keeps ticking on a
stalled picture):

================  ====================================================================
``overlay``       the ticking clock alone
``rain``          slanted bright streaks redrawn each snapshot, slight softening, lower
                  contrast; half the sequences start raining mid-way (ramping in over a
                  few snapshots)
``snow``          drifting flakes, haze (lifted blacks, lower contrast), slight softening
``shake``         wind on the pole: a small random translation every snapshot (zero mean)
``dusk``          the light falls over the sequence while sensor gain (noise) rises; at
                  strength 2-3 the IR-cut filter switches and the picture turns grey
``compress``      JPEG quality steps down mid-way and keeps wandering
``static``        clean only: one frame of a clip held for the whole sequence (an empty
                  corridor at night) with the clock ticking and faint sensor noise, a
                  camera static by nature that must not be called frozen
================  ====================================================================

A freeze repeats the last live picture under the still-ticking clock (the stream stalls before
the overlay is burnt in), re-encoded at a new quality each snapshot. Video loss keeps the clock
too (the camera's encoder still stamps its blue or black screen). Faults are the kit's standard
strengths (``--fault-profile hard`` for milder ones), injected after the weather and before the
overlay. Labels carry ``nuisance``, ``strength`` and ``overlay`` for the per-nuisance report.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any

import cv2
import numpy as np

KIT = Path("/work/shared/eval/camera")
NUISANCES = ("overlay", "rain", "snow", "shake", "dusk", "compress")
FAULTS = ("blur", "occlusion", "freeze", "black", "shift", "brightness", "noise")


def kit_module(kit: Path = KIT) -> ModuleType:
    """The kit's ``make_eval.py`` as a module (clip loading, crop window, fault injection)."""
    spec = importlib.util.spec_from_file_location("camera_kit_make_eval", kit / "make_eval.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Overlay:
    """A burnt-in date and time, as recorders draw it, ticking by ``period_s`` per snapshot."""

    def __init__(self, rng: np.random.Generator, w: int, h: int) -> None:
        self.t0 = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(seconds=int(rng.integers(0, 300 * 86400)))
        self.period = int(rng.choice([1, 2, 3, 5, 5, 7, 10, 15]))
        self.scale = max(0.3, h / 480.0 * float(rng.uniform(0.7, 1.1)))
        self.thick = 1 if self.scale < 0.6 else 2
        self.outline = bool(rng.random() < 0.6)
        self.fmt = str(rng.choice(["%Y-%m-%d %H:%M:%S", "%d/%m/%Y %H:%M:%S", "%Y-%m-%d %a %H:%M:%S"]))
        self.name = str(rng.choice(["", "CAM 07", "NGA TU 3", "KHU A - CONG"]))
        (tw, th), _ = cv2.getTextSize(self._text(0), cv2.FONT_HERSHEY_SIMPLEX, self.scale, self.thick)
        margin = max(4, h // 40)
        top = bool(rng.random() < 0.7)
        left = bool(rng.random() < 0.6)
        self.org = (margin if left else max(0, w - tw - margin), margin + th if top else h - margin)
        (nw, _), _ = cv2.getTextSize(self.name, cv2.FONT_HERSHEY_SIMPLEX, self.scale, self.thick)
        self.name_org = (margin if not left else max(0, w - nw - margin), h - margin if top else margin + th)
        self.colour = float(rng.uniform(200, 255))

    def _text(self, i: int) -> str:
        return (self.t0 + timedelta(seconds=self.period * i)).strftime(self.fmt)

    def draw(self, img: np.ndarray, i: int) -> np.ndarray:
        """Draw the clock of snapshot ``i`` (and the camera name) on a uint8 BGR picture."""
        out = img.copy()
        for text, org in ((self._text(i), self.org), (self.name, self.name_org)):
            if not text:
                continue
            if self.outline:
                cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, self.scale, (0, 0, 0), self.thick + 2,
                            cv2.LINE_AA)
            cv2.putText(out, text, org, cv2.FONT_HERSHEY_SIMPLEX, self.scale, (self.colour,) * 3, self.thick,
                        cv2.LINE_AA)
        return out


class Weather:
    """One nuisance at one strength (1-3) over a sequence of ``n`` snapshots."""

    def __init__(self, kind: str, strength: int, rng: np.random.Generator, w: int, h: int, n: int) -> None:
        self.kind, self.s, self.w, self.h, self.n = kind, strength, w, h, n
        self.p: dict[str, Any] = {}
        s = strength
        if kind in ("rain", "snow"):
            late = rng.random() < 0.5
            self.p["start"] = int(rng.integers(5, n // 2)) if late else 0
            self.p["ramp"] = int(rng.integers(2, 6)) if late else 0
            self.p["soften"] = 0.25 + 0.25 * s + float(rng.uniform(-0.1, 0.1))
            self.p["contrast"] = 1.0 - 0.1 * s - float(rng.uniform(0, 0.05))
            self.p["count"] = int(w * h / 640 / 360 * (120 if kind == "rain" else 150) * s)
            self.p["angle"] = float(rng.uniform(60, 85) * rng.choice([-1, 1]))
        elif kind == "shake":
            self.p["shake"] = 0.004 * s * float(rng.uniform(0.8, 1.2))  # share of the picture size
        elif kind == "dusk":
            self.p["end_gain"] = {1: 0.55, 2: 0.4, 3: 0.28}[s] * float(rng.uniform(0.9, 1.1))
            self.p["noise"] = 1.5 * s + float(rng.uniform(0, 1.0))
            self.p["ir_at"] = int(rng.integers(int(0.55 * n), int(0.8 * n))) if s >= 2 else None
            self.p["ir_gain"] = float(rng.uniform(0.6, 0.9))
        elif kind == "compress":
            self.p["step_at"] = int(rng.integers(8, n - 8))
            self.p["low_q"] = {1: 50, 2: 35, 3: 20}[s]
        self.offsets = rng.normal(0, 1, (n, 2)) if kind == "shake" else None

    def offset(self, i: int) -> tuple[float, float]:
        """Crop-window displacement (pixels) of snapshot ``i`` (wind shake only)."""
        if self.offsets is None:
            return 0.0, 0.0
        sg = self.p["shake"]
        return float(self.offsets[i, 0] * sg * self.w), float(self.offsets[i, 1] * sg * self.h)

    def level(self, i: int) -> float:
        """How much of the weather is present at snapshot ``i`` (0..1)."""
        st, ramp = self.p.get("start", 0), self.p.get("ramp", 0)
        if i < st:
            return 0.0
        return 1.0 if ramp == 0 else min(1.0, (i - st + 1) / ramp)

    def quality(self, i: int, rng: np.random.Generator) -> int:
        """JPEG quality of snapshot ``i``."""
        if self.kind == "compress" and i >= self.p["step_at"]:
            lo = self.p["low_q"]
            return int(rng.integers(lo, lo + 15))
        return int(rng.integers(75, 96))

    def apply(self, img: np.ndarray, i: int, rng: np.random.Generator) -> np.ndarray:
        """The nuisance on one float BGR picture (before any fault)."""
        k = self.kind
        if k in ("rain", "snow"):
            a = self.level(i)
            if a <= 0:
                return img
            sigma = self.p["soften"] * a
            out = cv2.GaussianBlur(img, (0, 0), sigma) if sigma > 0.2 else img.copy()
            c = 1.0 - (1.0 - self.p["contrast"]) * a
            mean = float(out.mean())
            out = mean + (out - mean) * c
            if k == "snow":
                out = out + 25.0 * a * self.s / 3.0  # haze lifts the blacks
            return self._particles(out, a, rng)
        if k == "dusk":
            t = i / max(1, self.n - 1)
            g = 1.0 + (self.p["end_gain"] - 1.0) * t
            sd = self.p["noise"] * t
            out = img * g
            ir = self.p["ir_at"]
            if ir is not None and i >= ir:
                grey = cv2.cvtColor(np.clip(img, 0, 255).astype(np.uint8), cv2.COLOR_BGR2GRAY).astype(np.float32)
                out = np.repeat((grey * self.p["ir_gain"])[..., None], 3, axis=2)
                sd = 0.6 * self.p["noise"]
            if sd > 0:
                noise = rng.normal(0, sd, img.shape[:2]).astype(np.float32)  # luminance grain
                out = out + noise[..., None]
            return out
        return img

    def _particles(self, img: np.ndarray, a: float, rng: np.random.Generator) -> np.ndarray:
        n = int(self.p["count"] * a)
        layer = np.zeros(img.shape[:2], np.float32)
        xs = rng.uniform(0, self.w, n)
        ys = rng.uniform(0, self.h, n)
        if self.kind == "rain":
            ang = math.radians(self.p["angle"])
            length = rng.uniform(0.02, 0.06, n) * self.h
            for x, y, ln in zip(xs, ys, length, strict=True):
                x2, y2 = x + ln * math.cos(ang), y + ln * math.sin(abs(ang))
                cv2.line(layer, (int(x), int(y)), (int(x2), int(y2)), float(rng.uniform(0.25, 0.6)), 1, cv2.LINE_AA)
        else:
            rad = np.maximum(1, (rng.uniform(0.5, 1.0, n) * self.h / 120)).astype(int)
            for x, y, r in zip(xs, ys, rad, strict=True):
                cv2.circle(layer, (int(x), int(y)), int(r), float(rng.uniform(0.5, 0.9)), -1, cv2.LINE_AA)
        layer = layer[..., None]
        return img * (1 - layer) + 235.0 * layer


def _render(kit: ModuleType, rng: np.random.Generator, fault: str, nuisance: str, strength: int,
            overlay: bool, frames: list[np.ndarray], n: int) -> dict[str, Any]:
    """One sequence: frames (uint8 BGR), JPEG qualities, onset, visibility."""
    big_h, big_w = frames[0].shape[:2]
    static = nuisance == "static"
    max_stride = max(1, (len(frames) - 1) // (n - 1))
    stride = int(rng.integers(max(1, (max_stride + 1) // 2), max_stride + 1))
    start = int(rng.integers(0, len(frames) - stride * (n - 1)))
    src = [start + (0 if static else k * stride) for k in range(n)]
    cw = round(big_w * kit.CROP) // 2 * 2
    ch = round(big_h * kit.CROP) // 2 * 2
    cx0 = big_w / 2 + rng.uniform(-0.05, 0.05) * big_w
    cy0 = big_h / 2 + rng.uniform(-0.05, 0.05) * big_h
    onset = None if fault == "none" else int(rng.integers(12, 31))
    flt = kit.Fault(fault, rng, cw, ch) if fault not in ("none", "freeze") else None
    shift = (0.0, 0.0, 0.0)
    if fault == "shift":
        assert flt is not None
        shift = (flt.p["dx"], flt.p["dy"], flt.p["rotation_deg"])
    weather = Weather("overlay" if static else nuisance, strength, rng, cw, ch, n)
    ov = Overlay(rng, cw, ch) if overlay else None
    sensor = float(rng.uniform(0.5, 1.0)) * strength if static else 0.0

    def scene(i: int, moved: bool) -> np.ndarray:
        ox, oy = weather.offset(i)
        dx, dy, ang = shift if moved else (0.0, 0.0, 0.0)
        m = kit.window_matrix(cx0 + ox + dx, cy0 + oy + dy, cw, ch, ang)
        img = kit.crop(frames[src[i]], m, cw, ch).astype(np.float32)
        if sensor > 0:
            img = img + rng.normal(0, sensor, img.shape[:2]).astype(np.float32)[..., None]
        return weather.apply(img, i, rng)

    out, vis, qual = [], [], []
    frozen: np.ndarray | None = None
    last = np.zeros((ch, cw, 3), np.float32)  # the previous picture before its overlay
    for i in range(n):
        true = scene(i, False)
        if onset is None or i < onset:
            img = true
        elif fault == "freeze":
            if frozen is None:
                frozen = last
            img = frozen
            vis.append(kit.changed_frac(img, true))
        elif fault == "shift":
            img = scene(i, True)
            vis.append(kit.changed_frac(img, true))
        else:
            assert flt is not None
            img = flt.apply(true, rng)
            vis.append(1.0 - kit.lap_var(img) / (kit.lap_var(true) + 1e-6) if fault == "blur"
                       else kit.changed_frac(img, true))
        last = img
        pic = np.clip(np.round(img), 0, 255).astype(np.uint8)
        out.append(ov.draw(pic, i) if ov is not None else pic)
        qual.append(weather.quality(i, rng))
    if onset is None:
        score, ok = 1.0, True
    else:
        score = float(np.mean(vis))
        need = {"freeze": 0.02, "shift": kit.P["vis_shift"], "blur": kit.P["vis_blur"]}.get(fault, 0.2)
        ok = score >= need
    return {"frames": out, "quality": qual, "onset": onset, "start": start, "stride": stride, "size": [cw, ch],
            "params": {**(flt.p if flt else {}), **weather.p, "overlay_period_s": ov.period if ov else None},
            "vis": score, "visible": ok}


def plan(rng: np.random.Generator, names: list[str], per_fault: int, clean_each: int) -> list[tuple[str, str, int]]:
    """(fault, nuisance, strength) per sequence: every fault under every nuisance; clean under each."""
    combos = [(nu, s) for nu in NUISANCES for s in (1, 2, 3)]
    out: list[tuple[str, str, int]] = []
    for f in FAULTS:
        pick = rng.permutation(len(combos))
        for k in range(per_fault):
            nu, s = combos[pick[k % len(combos)]]
            out.append((f, nu, s))
    for nu, s in combos:
        out += [("none", nu, s)] * clean_each
    out += [("none", "static", s) for s in (1, 2, 3) for _ in range(max(1, clean_each))]
    return [out[i] for i in rng.permutation(len(out))]


def generate(seed: int, out: Path, length: int = 40, per_fault: int = 12, clean_each: int = 2,
             fault_profile: str = "standard", kit_dir: Path = KIT, quiet: bool = True) -> Path:
    """Write ``out/sequences/<seq>/<index>.jpg`` and ``out/labels.jsonl``; returns the labels path."""
    kit = kit_module(kit_dir)
    kit.P = kit.PROFILES[fault_profile]  # type: ignore[attr-defined]
    rng = np.random.default_rng(seed)
    clips: dict[str, list[np.ndarray]] = {}
    for name in kit.CLIPS:
        p = kit_dir / "videos" / name
        if p.exists():
            frames, _ = kit.load_clip(str(p))
            if len(frames) >= length:
                clips[name] = frames
    names = sorted(clips)
    seq_dir = out / "sequences"
    if seq_dir.exists():
        shutil.rmtree(seq_dir)
    seq_dir.mkdir(parents=True)
    labels = []
    for si, (fault, nuisance, strength) in enumerate(plan(rng, names, per_fault, clean_each)):
        overlay = nuisance in ("overlay", "static") or fault == "freeze" or rng.random() < 0.6
        clip = str(rng.choice(names))
        for tries in range(1, 26):
            res = _render(kit, rng, fault, nuisance, strength, overlay, clips[clip], length)
            if res["visible"]:
                break
            if tries % 5 == 0:
                clip = str(rng.choice(names))
        seq = f"seq{si:03d}"
        (seq_dir / seq).mkdir()
        for i, (img, q) in enumerate(zip(res["frames"], res["quality"], strict=True)):
            cv2.imwrite(str(seq_dir / seq / f"{i:03d}.jpg"), img, [cv2.IMWRITE_JPEG_QUALITY, q])
        rec = {"sequence": seq, "fault": fault, "onset_index": res["onset"], "n_frames": length, "clip": clip,
               "nuisance": nuisance, "strength": strength, "overlay": overlay, "start_frame": res["start"],
               "stride": res["stride"], "size": res["size"], "visibility": round(res["vis"], 4),
               "params": {k: (round(v, 4) if isinstance(v, float) else v) for k, v in res["params"].items()},
               "profile": f"wild-{fault_profile}"}
        labels.append(rec)
        if not quiet:
            print(f"{seq} {fault:10s} {nuisance:8s} s={strength} overlay={int(overlay)} onset={res['onset']} "
                  f"clip={clip} vis={res['vis']:.3f}")
    path = out / "labels.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in labels))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--length", type=int, default=40)
    ap.add_argument("--per-fault", type=int, default=12)
    ap.add_argument("--clean-each", type=int, default=2, help="clean sequences per nuisance and strength")
    ap.add_argument("--fault-profile", choices=("standard", "hard"), default="standard")
    ap.add_argument("--kit", type=Path, default=KIT)
    args = ap.parse_args()
    labels = generate(args.seed, args.out, args.length, args.per_fault, args.clean_each, args.fault_profile,
                      args.kit, quiet=False)
    print("wrote", labels)


if __name__ == "__main__":
    main()
