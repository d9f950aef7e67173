"""Vectorised per-reading update of the detector bank (struct-of-arrays, one row per series).

Every function here takes the bank arrays and a set of *distinct* series rows with one reading
each, updates the state in place and returns per-reading results. Strictly causal: the score of
a reading is computed from the state before it, then the state learns from it.

One step: predict the reading with three models (no season, daily, weekly profile) and keep the
one that explains the series; turn the residual into component severities (1.0 = "detect");
calibrate the strongest against this series' own history (how rare, how it compares with the
largest one of its kind); let a reading beyond the whole range seen so far stand on its own;
raise at most one finding per episode; learn.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from analytics.numeric.art import WIN, art_step
from analytics.numeric.config import DetectorConfig
from analytics.numeric.context import context_distance
from analytics.numeric.entropy import entropy_step
from analytics.numeric.likelihood import likelihood_step
from analytics.numeric.novelty import novelty
from analytics.numeric.routine import new_rows, routine_step, scale_for

# Columns of the scalar state matrix F (float64, one row per series).
(
    N, T_FIRST, T_LAST, DT_EW, X_LAST, L0, L1, L2, LB, LS, AE0, AE1, AE2, RES, CP, CN, VS,
    REP, RUN, ANCHOR, QLO, HOLD, ALERT, MODE, AEB, M_SPIKE, M_SHIFT, M_VAR, M_OTHER, SM, M_PAT,
    AER, AESD, AESW, QHI, DLO, DHI, TOD_DAY, HKIND, T_EXT, N_EXT, TOD_SCALE, LAST_HOT,
) = range(43)
N_COLS = 43
# record column per type code: a severity is judged against the largest recent one of its group
_RECORD_COL = np.array([M_OTHER, M_SPIKE, M_SPIKE, M_SHIFT, M_VAR, M_VAR, M_OTHER, M_OTHER, M_PAT])

# Finding types, by code; the code is what ``update`` returns per reading.
TYPES = ("none", "spike", "dip", "level_shift", "variance_change", "flatline", "stuck", "drift", "pattern")
NONE, SPIKE, DIP, SHIFT, VAR_UP, FLAT, STUCK, DRIFT, PATTERN = range(9)

DAY = 86400.0
WEEK_OFFSET_DAYS = 3.0  # 1970-01-01 was a Thursday; shifting by 3 days makes bin 0 Monday 00:00
RARITY_BINS = 16
MAD_TO_SIGMA = 1.2533  # mean absolute deviation -> standard deviation for a normal distribution


@dataclass(slots=True)
class StepResult:
    """Per-reading output of one vectorised step (arrays aligned with the input readings)."""

    score: np.ndarray
    """Emitted anomaly score 0..1 (after one-alert-per-episode damping)."""
    raw: np.ndarray
    """Score before damping."""
    kind: np.ndarray
    """Type code (index into ``TYPES``) of the strongest component."""
    expected: np.ndarray
    """What the model expected for this reading."""
    spread: np.ndarray
    """Usual deviation (1 sigma) around ``expected``."""
    fired: np.ndarray
    """True where this reading raises a finding."""
    baseline: np.ndarray
    """Slow baseline (plus season) the shift and drift detectors compare with."""
    baseline_spread: np.ndarray
    """Usual deviation around ``baseline``."""
    record: np.ndarray
    """True where the reading lies beyond the range the series has covered so far."""


@dataclass(slots=True)
class _Model:
    """The prediction of one step: residuals of the three models and the one in use."""

    mode: np.ndarray
    e0: np.ndarray
    e1: np.ndarray
    e2: np.ndarray
    err: np.ndarray
    season: np.ndarray
    level: np.ndarray
    floor: np.ndarray
    sigma: np.ndarray
    z: np.ndarray
    sd: np.ndarray
    sw: np.ndarray
    bins: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _interp(prof: np.ndarray, rows: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Linear interpolation into cyclic per-row profiles; returns value, lower bin, weight."""
    nb = prof.shape[1]
    b0 = np.floor(pos).astype(np.intp)
    w = pos - b0
    b0 %= nb
    b1 = (b0 + 1) % nb
    val = prof[rows, b0] * (1.0 - w) + prof[rows, b1] * w
    return val, b0, w


def _learn_profile(prof: np.ndarray, rows: np.ndarray, b0: np.ndarray, w: np.ndarray,
                   target: np.ndarray, rate: np.ndarray) -> None:
    nb = prof.shape[1]
    b1 = (b0 + 1) % nb
    prof[rows, b0] += (rate * (1.0 - w) * (target - prof[rows, b0])).astype(prof.dtype)
    prof[rows, b1] += (rate * w * (target - prof[rows, b1])).astype(prof.dtype)


def _rarity(R: np.ndarray, rows: np.ndarray, sev: np.ndarray, decay: float) -> np.ndarray:
    """-log10 of how often this series' past severities reached ``sev``; learns ``sev``."""
    b = np.clip(np.floor(2.0 * np.log2(np.maximum(sev, 1e-9) / 0.125)), 0, RARITY_BINS - 1).astype(np.intp)
    h = R[rows].astype(np.float64)
    tail = np.cumsum(h[:, ::-1], axis=1)[:, ::-1]
    total = tail[:, 0]
    p = (tail[np.arange(len(rows)), b] + 0.5) / (total + 1.0)
    h *= decay
    h[np.arange(len(rows)), b] += 1.0
    R[rows] = h
    return -np.log10(p)


def _predict(cfg: DetectorConfig, s: np.ndarray, D: np.ndarray, W: np.ndarray, rows: np.ndarray,
             t: np.ndarray, x: np.ndarray, days: np.ndarray) -> _Model:
    """Residuals of the no-season, daily and weekly models, and the model in use."""
    sd, d0, dw = _interp(D, rows, (t % DAY) / DAY * D.shape[1])
    sw, w0, ww = _interp(W, rows, ((t / DAY + WEEK_OFFSET_DAYS) % 7.0) / 7.0 * W.shape[1])
    e0 = x - s[:, L0]
    e1 = x - (s[:, L1] + sd)
    e2 = x - (s[:, L2] + sw)
    mode = np.zeros(len(rows), dtype=np.intp)
    # a profile is used when it explains the deviations from the slow level (not judged on 1-step
    # errors alone, which a fast level keeps small even for a strong but smooth daily pattern);
    # with hysteresis a model in use keeps a margin
    keep = cfg.mode_hysteresis
    in_d = keep * (s[:, MODE] >= 1)
    use_d = ((days >= cfg.min_days_daily) & (s[:, AESD] < (cfg.season_gain + in_d) * s[:, AER])
             & (s[:, AE1] < (cfg.season_step_gain + in_d) * s[:, AE0]))
    mode[use_d] = 1
    g_w = cfg.season_gain + keep * (s[:, MODE] == 2)
    use_w = (days >= cfg.min_days_weekly) & (s[:, AESW] < g_w * np.where(use_d, s[:, AESD], s[:, AER]))
    mode[use_w] = 2
    err = np.choose(mode, (e0, e1, e2))
    level = np.choose(mode, (s[:, L0], s[:, L1], s[:, L2]))
    ae = np.choose(mode, (s[:, AE0], s[:, AE1], s[:, AE2]))
    floor = np.maximum(0.5 * s[:, RES], 1e-9 + 1e-6 * np.abs(level))
    sigma = np.maximum(MAD_TO_SIGMA * ae, floor)
    return _Model(mode=mode, e0=e0, e1=e1, e2=e2, err=err, season=np.choose(mode, (np.zeros_like(sd), sd, sw)),
                  level=level, floor=floor, sigma=sigma, z=err / sigma, sd=sd, sw=sw, bins=(d0, dw, w0, ww))


def _severities(cfg: DetectorConfig, s: np.ndarray, Hb: np.ndarray, rows: np.ndarray, x: np.ndarray, m: _Model,
                gap: np.ndarray, new: np.ndarray, warm: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Severity per component (1.0 means "detect") and the short-term state they carry forward."""
    n, z = s[:, N], m.z
    sev = np.zeros((len(rows), len(TYPES)))
    # a burst: several large residuals in a row, rarer in heavy-tailed data than one big one
    sm = np.where(gap, 0.0, s[:, SM] + cfg.burst_alpha * (np.clip(z, -20, 20) - s[:, SM]))
    bz = sm / (cfg.spike_z * np.sqrt(cfg.burst_alpha / (2.0 - cfg.burst_alpha)) * cfg.burst_k)
    sev[:, SPIKE] = np.maximum(np.maximum(z, 0.0) / cfg.spike_z * cfg.point_w, np.maximum(bz, 0.0))
    sev[:, DIP] = np.maximum(np.maximum(-z, 0.0) / cfg.spike_z * cfg.point_w, np.maximum(-bz, 0.0))
    # a burst outweighs the point when several large residuals came in a row (a collapse, not a glitch)
    burst_dom = np.abs(bz) > np.abs(z) / cfg.spike_z * cfg.point_w
    sigma_b = np.maximum(MAD_TO_SIGMA * s[:, AEB], m.floor)
    baseline = s[:, LB] + m.season
    # level shift: two-sided CUSUM of the residuals around the slow baseline
    zb = np.clip((x - baseline) / sigma_b, -cfg.huber_k, cfg.huber_k)
    restart = gap | ~warm  # nothing to compare with yet: a fresh CUSUM
    cp = np.where(restart, 0.0, np.maximum(0.0, s[:, CP] + zb - cfg.cusum_k))
    cn = np.where(restart, 0.0, np.maximum(0.0, s[:, CN] - zb - cfg.cusum_k))
    sev[:, SHIFT] = np.maximum(cp, cn) / cfg.cusum_h
    vs = np.where(gap, 1.0, s[:, VS] + cfg.var_alpha * (np.minimum(z * z, 100.0) - s[:, VS]))
    lr = np.log(np.maximum(vs, 1e-12)) / np.log(cfg.var_ratio)
    sev[:, VAR_UP] = np.maximum(lr, 0.0)
    sev[:, FLAT] = np.maximum(-lr, 0.0) * (s[:, REP] < 0.5)
    same = x == s[:, X_LAST]
    run = np.where(same & ~gap & ~new, s[:, RUN] + 1.0, 0.0)
    rep = np.clip(s[:, REP], 1e-3, 0.999)
    sev[:, STUCK] = run / np.maximum(cfg.stuck_min_run, np.log(cfg.stuck_p) / np.log(rep))
    # drift: the baseline wandered far from where it sat a long while ago, too slowly for the CUSUM
    sev[:, DRIFT] = np.where(n > 3 * cfg.warmup, np.abs(s[:, LB] - s[:, ANCHOR]) / sigma_b / cfg.drift_z, 0.0)
    sigma_c = np.maximum(MAD_TO_SIGMA * s[:, AE0], m.floor)
    full = n > Hb.shape[1]
    nn = context_distance(Hb, rows, (x - s[:, LB]).astype(np.float32), cfg.context_dim, full)
    sev[:, PATTERN] = np.where(full, nn / sigma_c / cfg.context_z, 0.0)
    carry = {"sm": sm, "cp": cp, "cn": cn, "vs": vs, "run": run, "same": same, "sigma_b": sigma_b,
             "baseline": baseline, "burst_dom": burst_dom}
    return sev, carry


def _calibrate(cfg: DetectorConfig, s: np.ndarray, R: np.ndarray, rows: np.ndarray, sev: np.ndarray,
               m: _Model, level_now: np.ndarray, dt: np.ndarray, warm: np.ndarray,
               routine: np.ndarray, novel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Type and raw score 0..1 of the strongest component, judged against this series' history.

    A ``routine`` reading (its time of day has seen as much before) is damped and sets no record."""
    ar = np.arange(len(rows))
    kind = np.argmax(sev, axis=1)
    top = sev[ar, kind]
    measured = kind.copy()  # records compare like with like, whatever the episode is named below
    # name the episode, not the point: a big residual amid many is a variance change, and a shift
    # alarm whose baseline had already wandered far from its long-term anchor is a drift
    point = (kind == SPIKE) | (kind == DIP)
    kind[point & (_var_before(cfg, s) >= cfg.var_relabel)] = VAR_UP
    wander = np.abs(s[:, LB] - s[:, ANCHOR]) > np.abs(level_now - s[:, LB])
    kind[(kind == SHIFT) & wander & (sev[:, DRIFT] >= 0.25)] = DRIFT
    # rarity: a severity this series reaches often is worth less
    rare = _rarity(R, rows, top, cfg.rarity_decay)
    factor = np.clip(rare / cfg.rarity_ref, cfg.rarity_min, cfg.rarity_max)
    if cfg.tod_novel > 0:  # new for its time of day: not discounted for being common at other hours
        factor = np.where(novel, np.maximum(factor, cfg.tod_novel), factor)
    adj = top * factor
    # records: a severity well below the largest recent one of its kind is old news. Severities are
    # in spreads of the model in use: when seasonality switches on or off the records are rescaled
    # to the new model's spread (keeping their size in the series' units); restarting them instead
    # let every flap of a borderline series re-raise routine bursts
    switched = (s[:, N] > 0) & (m.mode != s[:, MODE])
    prev_ae = np.choose(s[:, MODE].astype(np.intp), (s[:, AE0], s[:, AE1], s[:, AE2]))
    ratio = np.where(switched, np.maximum(MAD_TO_SIGMA * prev_ae, m.floor) / m.sigma, 1.0)
    s[:, M_SPIKE:M_OTHER + 1] *= ratio[:, None]
    rcol = _RECORD_COL[measured]
    adj = adj * np.clip(top / np.maximum(s[ar, rcol], 1e-9), 0.0, 1.0) ** cfg.record_power
    fade = _fade(cfg.record_tau_s, dt)
    s[:, M_SPIKE:M_OTHER + 1] *= fade[:, None]
    s[:, M_PAT] *= fade
    # early severities reflect an unconverged model, not the series; a routine one says nothing of the rare
    s[ar, rcol] = np.where(warm & ~routine, np.maximum(s[ar, rcol], top), s[ar, rcol])
    raw = adj / (1.0 + adj)
    raw = np.where(routine, raw * cfg.tod_damp, raw)
    raw[~warm] = 0.0
    kind[raw <= 0.0] = NONE
    return kind, raw


def _routine(cfg: DetectorConfig, s: np.ndarray, E: np.ndarray, rows: np.ndarray, t: np.ndarray, x: np.ndarray,
             m: _Model, new: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Readings whose deviation from the slow level this time of day has seen before (``routine.py``), for a
    series with a time of day at all: its daily profile explains at least a little (``tod_gain``), in use or not.
    A rush hour's jam, and the level shift its tail would raise, are then routine; a jam at noon is not.
    Also returns how many spreads outside every earlier day's envelope each reading lies (NaN: no time of day,
    or no earlier day seen at this hour), for the novelty of the ninth round."""
    start = new | (s[:, TOD_SCALE] <= 0)  # a new series, or one restored from before the envelopes
    if start.any():
        new_rows(E, rows[start])
        s[start, TOD_DAY] = 0.0
        s[start, TOD_SCALE] = scale_for(x[start], s[start, DHI] - s[start, DLO])
    seen, outside, s[:, TOD_DAY], s[:, TOD_SCALE] = routine_step(E, rows, t, x - s[:, LS], cfg.tod_margin * m.sigma,
                                                               s[:, TOD_DAY], s[:, TOD_SCALE], cfg.tod_shrink)
    daily = ~new & (s[:, AESD] < cfg.tod_gain * s[:, AER])
    return seen & daily, np.where(daily, outside / m.sigma, np.nan)


def _var_before(cfg: DetectorConfig, s: np.ndarray) -> np.ndarray:
    """Variance severity before this reading (log of short-term variance ratio)."""
    return np.log(np.maximum(s[:, VS], 1e-12)) / np.log(cfg.var_ratio)


def _fade(tau_s: float, dt: np.ndarray) -> np.ndarray:
    """Factor by which the range or the records forget over ``dt`` seconds (time constant ``tau_s``)."""
    return np.exp(-np.maximum(dt, 0.0) / tau_s) if tau_s > 0 else np.ones_like(dt)


def _range_record(cfg: DetectorConfig, s: np.ndarray, x: np.ndarray, m: _Model, kind: np.ndarray,
                  raw: np.ndarray, warm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Readings beyond the range covered so far: a finding of their own (named in ``kind``)."""
    span = s[:, QHI] - s[:, QLO]
    hi_exc, lo_exc = x - s[:, QHI], s[:, QLO] - x
    exc = np.maximum(hi_exc, lo_exc)
    # beyond the range by a share of it, and by a spread, and unexpected now (not a daily peak)
    record = (warm & (span > 0) & (exc > cfg.range_tol * span) & (exc > cfg.range_sig * m.sigma)
              & (np.abs(m.z) >= cfg.range_z))
    named = np.where(_var_before(cfg, s)[record] >= cfg.var_relabel, VAR_UP, np.where(hi_exc[record] > 0, SPIKE, DIP))
    kind[record] = named
    return record, np.where(record, np.maximum(raw, cfg.range_score), raw)


def _young_refire(cfg: DetectorConfig, s: np.ndarray, m: _Model, burst: np.ndarray, n: np.ndarray, t: np.ndarray,
                  days: np.ndarray, span: np.ndarray) -> np.ndarray:
    """First-week refire (off by default): an extreme reading of a new episode breaks through a hold.

    Extreme: ``|z| >= young_refire_z``, a burst of several such readings (the EW burst ``>= young_refire_burst``)
    and a deviation of at least ``young_refire_range`` of the declared range. Only while the series is younger
    than ``young_days``, more than one ART window (32 readings) after the finding that opened the hold, and
    while the series has had fewer than ``young_refire_max`` extreme episodes (onsets 2 h apart): a series
    whose nature is such bursts stops refiring. Learns the episode count in place (``N_EXT``, ``T_EXT``)."""
    extreme = ((np.abs(m.z) >= cfg.young_refire_z) & (np.abs(burst) >= cfg.young_refire_burst)
               & (np.abs(m.err) >= cfg.young_refire_range * span))
    since = n - (s[:, HOLD] - cfg.hold)
    out = (days < cfg.young_days) & extreme & (since > WIN * cfg.art_step) & (s[:, N_EXT] < cfg.young_refire_max)
    s[:, N_EXT] += extreme & (t - s[:, T_EXT] > 7200.0)
    s[:, T_EXT] = np.where(extreme, t, s[:, T_EXT])
    return out


def step(cfg: DetectorConfig, F: np.ndarray, D: np.ndarray, W: np.ndarray, R: np.ndarray, Hb: np.ndarray,
         Q: np.ndarray, S: np.ndarray, rows: np.ndarray, t: np.ndarray, x: np.ndarray,
         ent: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
         art: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None,
         lik: np.ndarray | None = None, tod: np.ndarray | None = None) -> StepResult:
    """Score and learn one reading for each of ``rows`` (distinct) in place."""
    s = F[rows]
    n = s[:, N]
    new = n == 0
    if new.any():
        for col in (L0, L1, L2, LB, LS, ANCHOR, X_LAST, QLO, QHI):
            s[new, col] = x[new]
        s[new, T_FIRST] = t[new]
        s[new, T_LAST] = t[new]
    dt = t - s[:, T_LAST]
    dt_ew = np.where(s[:, DT_EW] > 0, s[:, DT_EW], np.maximum(dt, 1e-9))
    gap = (~new) & (dt > cfg.gap_factor * dt_ew)
    days = (t - s[:, T_FIRST]) / DAY
    # a day of data before judging anything: until then the daily pattern itself looks anomalous
    warm = (n >= cfg.warmup) & (days >= cfg.warmup_days)

    m = _predict(cfg, s, D, W, rows, t, x, days)
    sev, carry = _severities(cfg, s, Hb, rows, x, m, gap, new, warm)
    lim_f = cfg.huber_k * m.sigma
    level_now = m.level + cfg.level_alpha * np.clip(m.err, -lim_f, lim_f)
    routine = np.zeros(len(rows), dtype=bool)
    outside = np.full(len(rows), np.nan)
    if cfg.tod_bins > 0 and tod is not None and tod.shape[2] > 0:
        routine, outside = _routine(cfg, s, tod, rows, t, x, m, new)
    novel = outside > cfg.tod_novel_margin
    kind, raw = _calibrate(cfg, s, R, rows, sev, m, level_now, dt, warm, routine, novel)
    record, raw = _range_record(cfg, s, x, m, kind, raw, warm)

    re_nov = np.zeros(len(rows))
    declared = s[:, DHI] > s[:, DLO]  # window detectors bin over the declared (else covered) range
    lo = np.where(declared, s[:, DLO], np.minimum(s[:, QLO], x))
    hi = np.where(declared, s[:, DHI], np.maximum(s[:, QHI], x))
    art_a = np.zeros(len(rows))
    young_a = np.zeros(len(rows))
    if cfg.art_w > 0 and art is not None:
        # an ART anomaly counts when its reading is unexpected to the main model too (and, optionally,
        # the main detectors saw something that their records held back)
        art_a = (cfg.art_w * art_step(*art, rows, x, lo, hi, cfg.art_step, cfg.art_trend,
                                          haar_odd=cfg.art_haar_odd, grid=cfg.art_grid, merge=cfg.art_merge))
        # a periodic series in its first week: a novel window whose reading the main model found unusual
        # too (raw >= young_raw, held back by a hold or by its records) scores anywhere (sixth round of #17)
        # (not the episode a finding of the last ART window, 32 readings, already reported)
        reported = n - (s[:, HOLD] - cfg.hold) <= WIN * cfg.art_step
        young_a = art_a * ((days < cfg.young_days) & (m.mode >= 1) & (raw >= cfg.young_raw) & ~reported)
        art_a = art_a * (np.abs(m.z) >= cfg.art_z) * (raw >= cfg.art_raw)
    lik_a = np.zeros(len(rows))
    if cfg.lik_mode > 0 and lik is not None and lik.shape[1] > 0:
        lv = likelihood_step(lik, rows, m.z, cfg.lik_cap, cfg.lik_tau, gap, cfg.warmup) * warm
        lik_a = np.where(lv >= cfg.lik_p, np.clip(lv / (2.0 * cfg.lik_p), 0.0, 1.0), 0.0)
    if (cfg.re_w > 0 or cfg.art_re or cfg.lik_mode > 0) and ent is not None:  # entropy windows, declared range
        re_nov = entropy_step(*ent, rows, n, x, lo, hi) * (n >= cfg.re_warmup) * (np.abs(m.z) >= cfg.re_z)
        if cfg.lik_mode == 1:  # an ART or likelihood anomaly, where the window's distribution is novel too
            art_a = np.maximum(art_a, lik_a) * (re_nov > 0)
        elif cfg.lik_mode == 2:
            art_a = lik_a * (re_nov > 0)
        elif cfg.lik_mode == 3:  # any two of three novelty members agreeing
            votes = (art_a >= cfg.fire_level).astype(int) + (re_nov > 0) + (lik_a > 0)
            art_a = np.where(votes >= 2, np.maximum(np.maximum(art_a, lik_a), cfg.fire_level), 0.0)
        elif cfg.art_re:  # ART anomalies count only where a window's distribution is novel too
            art_a = art_a * (re_nov > 0)
        if cfg.re_w > 0 and cfg.re_hold == 1:  # a novel window is a candidate finding like any other (one per episode)
            kind = np.where((re_nov > 0) & (cfg.re_w * re_nov > raw), PATTERN, kind)
            raw = np.maximum(raw, cfg.re_w * re_nov)
    # --- one alert per episode: damp scores while a recent alert holds (a record always raises) ---
    holding = n < s[:, HOLD]
    refire = raw > cfg.refire_ratio * s[:, ALERT]
    if cfg.young_refire_z > 0:
        refire |= _young_refire(cfg, s, m, carry["sm"], n, t, days, hi - lo)
    if cfg.tod_refire_gap > 0:  # new for its time of day, long after the finding that opened the hold
        again = ((outside > cfg.tod_refire_margin) & (n - (s[:, HOLD] - cfg.hold) >= cfg.tod_refire_gap)
                 & (np.abs(m.err) >= cfg.tod_refire_range * (hi - lo)))
        refire |= again & (carry["burst_dom"] | (not cfg.tod_refire_burst))
    candidate = None
    if cfg.calm_refire > 0:  # a new excursion after a long calm spell: a new episode, whatever the hold says
        candidate = np.abs(m.err) >= cfg.calm_range * (hi - lo)
        if candidate.any():  # rare (a quarter of the range off the model): the other tests only then
            candidate &= (n - s[:, LAST_HOT] >= cfg.calm_refire) & (carry["burst_dom"] | (not cfg.calm_burst))
            if cfg.calm_daily:  # a series with a time of day; bursts are the nature of one without
                candidate &= m.mode >= 1
            if cfg.calm_slow > 0:  # away from the slow level too: not a daily profile that learned yesterday's incident
                slow = x - s[:, LS]
                candidate &= (np.abs(slow) >= cfg.calm_slow * (hi - lo)) & (np.sign(slow) == np.sign(m.err))
            refire |= candidate & (np.abs(carry["sm"]) >= cfg.calm_sm)
    fired = (raw >= cfg.fire_level) & (~holding | refire | record)
    if candidate is not None:
        # the calm spell ends at a raised reading, unless it is the new excursion building up; a finding ends it
        s[:, LAST_HOT] = np.where(((raw >= cfg.calm_level) & ~candidate) | fired, n, s[:, LAST_HOT])
    score = np.where(holding & ~fired, raw * cfg.hold_damp, raw)
    # the range forgets slowly, so a series that settled down can raise records again
    fade = _fade(cfg.range_tau_s, dt)
    s[:, QLO] = s[:, LB] + (np.minimum(s[:, QLO], x) - s[:, LB]) * fade
    s[:, QHI] = s[:, LB] + (np.maximum(s[:, QHI], x) - s[:, LB]) * fade
    if cfg.novelty_w > 0:  # context novelty raises the emitted score (not the findings)
        nov = novelty(Q, S, s[:, QLO], s[:, QHI], n, x, rows, cfg.novelty_levels)
        score = np.minimum(score + cfg.novelty_w * nov * warm, 1.0)
    if cfg.re_w > 0 and ent is not None and cfg.re_hold == 0:
        score = np.maximum(score, cfg.re_w * re_nov)
    re_fire = np.zeros(len(rows), dtype=bool)
    if cfg.re_w > 0 and ent is not None and cfg.re_hold == 2:
        # a novel window scores when no finding holds, and opens no hold of its own: it cannot mask
        # a later finding of the main detectors
        quiet = ~holding & ~fired
        re_fire = quiet & (re_nov > 0) & (cfg.re_w >= cfg.fire_level)
        score = np.where(quiet, np.maximum(score, cfg.re_w * re_nov), score)
        kind = np.where(quiet & (re_nov > 0) & (cfg.re_w * re_nov >= raw), PATTERN, kind)
        raw = np.where(re_fire, np.maximum(raw, cfg.re_w), raw)
    if cfg.art_w > 0 and art is not None:
        # an adaptive-resonance anomaly: anywhere (mode 0) or only while no finding holds (it opens no hold)
        # mode 3: also in the hold of a level shift or drift (HKIND 1), the finding a new weekday's pattern raises
        free = ~holding | ((cfg.art_mode == 3) & (s[:, HKIND] == 1))
        where = (art_a > score) if cfg.art_mode == 0 else (free & ~fired & (art_a > score))
        art_a = np.where(young_a > art_a, young_a, art_a)
        where = where | (young_a > score)
        a_fire = where & (art_a >= cfg.fire_level)
        score = np.where(where, art_a, score)
        kind = np.where(where, PATTERN, kind)
        re_fire = re_fire | a_fire
    # the hold lasts while the episode does: still-elevated scores extend it
    extend = holding & (raw >= cfg.hold_extend_level)
    s[:, HOLD] = np.where(fired | extend, n + cfg.hold, s[:, HOLD])
    s[:, ALERT] = np.where(fired, raw, s[:, ALERT])
    s[:, HKIND] = np.where(fired, np.where((kind == SHIFT) | (kind == DRIFT), 1.0, 2.0), s[:, HKIND])
    # after an alarm the CUSUM restarts and the baseline jumps to the current level
    reset = fired & ((kind == SHIFT) | (kind == DRIFT))
    fired = fired | re_fire
    carry["cp"][reset] = 0.0
    carry["cn"][reset] = 0.0
    s[reset, LB] = level_now[reset]
    s[reset, ANCHOR] = level_now[reset]

    _learn(cfg, s, D, W, rows, t, x, m, carry, dt, dt_ew, gap, new, days)
    F[rows] = s
    return StepResult(score=score, raw=raw, kind=kind, expected=m.level + m.season, spread=m.sigma, fired=fired,
                      baseline=carry["baseline"], baseline_spread=carry["sigma_b"], record=record)


def _learn(cfg: DetectorConfig, s: np.ndarray, D: np.ndarray, W: np.ndarray, rows: np.ndarray, t: np.ndarray,
           x: np.ndarray, m: _Model, c: dict[str, np.ndarray], dt: np.ndarray, dt_ew: np.ndarray, gap: np.ndarray,
           new: np.ndarray, days: np.ndarray) -> None:
    """Learn the reading into levels, spreads, profiles and short-term state (robust: clipped)."""
    n = s[:, N]
    lims = [cfg.huber_k * np.maximum(MAD_TO_SIGMA * s[:, col], m.floor) for col in (AE0, AE1, AE2)]
    clipped = [np.clip(e, -lim, lim) for e, lim in zip((m.e0, m.e1, m.e2), lims, strict=True)]
    ea = np.maximum(cfg.err_alpha, 1.0 / (n + 2.0))
    for lcol, acol, ce in zip((L0, L1, L2), (AE0, AE1, AE2), clipped, strict=True):
        s[:, lcol] += cfg.level_alpha * ce
        s[:, acol] += ea * (np.abs(ce) - s[:, acol])
    lim = cfg.huber_k * c["sigma_b"]
    cb = np.clip(x - m.season - s[:, LB], -lim, lim)
    s[:, LB] += cfg.base_alpha * cb
    s[:, AEB] += ea * (np.abs(cb) - s[:, AEB])
    s[:, ANCHOR] += cfg.anchor_alpha * (s[:, LB] - s[:, ANCHOR])
    k = 1.0 - np.exp(-np.maximum(dt, 0.0) / cfg.slow_tau_s)
    k = np.where(new, 0.0, np.maximum(k, 1.0 / (n + 1.0)))
    # the slow level the profiles learn against must itself be free of the daily cycle, else its
    # own (attenuated, lagged) daily wobble is learned into the profile
    s[:, LS] += k * np.clip(x - m.sd - s[:, LS], -lim * 3, lim * 3)
    target = x - s[:, LS]
    sa = np.maximum(cfg.err_alpha, 1.0 / (n + 2.0)) * (days >= 0.5)  # profiles need half a day first
    s[:, AER] += sa * (np.minimum(np.abs(target), lim * 3) - s[:, AER])
    s[:, AESD] += sa * (np.minimum(np.abs(target - m.sd), lim * 3) - s[:, AESD])
    s[:, AESW] += sa * (np.minimum(np.abs(target - m.sw), lim * 3) - s[:, AESW])
    # a bin is the plain mean of its visits at first, then an EW mean (fast, unbiased start)
    per_day = DAY / np.maximum(dt_ew, 1.0)
    rate_d = np.maximum(cfg.season_alpha, 1.0 / (1.0 + per_day / D.shape[1] * days))
    rate_w = np.maximum(cfg.season_alpha, 1.0 / (1.0 + per_day * 7.0 / W.shape[1] * days / 7.0))
    d0, dw, w0, ww = m.bins
    _learn_profile(D, rows, d0, dw, target, rate_d)
    _learn_profile(W, rows, w0, ww, target, rate_w)
    diff = np.abs(x - s[:, X_LAST])
    nz = (diff > 0) & ~new
    s[:, RES] = np.where(nz, np.where(s[:, RES] > 0, s[:, RES] + 0.02 * (diff - s[:, RES]), diff), s[:, RES])
    s[:, REP] = np.where(new, 0.0, s[:, REP] + 0.01 * (c["same"] - s[:, REP]))
    s[:, RUN] = c["run"]
    s[:, CP], s[:, CN], s[:, VS], s[:, SM] = c["cp"], c["cn"], c["vs"], c["sm"]
    s[:, DT_EW] = np.where(new | gap, s[:, DT_EW], dt_ew + 0.05 * (dt - dt_ew))
    s[:, X_LAST] = x
    s[:, T_LAST] = t
    s[:, MODE] = m.mode
    s[:, N] = n + 1.0
