"""Camera health and tamper analysis over JPEG snapshots (pure: bytes in, findings out).

Public API: :class:`CameraAnalyser` (one per camera: ``analyse(jpeg, ts) -> SnapshotResult``),
:class:`CameraConfig`, :class:`StaleMonitor` / :func:`check_stale` (snapshots stopped, telemetry
collapsed) and :func:`analytics.camera.batch.check_dir` (snapshot folders -> CSV).
"""

from analytics.camera.analyser import LABELS, CameraAnalyser, SnapshotResult
from analytics.camera.config import CameraConfig
from analytics.camera.stale import StaleMonitor, check_stale

__all__ = ["LABELS", "CameraAnalyser", "CameraConfig", "SnapshotResult", "StaleMonitor", "check_stale"]
