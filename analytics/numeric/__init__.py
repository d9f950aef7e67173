"""Streaming numeric anomaly detection: a vectorised bank of per-series detectors.

Owns the detectors for every numeric metric (traffic, BTS, camera telemetry): learning each
series' level, spread, daily/weekly profile; spikes, dips, record highs and lows, level shifts,
variance changes, drift, stuck and flat-lined sensors, silence; traffic/BTS domain rules and group
context (how they work and their NAB figures: docs/detectors.md). Pure code:
numbers in, ``analytics.findings.Finding`` out; the only I/O is the batch CSV runner.

Live pipeline: ``NumericMonitor`` (``ingest``, ``check_silence``, ``to_state``/``from_state``).
Evaluation: ``analytics.numeric.batch.detect_path``. Both use ``DetectorConfig()``.
"""

from analytics.numeric.bank import SeriesBank
from analytics.numeric.config import DetectorConfig
from analytics.numeric.monitor import NumericMonitor, Reading

__all__ = ["DetectorConfig", "NumericMonitor", "Reading", "SeriesBank"]
