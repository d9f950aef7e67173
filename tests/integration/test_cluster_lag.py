"""An API replica reports the lag of its own live feed in ``GET /api/cluster`` (a real ``ioc serve --role api``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from tests.support.auth import make_token_sync
from tests.support.cluster import RoleProcess, cluster_env, unique_lease, wait_for
from tests.support.mqtt import Publisher, iso, unique_id

pytestmark = pytest.mark.integration


def test_an_api_replica_reports_its_own_input_lag(database_url: str, mqtt_port: int, artifacts: Path) -> None:
    name = unique_lease()
    api = RoleProcess(cluster_env(database_url, mqtt_port, name), "api", artifacts / "api.log",
                      make_token_sync(database_url, "viewer", f"lag-{name}"))
    api.start()
    pub = Publisher(mqtt_port)
    device = unique_id("bts")
    try:
        def mine() -> dict[str, Any] | None:
            pub.publish(f"ioc/v1/bts/{device}/telemetry", {"ts": iso(time.time()), "metrics": {"battery_pct": 90}})
            doc = api.get("/api/cluster")
            return next((m for m in doc["members"] if m["process_id"] == doc["process_id"]), None)

        # (other traffic on the shared broker reaches the replica too: the figure is not asserted, only present)
        me = wait_for(lambda: (m := mine()) is not None and m["input_lag_s"] is not None and m, 30, 0.5,
                      what="the replica's own input lag")
        assert me["role"] == "api" and me["input_lag_s"] >= 0
        assert me["detail"]["live_input_lag_s"] == me["input_lag_s"]
        assert 0 <= me["detail"]["live_last_message_age_s"] < 30
    finally:
        pub.close()
        api.stop()
