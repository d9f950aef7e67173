"""The one default detector configuration shared by the live pipeline and the batch runner."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class DetectorConfig:
    """Tuning of the numeric detector bank; ``DetectorConfig()`` is THE default everywhere.

    Counts are in samples of the series itself, times in seconds, so the same values fit a
    5-minute traffic counter and an hourly BTS report.
    """

    warmup: int = 120
    """Samples a series needs before it may raise anything (it still learns meanwhile)."""
    warmup_days: float = 1.0
    """...and the span of data it needs, so the daily pattern is known before anything is judged."""
    day_bins: int = 96
    """Bins of the daily profile (linear interpolation between bins)."""
    week_bins: int = 168
    """Bins of the weekly profile (hour of week)."""
    history: int = 128
    """Ring buffer of recent values used by the contextual detector."""
    context_dim: int = 6
    context_z: float = 5.0
    novelty_levels: int = 8
    novelty_orders: int = 6
    novelty_bytes: int = 4096
    novelty_w: float = 0.0
    """Context novelty: coarse levels over the running range, sequences up to this order, a hashed
    bit set of this size per series; the share of new continuations, times this weight, is added
    to the emitted score. Off by default (0): on NAB its gain did not survive leave-one-category-out
    checks and moved with hash collisions, so it costs speed and 4 KiB per series for no sure gain."""
    re_w: float = 0.0
    """Relative-entropy windows (``entropy.py``): a reading whose window histogram no earlier window
    explains scores this much (0: off)."""
    re_z: float = 2.0
    """A novel window counts only when its latest reading is this unexpected (|z|)."""
    re_hold: int = 2
    """0: a novel window scores on its own; 1: it is a candidate finding like the others (one per
    episode, opens a hold); 2: it scores only while no finding holds and opens no hold."""
    re_window: int = 52
    re_bins: int = 8
    re_slots: int = 48
    re_warmup: int = 120
    """Window length, bins over the declared (else covered) range, hypotheses kept, readings before
    a novelty may score."""
    art_w: float = 1.0
    """Adaptive-resonance windows (``art.py``): weight of their anomaly score in the ensemble (0: off)."""
    art_step: int = 4
    art_trend: int = 72
    art_slots: int = 24
    """Readings per block, blocks of probation (and of the vigilances' memory), categories kept."""
    art_mode: int = 2
    """0: an ART anomaly scores anywhere; 2: only while no finding holds (it opens no hold); 3: also while the
    hold of a level shift or drift does (another family's finding; fifth round of #17, LOCO -0.06: not default)."""
    art_merge: int = 0
    art_grid: bool = False
    art_haar_odd: bool = False
    """ART options from the ARTime study (sixth round of #17; off): a full memory folds a window into its best
    category (1; 2: only windows that are not novel), the running median kept on the level grid, ARTime's
    Haar detail sign. No change in the ensemble (docs/detectors.md)."""
    young_days: float = 7.0
    young_raw: float = 0.4
    """First-week shape novelty (sixth round of #17): while a series that uses its daily model is younger than
    ``young_days``, an ART anomaly on a reading the main detectors scored at least ``young_raw`` (a finding
    their hold or records held back) scores on its own, also during a hold, and opens none: a week of data
    gives the records and holds too little history (the first weekend, the first Monday rush), the shape
    detector judges from the first day. 0 days: off. NAB dev, LOCO and short history unchanged."""
    young_refire_z: float = 0.0
    young_refire_burst: float = 8.0
    young_refire_range: float = 0.4
    young_refire_max: int = 4
    """First-week refire (seventh round of #17; off: 0). While young, a reading with |z| at least this, in a burst
    (EW burst at least ``young_refire_burst``) that moves at least ``young_refire_range`` of the declared range,
    refires through the hold of an earlier episode, for the first ``young_refire_max`` such episodes of a series.
    Traffic +4-9 (rough road data), NAB LOCO -0.01, short -0.12 over four offsets: fails the keep rule narrowly
    (docs/detectors.md, "Seventh round")."""
    tod_bins: int = 48
    tod_margin: float = 1.0
    tod_shrink: float = 0.1
    tod_damp: float = 0.3
    tod_gain: float = 0.9
    """Time-of-day routine (``routine.py``, eighth round of #17; 0 bins: off). Per bin of the day, weekdays and
    weekends apart, the envelope of the series' deviations from its slow level on earlier days (contracting
    ``tod_shrink`` of the way to a calmer day per day); a reading inside it (within ``tod_margin`` spreads), of a
    series whose daily profile's error is below ``tod_gain`` of no profile's, is routine: its score is damped by
    ``tod_damp`` and it sets no severity record. A road's rush-hour jams stop raising findings whose holds and
    records hid the incidents after them. Dev +0.98, LOCO +0.64, short +0.88 over four offsets."""
    tod_novel: float = 1.5
    tod_novel_margin: float = 3.0
    """New for its time of day (ninth round of #17; 0: off): a reading at least ``tod_novel_margin`` spreads outside
    the envelope of every earlier day at this time of day (of a series with a time of day, as above) is not
    discounted for being common at other hours: its rarity factor is at least ``tod_novel``. A road whose rush
    hours jam reaches large severities daily, so its rarity histogram used to discount a collapse at noon as
    everyday. Dev +0.80, LOCO +0.81, short +2.44 over four offsets; simulated traffic +5.6, rough road data +8."""
    calm_refire: int = 72
    calm_level: float = 0.5
    calm_range: float = 0.25
    calm_burst: bool = True
    calm_sm: float = 0.0
    calm_daily: bool = True
    calm_slow: float = 0.15
    """Calm refire (tenth round of #17, on since the thirteenth; 0: off): after at least ``calm_refire`` readings whose
    raw score stayed below ``calm_level``, a burst deviating by ``calm_range`` of the declared (else covered) range
    breaks through a hold: the episode that opened it is over, this is the next incident. Only for a series whose
    daily model is in use (``calm_daily``: a series of bursts without a time of day has such excursions by nature),
    and only when the reading is as far (``calm_slow`` of the range) from the slow one-day level the same way, so a
    daily profile that learned yesterday's incident does not make an ordinary reading look like a new one."""
    tod_refire_gap: int = 0
    tod_refire_margin: float = 5.0
    tod_refire_range: float = 0.4
    tod_refire_burst: bool = True
    """Time-of-day refire (ninth round of #17; 0: off): a burst at least ``tod_refire_margin`` spreads outside the
    envelope of earlier days, deviating by ``tod_refire_range`` of the declared (else covered) range, breaks
    through a hold opened at least ``tod_refire_gap`` readings before: the next incident on a road a day later.
    At 144: traffic all +5.4, rough road data +9.5, NAB LOCO -0.11, short ±0: fails the keep rule narrowly."""
    art_raw: float = 0.0
    """...and only when the main detectors' own score is at least this (they saw something, records held it)."""
    art_re: bool = True
    """An ART anomaly counts only where the relative-entropy window is novel too (two novelty detectors
    agreeing); the entropy windows run for it even when their own score is off (``re_w = 0``)."""
    art_z: float = 0.0
    """An ART anomaly counts only when its reading is this unexpected (|z| of the main model)."""
    lik_mode: int = 0
    """Anomaly likelihood of the residuals (``likelihood.py``) as a third novelty member: 0 off; 1 an ART
    or likelihood anomaly counts where the entropy window agrees; 2 only the likelihood, with the entropy
    window; 3 any two of the three agreeing."""
    lik_cap: float = 5.0
    lik_tau: float = 2000.0
    lik_p: float = 5.0
    """|z| counted as a full raw anomaly, readings the history averages over, and -log10 of the tail
    probability at which the likelihood counts (it scores 0.5 there, 1.0 at twice that)."""
    level_alpha: float = 0.1
    """EW rate of the fast (prediction) level per sample."""
    base_alpha: float = 0.02
    """EW rate of the baseline level the shift detector compares with."""
    season_alpha: float = 0.1
    """EW rate of a profile bin each time it is visited."""
    slow_tau_s: float = 86400.0
    """Time constant of the slow level the seasonal profiles are learned against."""
    err_alpha: float = 0.003
    """EW rate of the absolute-error (spread) estimates."""
    huber_k: float = 3.0
    """Residuals are clipped at this many spreads before they update the model (robustness)."""
    season_gain: float = 0.85
    """A seasonal model is used only when its error is below this fraction of the simpler one."""
    season_step_gain: float = 1.0
    """...and only when its one-step errors are at most this fraction of the simpler model's."""
    mode_hysteresis: float = 0.0
    min_days_daily: float = 1.0
    min_days_weekly: float = 14.0
    spike_z: float = 5.0
    """|z| that counts as a detection (score 0.5)."""
    burst_alpha: float = 0.3
    burst_k: float = 1.0
    point_w: float = 1.0
    cusum_k: float = 0.5
    cusum_h: float = 10.0
    """CUSUM of baseline residuals (in spreads): allowance per sample and alarm level."""
    var_alpha: float = 0.05
    var_ratio: float = 20.0
    """Short-term variance this many times the usual (or 1/this) counts as a detection."""
    var_relabel: float = 0.4
    """A spike while the variance severity is above this is reported as a variance change."""
    stuck_p: float = 1e-3
    """A run of identical values less likely than this (given the series' repeat rate) is stuck."""
    stuck_min_run: int = 6
    drift_z: float = 4.0
    anchor_alpha: float = 0.001
    gap_factor: float = 5.0
    """An interval above this many usual intervals is a gap: short-term detectors restart."""
    silence_factor: float = 6.0
    """No data for this many usual intervals (and ``silence_min_s``) is silence."""
    silence_min_s: float = 600.0
    rarity_decay: float = 0.9995
    rarity_ref: float = 3.0
    rarity_min: float = 0.2
    rarity_max: float = 2.0
    """Rarity: -log10 of how often the series' past severities (decayed per sample) reached this one;
    the severity is scaled by rarity/rarity_ref, clipped to rarity_min..rarity_max."""
    record_power: float = 3.0
    """Records: a severity below the largest one of its kind so far is scaled by (ratio)^this."""
    range_tol: float = 0.05
    range_sig: float = 1.0
    range_z: float = 2.0
    """Range record: a reading beyond the range covered so far by range_tol of that range, by
    range_sig spreads and with |z| >= range_z raises a finding even during a hold (record high/low)."""
    range_score: float = 1.0
    """Score of a range record."""
    range_tau_s: float = 180 * 86400.0
    """Time constant with which the covered range forgets (0: never)."""
    record_tau_s: float = 180 * 86400.0
    """Time constant with which the severity records forget (0: never)."""
    fire_level: float = 0.5
    """Score at which a finding is raised."""
    hold: int = 400
    """Samples after a finding during which similar scores are damped (one alert per episode)."""
    hold_extend_level: float = 2.0
    """A damped score at or above this extends the hold (the episode is still going on)."""
    hold_damp: float = 0.3
    refire_ratio: float = 1.5

    speed_collapse_frac: float = 0.6
    """Traffic: speed below this fraction of its usual value (and occupancy up) is a collapse."""
    occupancy_up_z: float = 2.0
    availability_drop_pts: float = 2.0
    """BTS: availability this many points below usual (and 3 spreads) is a drop."""
    rule_window_s: float = 900.0
    """Readings of two metrics (or two devices) this close in time are taken together."""
    group_min_devices: int = 3
    group_min_frac: float = 0.3
    """A group event needs this many devices, and this share of the group's devices of that kind."""
    frozen_run: int = 5
    frozen_rep: float = 0.2
    frozen_min_series: int = 2
    """A device is frozen when every one of its metrics that usually changes from one reading to the next
    (repeat rate below ``frozen_rep``), and at least ``frozen_min_series`` of them, repeated its last value
    ``frozen_run`` readings in a row: a sensor resending its last packet, whatever the time of day."""
    slow_z: float = 3.0
    slow_frac: float = 0.85
    """Traffic: speed this many spreads, and this fraction, below usual is slowing (group rule)."""

    def as_dict(self) -> dict[str, float | int]:
        """Plain dict, e.g. for logging or storing alongside state."""
        return asdict(self)
