"""Grafana dashboards as code: the committed files are what the code generates, the layout is sane, and
provisioning makes the calls Grafana's HTTP API expects (against a stand-in: no Grafana runs here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from grafana_client import GrafanaApi

from dashboards.grafana.boards import all_dashboards
from dashboards.grafana.model import DATASOURCE_UID
from dashboards.grafana.provision import provision
from tests.support.grafana import FakeGrafana

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]


def test_committed_dashboard_files_are_what_the_code_generates() -> None:
    files = {p.stem: json.loads(p.read_text()) for p in (ROOT / "deploy/grafana/dashboards").glob("*.json")}
    generated = {b["uid"]: b for b in all_dashboards()}
    assert files == json.loads(json.dumps(generated)), "run: ioc dashboards export deploy/grafana/dashboards"


def test_every_panel_fits_the_grid_and_queries_the_ioc_data_source() -> None:
    uids = [b["uid"] for b in all_dashboards()]
    assert len(set(uids)) == len(uids)
    for board in all_dashboards():
        ids = [p["id"] for p in board["panels"]]
        assert len(set(ids)) == len(ids), board["uid"]
        for panel in board["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, (board["uid"], panel["title"])
            assert panel["datasource"]["uid"] == DATASOURCE_UID and panel["targets"]
            for target in panel["targets"]:
                assert target["rawSql"].lstrip().upper().startswith("SELECT")
                assert target["datasource"]["uid"] == DATASOURCE_UID
            text = json.dumps(panel["targets"])
            if "_5m" in text:
                assert panel["interval"] == "5m"  # never finer than the rollup
            if "_1h" in text:
                assert panel["interval"] == "1h"
            if "district" in panel["title"].lower() and panel["type"] == "timeseries":
                assert "kpi_5m" in text and "r.kind = " in text, panel["title"]  # the KPI rollup, one kind


def test_provisioning_creates_then_updates_in_place() -> None:
    with FakeGrafana() as fake:
        api = GrafanaApi.from_url(f"http://admin:secret@127.0.0.1:{fake.port}")
        first = provision(api, "postgresql://ioc:pw@timescaledb:5432/ioc", timescaledb=True)
        assert first[DATASOURCE_UID] == "created" and first["ioc"] == "created"
        ds = fake.datasources[DATASOURCE_UID]
        assert (ds["url"], ds["user"], ds["jsonData"]["database"], ds["jsonData"]["timescaledb"]) == (
            "timescaledb:5432", "ioc", "ioc", True)
        assert ds["secureJsonData"] == {"password": "pw"}
        assert set(fake.dashboards) == {b["uid"] for b in all_dashboards()}
        saved = fake.dashboards["ioc-overview"]
        assert saved["overwrite"] is True and saved["folderUid"] == "ioc" and saved["dashboard"]["id"] is None
        again = provision(api, "postgresql://ioc:pw@timescaledb:5432/ioc", timescaledb=True)
        assert again[DATASOURCE_UID] == "updated" and again["ioc"] == "kept"
        assert len(fake.dashboards) == len(all_dashboards())
        assert all(a and a.startswith("Basic ") for a in fake.auth)
