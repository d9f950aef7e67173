"""A province-wide outage storm against a real `ioc serve --role api`: incident answers stay bounded.

Seeded: 3,001 open incidents, one of them with 20,000 member alerts (5,000 devices) and 3,000 audit entries.
Before, ``/api/incidents/live`` answered every live incident with all its members (one request built ~23,000
members on the event loop) and ``/api/incidents/{id}`` embedded up to 10,000 alerts and 1,000 audit entries.
Now lists are cut by ``limit`` (incidents, most severe first) and ``members_limit`` (live members, most severe
first), details by ``alerts_limit`` / ``members_limit`` / ``history_limit``, each saying what it left out and
where the rest pages; large answers wait for the slots of ``ioc/api/heavy.py`` and are encoded off the loop.
The live feed too: a connecting screen's snapshot held all 3,001 incidents with every member (6.9 MB); now the
200 most severe with 50 members each (``incidents_total``, ``incidents_truncated``), and the operator's page of
the big incident says "showing 500 of 20,000" with the next page.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import websockets

from ioc.alerts.feed_view import SNAPSHOT_NEWEST_CRITICAL
from tests.support.auth import make_token_sync, make_user_sync
from tests.support.services import ServiceProcess, api_on_seeded_database

pytestmark = pytest.mark.integration

SMALL, BIG_MEMBERS, EVENTS, ALERT_EVENTS = 3000, 20_000, 3000, 1500
BIG = SMALL + 1  # the storm's incident: critical, the oldest
LAST_ALERT = SMALL + BIG_MEMBERS
CRITICAL_MEMBERS = BIG_MEMBERS // 200  # 100 of its members are critical, the rest minor
HOSTILE, OTHER = "127.0.0.1", "127.0.0.2"
SEVERITIES = "ARRAY['critical', 'major', 'minor', 'warning', 'info']"


async def _seed(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"""
            INSERT INTO incidents (id, group_key, category, severity, state, title, district, started_at, updated_at,
                                   detail)
            SELECT i, 'g' || i, 'power', ({SEVERITIES})[1 + i % 5], CASE WHEN i % 7 = 0 THEN 'acknowledged'
                   ELSE 'open' END, 'incident ' || i, 'D' || (i % 10), now() - make_interval(secs => 3600 - i),
                   now(), jsonb_build_object('members', jsonb_build_array(i))
            FROM generate_series(1, {SMALL}) AS i;
            INSERT INTO incidents (id, group_key, category, severity, state, title, district, started_at, updated_at,
                                   detail)
            SELECT {BIG}, 'power:ALL', 'power', 'critical', 'open', 'province outage', 'D0',
                   now() - interval '2 hours', now(),
                   jsonb_build_object('members', (SELECT jsonb_agg(a) FROM generate_series({SMALL + 1}, {LAST_ALERT})
                                                  AS a));
            INSERT INTO alerts (id, dedupe_key, rule, category, severity, state, title, explanation, device_id, kind,
                                district, incident_id, started_at, last_seen_at, evidence)
            SELECT i, 'k' || i, 'mains_power_lost', 'power',
                   CASE WHEN i <= {SMALL} THEN ({SEVERITIES})[1 + i % 5]
                        WHEN i % 200 = 0 THEN 'critical' ELSE 'minor' END,
                   CASE WHEN i > {SMALL} AND i % 3 = 0 THEN 'resolved' ELSE 'open' END,
                   'alert ' || i, 'mains lost', CASE WHEN i <= {SMALL} THEN 'dev-' || i ELSE 'bts-' || (i % 5000) END,
                   'bts', 'D' || (i % 10), CASE WHEN i <= {SMALL} THEN i ELSE {BIG} END,
                   now() - make_interval(secs => {LAST_ALERT} - i), now(), '{{"battery_pct": 40}}'::jsonb
            FROM generate_series(1, {LAST_ALERT}) AS i;
            INSERT INTO alert_events (ts, incident_id, alert_id, action, actor, detail)
            SELECT now() - make_interval(secs => {EVENTS} - i), {BIG},
                   CASE WHEN i <= {ALERT_EVENTS} THEN {LAST_ALERT} END, 'joined', 'system', jsonb_build_object('n', i)
            FROM generate_series(1, {EVENTS}) AS i;
        """)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def storm(mqtt_port: int) -> Iterator[tuple[ServiceProcess, str]]:
    # its own database: the storm's 3,001 live incidents stay there
    with api_on_seeded_database(mqtt_port, _seed, "test_hostile_incident_storm") as served:
        yield served


def _get(srv: ServiceProcess, path: str, token: str, source: str = OTHER
         ) -> tuple[int, http.client.HTTPMessage, Any, float]:
    conn = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=60, source_address=(source, 0))
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, resp.headers, json.loads(body) if body else None, time.monotonic()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def viewer(storm: tuple[ServiceProcess, str]) -> str:
    return make_token_sync(storm[1], "viewer", f"storm-{uuid.uuid4().hex[:6]}")


def test_live_incidents_are_bounded_most_severe_first(storm: tuple[ServiceProcess, str], viewer: str) -> None:
    srv, _ = storm
    status, headers, live, _ = _get(srv, "/api/incidents/live", viewer)
    assert status == 200 and len(live) == 200  # the default limit
    assert headers["X-Total-Count"] == str(SMALL + 1) and headers["X-Truncated"] == "true"
    ranks = ["critical", "major", "minor", "warning", "info"]
    assert [ranks.index(i["severity"]) for i in live] == sorted(ranks.index(i["severity"]) for i in live)
    big = live[0]  # critical and the oldest
    assert big["id"] == BIG and big["state"] == "open"
    assert len(big["members"]) == 50 and big["members_truncated"] is True
    assert big["member_count"] == BIG_MEMBERS and big["members_omitted"] == BIG_MEMBERS - 50
    assert big["device_count"] == 5000 and len(big["devices"]) == 50 and big["devices"] == sorted(big["devices"])
    # kept: live members first, then the most severe (100 of the storm's members are critical and open)
    assert {(m["severity"], m["state"]) for m in big["members"]} == {("critical", "open")}
    assert [m["alert_id"] for m in big["members"]] == sorted(m["alert_id"] for m in big["members"])
    small = live[1]
    assert small["member_count"] == 1 and len(small["members"]) == 1 and small["members_truncated"] is False
    assert small["members_omitted"] == 0 and small["devices"] == [f"dev-{small['id']}"]

    status, headers, every, _ = _get(srv, "/api/incidents/live?limit=5000&members_limit=0", viewer)
    assert status == 200 and len(every) == SMALL + 1 and "X-Truncated" not in headers
    assert all(i["members"] == [] and i["members_truncated"] == (i["member_count"] > 0) for i in every)
    assert sum(i["member_count"] for i in every) == SMALL + BIG_MEMBERS
    # an answer of 5,000 incidents x 1,000 members is refused before anything is read
    assert _get(srv, "/api/incidents/live?limit=5000&members_limit=1000", viewer)[0] == 422


def test_live_incidents_filter_in_the_database_most_severe_first(storm: tuple[ServiceProcess, str],
                                                                 viewer: str) -> None:
    """The operator's live list filters by state, severity, category and district before the cut: a filter's most
    severe match comes first however old it is, and the count says how many match."""
    srv, _ = storm
    # district D0: the storm's incident (critical, the oldest) and the 300 small critical ones of D0
    status, headers, d0, _ = _get(srv, "/api/incidents/live?district=D0&category=power&limit=300&members_limit=0",
                                  viewer)
    assert status == 200 and len(d0) == 300 and headers["X-Total-Count"] == str(SMALL // 10 + 1)
    assert headers["X-Truncated"] == "true" and d0[0]["id"] == BIG and d0[0]["member_count"] == BIG_MEMBERS
    assert {i["district"] for i in d0} == {"D0"} and [i["id"] for i in d0[1:]] == list(range(10, 3000, 10))
    # two severities, acknowledged only: every match, the more severe first, then the oldest
    want = [i for i in range(1, SMALL + 1) if i % 7 == 0 and i % 5 in (1, 4)]
    status, headers, acked, _ = _get(srv, "/api/incidents/live?state=acknowledged&severity=info&severity=major"
                                          "&limit=5000&members_limit=0", viewer)
    assert status == 200 and headers["X-Total-Count"] == str(len(want)) and "X-Truncated" not in headers
    assert {i["state"] for i in acked} == {"acknowledged"} and {i["severity"] for i in acked} == {"major", "info"}
    assert [i["id"] for i in acked] == sorted(want, key=lambda i: (i % 5, i))  # major (1), then info (4)
    status, headers, none, _ = _get(srv, "/api/incidents/live?category=water", viewer)
    assert status == 200 and none == [] and headers["X-Total-Count"] == "0"
    # bad values are refused, not read: a closed state, an unknown severity, empty or oversized codes
    for bad in ("state=resolved", "severity=severe", "district=", "category=" + "x" * 65, "limit=0",
                "members_limit=1001"):
        assert _get(srv, f"/api/incidents/live?{bad}", viewer)[0] == 422, bad


def test_incident_and_alert_details_cap_their_lists_and_page_the_rest(storm: tuple[ServiceProcess, str],
                                                                      viewer: str) -> None:
    srv, _ = storm
    status, _, inc, _ = _get(srv, f"/api/incidents/{BIG}", viewer)
    assert status == 200
    assert len(inc["alerts"]) == 500 and inc["alert_count"] == BIG_MEMBERS and inc["alerts_truncated"] is True
    assert inc["alerts"][0]["id"] == LAST_ALERT  # newest first
    assert len(inc["members"]) == 500 and inc["member_count"] == BIG_MEMBERS and inc["members_truncated"] is True
    assert len(inc["history"]) == 500 and inc["history_count"] == EVENTS and inc["history_truncated"] is True
    assert [e["detail"]["n"] for e in inc["history"]] == list(range(EVENTS - 499, EVENTS + 1))  # latest, oldest first
    # the rest of the alerts: the next page of /api/alerts
    status, _, page, _ = _get(srv, inc["alerts_next"], viewer)
    assert status == 200 and len(page) == 500 and page[0]["id"] == LAST_ALERT - 500
    assert not {a["id"] for a in page} & {a["id"] for a in inc["alerts"]}
    # the rest of the history: older pages, following Link to the first entry
    seen = [e["detail"]["n"] for e in inc["history"]]
    status, headers, older, _ = _get(srv, inc["history_next"], viewer)
    assert status == 200 and headers["X-Total-Count"] == str(EVENTS)
    pages = 1
    while True:
        seen = [e["detail"]["n"] for e in older] + seen
        pages += 1
        if "Link" not in headers:
            break
        nxt = headers["Link"].split(">")[0].lstrip("<").split(str(srv.port), 1)[1]
        status, headers, older, _ = _get(srv, nxt, viewer)
        assert status == 200
    assert seen == list(range(1, EVENTS + 1)) and pages == EVENTS // 500
    # a small incident: nothing cut
    status, _, one, _ = _get(srv, "/api/incidents/5", viewer)
    assert one["alert_count"] == 1 and not one["alerts_truncated"] and one["alerts_next"] is None
    assert one["members"][0]["alert_id"] == 5 and one["history_truncated"] is False
    # an alert's history
    status, _, alert, _ = _get(srv, f"/api/alerts/{LAST_ALERT}?history_limit=1000", viewer)
    assert status == 200 and len(alert["history"]) == 1000 and alert["history_count"] == ALERT_EVENTS
    assert alert["history_truncated"] is True and alert["history_next"].startswith(f"/api/alerts/{LAST_ALERT}/history")
    assert _get(srv, "/api/incidents/99999/history", viewer)[0] == 404


def test_storm_answers_at_once_leave_a_small_request_served(storm: tuple[ServiceProcess, str], viewer: str) -> None:
    srv, dsn = storm
    hostile = make_token_sync(dsn, "viewer", f"hostile-{uuid.uuid4().hex[:6]}")
    big_paths = (["/api/incidents/live?limit=5000&members_limit=20"] * 5
                 + [f"/api/incidents/{BIG}?alerts_limit=5000&members_limit=5000&history_limit=5000"] * 3)
    probes: list[tuple[int, float]] = []
    started = threading.Event()
    done = threading.Event()

    def probing() -> None:
        started.wait()
        while not done.is_set():
            status, _, _, at = _get(srv, "/api/incidents?limit=5", viewer, OTHER)
            probes.append((status, at))

    prober = threading.Thread(target=probing)
    prober.start()
    try:
        with ThreadPoolExecutor(len(big_paths)) as pool:
            futures = [pool.submit(_get, srv, p, hostile, HOSTILE) for p in big_paths]
            started.set()
            results = [f.result() for f in futures]
    finally:
        done.set()
        prober.join()
    assert [r[0] for r in results] == [200] * len(big_paths)
    assert all(len(r[2]) == SMALL + 1 for r in results[:5])
    assert all(len(r[2]["alerts"]) == 5000 and len(r[2]["history"]) == EVENTS for r in results[5:])
    finished = sorted(r[3] for r in results)
    # the other client's small requests went on while the big ones waited for their slots (two at a time)
    assert probes and all(status == 200 for status, _ in probes)
    assert probes[0][1] < finished[0], "the first small request waited for a big answer"
    assert sum(at < finished[-1] for _, at in probes) >= 3, (len(probes), finished[-1] - finished[0])


async def _snapshot(srv: ServiceProcess, token: str, query: str = "") -> tuple[dict[str, Any], int, float]:
    """The first snapshot a screen gets on connecting (waiting for the replica's first reload), its size and time."""
    url = f"ws://127.0.0.1:{srv.port}/ws/live?token={token}{query}"
    deadline = time.monotonic() + 20
    while True:
        began = time.monotonic()
        async with websockets.connect(url, max_size=None, open_timeout=20) as ws:
            text = await asyncio.wait_for(ws.recv(), 20)
        took = time.monotonic() - began
        frames = json.loads(text)
        snap = next(f for f in frames if f["type"] == "snapshot")
        if snap.get("incidents") or time.monotonic() > deadline:
            return snap, len(text), took
        await asyncio.sleep(0.2)


def test_a_connecting_screen_gets_a_bounded_snapshot_and_capped_updates(storm: tuple[ServiceProcess, str],
                                                                        viewer: str) -> None:
    """Before, every screen connecting during the storm got all 3,001 incidents with all 20,000 members of the big one
    (6.9 MB); now the 200 most severe with 50 members each (~155 KB), saying how many were left out."""
    srv, dsn = storm
    snap, size, _ = asyncio.run(_snapshot(srv, viewer))
    assert size < 400_000, size
    # the 200 most severe (then oldest), then the newest open critical ones they left out (newest first)
    incidents, newest = snap["incidents"][:200], snap["incidents"][200:]
    assert len(newest) == SNAPSHOT_NEWEST_CRITICAL
    assert snap["incidents_total"] == SMALL + 1 and snap["incidents_truncated"] is True
    assert {(i["severity"], i["state"]) for i in newest} == {("critical", "open")} and newest[0]["id"] == SMALL
    assert [i["started_at"] for i in newest] == sorted((i["started_at"] for i in newest), reverse=True)
    assert not {i["id"] for i in newest} & {i["id"] for i in incidents}
    ranks = ["critical", "major", "minor", "warning", "info"]
    assert [ranks.index(i["severity"]) for i in incidents] == sorted(ranks.index(i["severity"]) for i in incidents)
    big = incidents[0]
    assert big["id"] == BIG and len(big["members"]) == 50 and big["member_count"] == BIG_MEMBERS
    assert big["members_truncated"] is True and big["members_omitted"] == BIG_MEMBERS - 50
    assert big["device_count"] == 5000 and len(big["devices"]) == 50
    assert {(m["severity"], m["state"]) for m in big["members"]} == {("critical", "open")}
    # the same incidents and cut as the REST list
    _, _, live, _ = _get(srv, "/api/incidents/live", viewer)
    assert [i["id"] for i in live] == [i["id"] for i in incidents]
    assert [m["alert_id"] for m in live[0]["members"]] == [m["alert_id"] for m in big["members"]]
    assert incidents[1]["member_count"] == 1 and incidents[1]["members_truncated"] is False

    async def update_of_the_big_one() -> tuple[dict[str, Any], int]:
        url = f"ws://127.0.0.1:{srv.port}/ws/live?token={viewer}&types=incident"
        async with websockets.connect(url, max_size=None) as ws:
            await asyncio.wait_for(ws.recv(), 20)  # the snapshot
            conn = await asyncpg.connect(dsn)
            try:  # the leader's NOTIFY of a change to it: the replica reads it back and pushes it
                await conn.execute("SELECT pg_notify('ioc_alerts', $1)", json.dumps({"incidents": [BIG]}))
            finally:
                await conn.close()
            while True:
                text = await asyncio.wait_for(ws.recv(), 20)
                for frame in json.loads(text):
                    if frame["type"] == "incident" and frame["incident"]["id"] == BIG:
                        return frame["incident"], len(text)

    inc, size = asyncio.run(update_of_the_big_one())
    assert size < 40_000, size  # 14 KB here; before, every one of its 20,000 members
    assert len(inc["members"]) == 50 and inc["member_count"] == BIG_MEMBERS and inc["members_truncated"] is True
    assert inc["device_count"] == 5000


def test_the_operator_page_shows_n_of_m_for_the_storms_incident(storm: tuple[ServiceProcess, str],
                                                                 artifacts: Path) -> None:
    """The incident's page showed the alerts it received (500) as its member count; now the true count, "showing
    500 of 20,000" and a button for the next page; the wall counts every live incident, not the snapshot's 200."""
    from tests.integration.browser_support import Pages, chromium, log_in, wait_js

    srv, dsn = storm
    name = f"xem-{uuid.uuid4().hex[:6]}"
    password = make_user_sync(dsn, "viewer", name)[1]
    with chromium() as browser:
        pages = Pages(browser, artifacts)
        page = pages.open("ops-storm", 1366, 900)
        log_in(page, srv.url, name, password, f"/ops?lang=en#/incidents/{BIG}")
        wait_js(page, "window.__ops.view === 'IncidentView' && window.__ops.ready", 20, hook="__ops")
        more = page.locator("#members-more")
        assert more.is_visible() and more.get_attribute("data-shown") == "500"
        assert more.get_attribute("data-total") == str(BIG_MEMBERS)
        assert "Showing 500 of 20,000 alerts" in more.inner_text()
        assert "20,000" in page.inner_text(".inc-head .facts")
        assert page.locator("table.members tbody tr").count() == 500
        assert more.locator("a.next").get_attribute("href") == (f"/api/alerts?incident_id={BIG}&limit=500"
                                                                 "&offset=500")
        page.screenshot(path=str(artifacts / "ops-storm-incident-1366x900.png"))
        more.locator("button.more").click()
        wait_js(page, "document.querySelector('#members-more').dataset.shown === '1000'", 20, hook="__ops")
        assert page.locator("table.members tbody tr").count() == 1000
        assert "MEMBER ALERTS · 1,000 / 20,000" in page.inner_text(".cols")  # an uppercase heading
        # the wall: 210 incidents in its snapshot, 3,001 live
        wall = pages.open("wall-storm")
        log_in(wall, srv.url, name, password, "/?lang=en")
        wait_js(wall, f"window.__ioc.incidents === {SMALL + 1}", 20)
        assert wall.inner_text("#incidents-sub") == str(SMALL + 1)
        pages.check()


def test_the_operator_live_list_shows_the_oldest_critical_incident_first(storm: tuple[ServiceProcess, str],
                                                                          artifacts: Path, viewer: str) -> None:
    """The live list read the newest 300 of /api/incidents and sorted them in the page: the storm's oldest critical
    incident was not in it. Now it reads /api/incidents/live with its filters (the server's most severe first)."""
    from tests.integration.browser_support import Pages, chromium, log_in, wait_js

    srv, dsn = storm
    name = f"xem-{uuid.uuid4().hex[:6]}"
    password = make_user_sync(dsn, "viewer", name)[1]
    shown = "[...document.querySelectorAll('table.list tr.row')].map(r => r.dataset.id).join()"

    def server(query: str) -> str:
        return ",".join(str(i["id"]) for i in _get(srv, f"/api/incidents/live?{query}&limit=300&members_limit=0",
                                                    viewer)[2])

    with chromium() as browser:
        pages = Pages(browser, artifacts)
        page = pages.open("ops-storm-list", 1366, 900)
        log_in(page, srv.url, name, password, "/ops?lang=en#/incidents")
        everything = server("")
        assert everything.startswith(f"{BIG},")
        wait_js(page, f"window.__ops.ready && {shown} === '{everything}'", 20, hook="__ops")
        assert page.locator("table.list tr.row").first.get_attribute("data-sev") == "critical"
        # the cut is said, with the server's count (X-Total-Count)
        assert page.inner_text(".list-cut") == f"Showing 300 of {SMALL + 1:,} — filter to see the rest"
        page.screenshot(path=str(artifacts / "ops-storm-live-list-1366x900.png"))
        # filters apply in the server: 301 live incidents in D0, the storm's first (the newest 300 held 30 of D0)
        page.goto(f"{srv.url}/ops?lang=en#/incidents?district=D0")
        d0 = server("district=D0")
        assert d0.startswith(f"{BIG},") and len(d0.split(",")) == 300
        wait_js(page, f"window.__ops.ready && {shown} === '{d0}'", 20, hook="__ops")
        assert page.inner_text(".list-cut") == f"Showing 300 of {SMALL // 10 + 1} — filter to see the rest"
        page.select_option(".filters select >> nth=1", "major")
        major = server("district=D0&severity=major")
        assert major == ""
        wait_js(page, "document.querySelector('table.list td.none') !== null", 20, hook="__ops")
        page.goto(f"{srv.url}/ops?lang=en#/incidents?district=D1&severity=major")
        major = server("district=D1&severity=major")
        assert len(major.split(",")) == 300 and major.startswith("1,11,")
        wait_js(page, f"window.__ops.ready && {shown} === '{major}'", 20, hook="__ops")
        assert "district=D1" in page.evaluate("location.hash") and "severity=major" in page.evaluate("location.hash")
        pages.check()
