"""An alert storm against a real `ioc serve --role api`: the operator's live alert list still shows the critical one.

Seeded: one critical alert opened two hours ago, then 3,000 low ones (minor, warning, info) in the last hour, and
2,000 resolved critical ones (history). Before, the operator's live alert list read the newest 300 of
``/api/alerts`` and sorted them in the page: the critical alert was not among them. Now the page asks for
``order=severity`` (live alerts most severe first, then newest, filtered in the database, ``X-Total-Count``) and
says "Showing 300 of 3,001" under the cut.
"""

from __future__ import annotations

import http.client
import json
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.support.auth import make_token_sync, make_user_sync
from tests.support.services import ServiceProcess, api_on_seeded_database

pytestmark = pytest.mark.integration

LOW, RESOLVED = 3000, 2000
CRITICAL = 1  # the storm's first alert: critical, the oldest
LIVE = LOW + 1
LOW_SEVERITIES = ("minor", "warning", "info")
RULES = ("battery_low", "device_offline")
RANKS = ["critical", "major", "minor", "warning", "info"]


def _low(i: int) -> dict[str, Any]:
    """What the seed gives alert ``i`` (2 .. LOW + 1)."""
    return {"id": i, "severity": LOW_SEVERITIES[i % 3], "state": "acknowledged" if i % 7 == 0 else "open",
            "district": f"D{i % 10}", "rule": RULES[i % 2]}


async def _seed(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"""
            INSERT INTO alerts (id, dedupe_key, rule, category, severity, state, title, explanation, device_id, kind,
                                district, started_at, last_seen_at)
            VALUES ({CRITICAL}, 'k1', 'mains_power_lost', 'power', 'critical', 'open', 'substation lost',
                    'mains lost', 'sub-1', 'bts', 'D0', now() - interval '2 hours', now());
            INSERT INTO alerts (id, dedupe_key, rule, category, severity, state, title, explanation, device_id, kind,
                                district, started_at, last_seen_at)
            SELECT i, 'k' || i, (ARRAY{list(RULES)})[1 + i % 2], 'device', (ARRAY{list(LOW_SEVERITIES)})[1 + i % 3],
                   CASE WHEN i % 7 = 0 THEN 'acknowledged' ELSE 'open' END, 'alert ' || i, 'low', 'dev-' || i,
                   'sensor', 'D' || (i % 10), now() - make_interval(secs => {LOW + 1} - i), now()
            FROM generate_series(2, {LOW + 1}) AS i;
            INSERT INTO alerts (id, dedupe_key, rule, category, severity, state, title, explanation, device_id, kind,
                                district, started_at, last_seen_at, resolved_at)
            SELECT i, 'k' || i, 'mains_power_lost', 'power', 'critical', 'resolved', 'past ' || i, 'over',
                   'old-' || i, 'bts', 'D0', now() - make_interval(secs => 30 * i), now(), now()
            FROM generate_series({LIVE + 1}, {LIVE + RESOLVED}) AS i;
        """)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def storm(mqtt_port: int) -> Iterator[tuple[ServiceProcess, str]]:
    # its own database: the storm's 3,001 live alerts stay there
    with api_on_seeded_database(mqtt_port, _seed, "test_hostile_alert_storm") as served:
        yield served


@pytest.fixture(scope="module")
def viewer(storm: tuple[ServiceProcess, str]) -> str:
    return make_token_sync(storm[1], "viewer", f"storm-{uuid.uuid4().hex[:6]}")


def _get(srv: ServiceProcess, path: str, token: str) -> tuple[int, http.client.HTTPMessage, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, resp.headers, json.loads(body) if body else None
    finally:
        conn.close()


def _expected(**want: str) -> list[int]:
    """Live alerts matching ``want``, in the server's order: most severe first, then newest (the higher id)."""
    rows = [{"id": CRITICAL, "severity": "critical", "state": "open", "district": "D0", "rule": "mains_power_lost"}]
    rows += [_low(i) for i in range(2, LOW + 2)]
    rows = [r for r in rows if all(r[k] == v for k, v in want.items())]
    return [r["id"] for r in sorted(rows, key=lambda r: (RANKS.index(r["severity"]), -r["id"]))]


def test_live_alerts_most_severe_first_filtered_and_counted(storm: tuple[ServiceProcess, str], viewer: str) -> None:
    srv, _ = storm
    # the newest 300 live alerts (the default order, unchanged): the critical one is not among them
    status, _, newest = _get(srv, "/api/alerts?state=open&state=acknowledged&limit=300", viewer)
    assert status == 200 and newest[0]["id"] == LOW + 1 and CRITICAL not in {a["id"] for a in newest}
    # most severe first: the critical alert leads, then every minor one newest first, ...; resolved ones left out
    status, headers, live = _get(srv, "/api/alerts?order=severity&limit=300", viewer)
    assert status == 200 and len(live) == 300 and live[0]["id"] == CRITICAL and live[0]["severity"] == "critical"
    assert headers["X-Total-Count"] == str(LIVE) and headers["X-Truncated"] == "true"
    assert [a["id"] for a in live] == _expected()[:300]
    status, headers, page2 = _get(srv, "/api/alerts?order=severity&limit=300&offset=300", viewer)
    assert [a["id"] for a in page2] == _expected()[300:600] and headers["X-Total-Count"] == str(LIVE)
    # filters apply before the cut, and the count is of the matches
    for query, want in (("district=D0", {"district": "D0"}), ("rule=battery_low", {"rule": "battery_low"}),
                        ("severity=info&severity=critical&district=D0", None),
                        ("state=acknowledged&district=D7", {"state": "acknowledged", "district": "D7"})):
        ids = (_expected(district="D0", severity="critical") + _expected(district="D0", severity="info")
               if want is None else _expected(**want))
        status, headers, rows = _get(srv, f"/api/alerts?order=severity&{query}&limit=300", viewer)
        assert status == 200 and headers["X-Total-Count"] == str(len(ids)), query
        assert [a["id"] for a in rows] == ids[:300], query
        assert ("X-Truncated" in headers) == (len(ids) > 300), query
    assert _expected(district="D0")[0] == CRITICAL and len(_expected(district="D0")) == 301
    # live alerts only: history stays newest first
    assert _get(srv, "/api/alerts?order=severity&state=resolved", viewer)[0] == 422
    assert _get(srv, "/api/alerts?order=oldest", viewer)[0] == 422


def test_the_operator_alert_list_shows_the_old_critical_alert_and_the_cut(storm: tuple[ServiceProcess, str],
                                                                          artifacts: Path) -> None:
    """The page's live alert list is the server's first 300 (the critical alert first) and says "Showing 300 of
    3,001"; in Vietnamese too; a history list says it shows the newest 300."""
    from tests.integration.browser_support import Pages, chromium, log_in, wait_js

    srv, dsn = storm
    name = f"xem-{uuid.uuid4().hex[:6]}"
    password = make_user_sync(dsn, "viewer", name)[1]
    shown = "[...document.querySelectorAll('table.list tr.row')].map(r => r.dataset.id).join()"
    want = ",".join(str(i) for i in _expected()[:300])
    with chromium() as browser:
        pages = Pages(browser, artifacts)
        page = pages.open("ops-alert-storm", 1366, 900)
        log_in(page, srv.url, name, password, "/ops?lang=en#/alerts")
        wait_js(page, f"window.__ops.ready && {shown} === '{want}'", 20, hook="__ops")
        first = page.locator("table.list tr.row").first
        assert first.get_attribute("data-id") == str(CRITICAL) and first.get_attribute("data-sev") == "critical"
        cut = page.locator(".list-cut")
        assert cut.is_visible() and cut.inner_text() == "Showing 300 of 3,001 — filter to see the rest"
        assert (cut.get_attribute("data-shown"), cut.get_attribute("data-total")) == ("300", str(LIVE))
        page.screenshot(path=str(artifacts / "ops-alert-storm-1366x900.png"))
        # a filter: D0 has 301 live alerts, the critical one first
        page.goto(f"{srv.url}/ops?lang=en#/alerts?district=D0")
        d0 = ",".join(str(i) for i in _expected(district="D0")[:300])
        wait_js(page, f"window.__ops.ready && {shown} === '{d0}'", 20, hook="__ops")
        assert page.inner_text(".list-cut") == "Showing 300 of 301 — filter to see the rest"
        # fewer than the cut: nothing said
        page.goto(f"{srv.url}/ops?lang=en#/alerts?district=D0&severity=critical")
        wait_js(page, f"window.__ops.ready && {shown} === '{CRITICAL}'", 20, hook="__ops")
        assert cut.is_hidden()
        # history (resolved: 2,000, not counted): the newest 300
        page.goto(f"{srv.url}/ops?lang=en#/alerts?state=resolved")
        wait_js(page, f"window.__ops.ready && {shown}.startsWith('{LIVE + 1},')", 20, hook="__ops")
        assert page.locator("table.list tr.row").count() == 300
        assert page.inner_text(".list-cut") == "Showing the newest 300 — filter to see older ones"
        # in Vietnamese
        vi = pages.open("ops-alert-storm-vi", 1366, 900)
        log_in(vi, srv.url, name, password, "/ops?lang=vi#/alerts")
        wait_js(vi, f"window.__ops.ready && {shown} === '{want}'", 20, hook="__ops")
        assert vi.inner_text(".list-cut") == "Đang hiển thị 300 / 3.001 — lọc để xem các mục còn lại"
        pages.check()
