"""The operator view in a real Chromium against `ioc serve --ingest`: lists and filters, an incident's page (map,
evidence, timeline) with acknowledge, assign, comment, resolve and close, silences, and a device's page."""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import expect

from tests.conftest import BASE_DSN, create_database, drop_database, ingest_env
from tests.integration.browser_support import Pages, chromium, log_in, publish_event, publish_fleet, wait_js
from tests.support.auth import bearer, make_token_sync, make_user_sync
from tests.support.mqtt import Publisher
from tests.support.services import ServeProcess, private_mosquitto, wait_until

pytestmark = pytest.mark.integration


@pytest.fixture
def server(artifacts: Path) -> Iterator[tuple[ServeProcess, int]]:
    """A server on a fresh database and a private broker (the lists then hold this test's incidents only)."""
    dsn = asyncio.run(create_database(BASE_DSN))
    try:
        with private_mosquitto() as port:
            env = ingest_env(dsn, port, IOC_MQTT__CLIENT_ID=f"ops-{uuid.uuid4().hex[:6]}", IOC_ALERTS__TICK_S="0.2",
                             IOC_ANALYTICS__ENABLED="false")
            with ServeProcess(env, artifacts / "serve.log") as srv:
                AUTH.update(bearer(make_token_sync(dsn, "admin")))
                USERS["an"] = make_user_sync(dsn, "officer", "an")[1]
                USERS["xem"] = make_user_sync(dsn, "viewer", "xem")[1]
                USERS["lan"] = make_user_sync(dsn, "supervisor", "lan")[1]
                yield srv, port
    finally:
        AUTH.clear()
        USERS.clear()
        asyncio.run(drop_database(BASE_DSN, dsn))


AUTH: dict[str, str] = {}  # the test's own API calls: an admin token
USERS: dict[str, str] = {}  # user name -> password: "an" an officer, "xem" a viewer, "lan" a supervisor


@pytest.fixture
def pages(artifacts: Path) -> Iterator[Pages]:
    with chromium() as browser:
        p = Pages(browser, artifacts)
        yield p
        p.check()


def api(url: str, body: dict[str, Any] | None = None, method: str = "GET") -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json", **AUTH})
    with urllib.request.urlopen(req, timeout=5) as resp:
        return json.load(resp)


def listed(*ids: int) -> str:
    """A predicate: the list shows exactly these incidents."""
    want = ",".join(str(i) for i in ids)
    return f"[...document.querySelectorAll('table.list tr.row')].map(r => r.dataset.id).join() === '{want}'"


def ops_wait(page: Any, expr: str, timeout_s: float = 10.0) -> None:
    wait_js(page, expr, timeout_s, hook="__ops")


def rows(page: Any) -> list[str]:
    """Titles of the list's rows as shown."""
    return list(page.locator("table.list tbody tr.row td.title").all_inner_texts())


def test_operator_lists_incident_page_silences_and_device_page(server: tuple[ServeProcess, int], pages: Pages,
                                                               artifacts: Path) -> None:
    srv, port = server
    tag = uuid.uuid4().hex[:4]
    bts = [f"OB-LC{i}-{tag}" for i in range(3)]
    cam = f"OC-NQ-{tag}"
    api(f"{srv.url}/api/officers/binh", {"name": "Trần Bình"}, "PUT")
    pub = Publisher(port)
    try:
        # Twenty minutes of readings, so the evidence chart and the device page have history to draw.
        fleet = {**{d: ("bts", "LC", "online") for d in bts}, cam: ("camera", "NQ", "online")}
        publish_fleet(pub, fleet, history_min=20)
        wait_until(lambda: len(api(f"{srv.url}/api/devices")) >= 4, 20, 0.1, what="devices registered")
        for dev in bts:
            publish_event(pub, "bts", dev, "mains_power_lost", "major", battery_pct=91)
        publish_event(pub, "camera", cam, "tamper", "major", zone="lens")

        def incidents() -> list[dict[str, Any]]:
            return [i for i in api(f"{srv.url}/api/incidents/live") if set(i["devices"]) & {*bts, cam}]
        wait_until(lambda: len(incidents()) == 2 and max(i["member_count"] for i in incidents()) == 3, 20, 0.1,
                   what="a power incident of 3 and a camera incident")
        power = next(i for i in incidents() if i["category"] == "power")
        camera = next(i for i in incidents() if i["category"] != "power")

        # The screens' own read endpoints (routes_ui): settings, KPI history, a device's states.
        assert api(f"{srv.url}/api/ui/config") == {"lang": "vi", "timezone": "Asia/Ho_Chi_Minh", "city": "Hải Phòng",
                                                   "alerts": True}
        kpis = api(f"{srv.url}/api/ui/kpis?hours=1&bucket_min=5")
        assert kpis and kpis[-1]["bts"] == 100.0 and kpis[-1]["cam"] == 100.0 and kpis[-1]["incidents"] == 2
        states = api(f"{srv.url}/api/devices/{bts[0]}/status")
        assert [(s["state"], s["reason"]) for s in states] == [("online", "test")]

        # A viewer sees the lists but is offered no action, and the server refuses one anyway.
        viewer = pages.open("ops-viewer", 1366, 900)
        viewer.goto(f"{srv.url}/ops?lang=vi")
        viewer.wait_for_url(f"{srv.url}/login?next=%2Fops%3Flang%3Dvi")  # anonymous: sent to the login page
        log_in(viewer, srv.url, "xem", USERS["xem"], f"/ops?lang=vi#/incidents/{power['id']}")
        ops_wait(viewer, "window.__ops.view === 'IncidentView' && window.__ops.ready")
        assert viewer.inner_text("#user") == "xem · chỉ xem"
        assert not viewer.is_visible(".action-bar")
        refused = viewer.evaluate(f"""fetch('/api/incidents/{power['id']}/ack', {{method: 'POST', body: '{{}}',
            headers: {{'Content-Type': 'application/json',
                       'X-CSRF-Token': document.cookie.match(/ioc_csrf=([^;]+)/)[1]}}}}).then(r => r.status)""")
        assert refused == 403
        viewer.click("#logout")
        # expect() polls the URL: wait_for_url failed on a navigation aborted by the next one (ERR_ABORTED, seen
        # once in a full run), though the page did end on the login page
        expect(viewer).to_have_url(re.compile(re.escape(f"{srv.url}/login?next=") + ".*"), timeout=15_000)

        page = pages.open("ops", 1366, 900)
        log_in(page, srv.url, "an", USERS["an"], "/ops?lang=vi#/incidents")
        ops_wait(page, "window.__ops.connected && window.__ops.ready")
        assert page.inner_text("#user") == "an · cán bộ trực"
        assert page.inner_text("nav a.on") == "Sự cố"
        wait_js(page, "document.querySelectorAll('table.list tbody tr.row').length === 2", hook="__ops")
        assert any(t.startswith(f"#{power['id']} Mất điện lưới 3 trạm BTS tại Lê Chân") for t in rows(page))
        page.screenshot(path=str(artifacts / "ops-incidents-1366x900.png"))

        # Filters: by district, by category, by text; the URL keeps them.
        page.select_option(".filters select >> nth=2", "NQ")
        ops_wait(page, listed(camera['id']))
        assert "district=NQ" in page.evaluate("location.hash")
        page.select_option(".filters select >> nth=2", "")
        page.select_option(".filters select >> nth=3", "power")
        ops_wait(page, listed(power['id']))
        page.select_option(".filters select >> nth=3", "")
        page.fill(".filters .search", cam.lower())
        ops_wait(page, listed(camera['id']))
        page.fill(".filters .search", "")

        # The incident's page: members on the map, evidence (values and chart), timeline.
        page.click(f"table.list tr.row[data-id='{power['id']}'] a")
        ops_wait(page, "window.__ops.view === 'IncidentView' && window.__ops.ready")
        assert page.inner_text("#inc-title") == f"#{power['id']} Mất điện lưới 3 trạm BTS tại Lê Chân"
        assert page.locator("table.members tbody tr").count() == 3
        assert "battery_pct" in page.inner_text(".evidence table.kv")
        ops_wait(page, "Number(document.querySelector('#evidence-chart')?.dataset.points) >= 10")
        history = page.locator(".timeline li").all_inner_texts()
        assert "Mở sự cố" in history[0] and sum("Cảnh báo mới" in h for h in history) == 3

        # Acknowledge (with a note), assign, comment, resolve, close: each lands in the timeline and the API.
        page.fill(".action-bar .note", "điện lực đã nhận tin")
        page.click(".act-ack")
        ops_wait(page, "document.querySelector('#inc-state').dataset.state === 'acknowledged'")
        page.fill(".assign input", "binh")
        page.click(".act-assign")
        ops_wait(page, "[...document.querySelectorAll('.facts dd')].some(d => d.textContent === 'binh')")
        page.fill(".comment-box textarea", "đội kỹ thuật đang tới")
        page.click(".comment-box button")
        ops_wait(page, "[...document.querySelectorAll('.timeline li')].some(l => l.textContent.includes('kỹ thuật'))")
        page.screenshot(path=str(artifacts / "ops-incident-1366x900.png"))
        page.click(".act-resolve")
        ops_wait(page, "document.querySelector('#inc-state').dataset.state === 'resolved'")
        # The mains fail again soon after: the same incident reopens, still with the officer who took it.
        publish_event(pub, "bts", bts[0], "mains_power_lost", "major", battery_pct=88)
        ops_wait(page, "document.querySelector('#inc-state').dataset.state === 'acknowledged'")
        ops_wait(page, "[...document.querySelectorAll('.facts div')].some(d => d.textContent === 'Mở lại1×')")
        ops_wait(page, "[...document.querySelectorAll('.timeline li')]"
                       ".some(l => l.textContent.includes('Mở lại sự cố'))")
        page.click(".act-resolve")
        ops_wait(page, "document.querySelector('#inc-state').dataset.state === 'resolved'")
        page.click(".act-close")
        ops_wait(page, "document.querySelector('#inc-state').dataset.state === 'closed'")
        detail = api(f"{srv.url}/api/incidents/{power['id']}")
        assert detail["acked_by"] == "an" and detail["assignee"] == "binh" and detail["state"] == "closed"
        done = [(h["action"], h["actor"], h["note"]) for h in detail["history"] if h["actor"] == "an"]
        assert done[:3] == [("acknowledged", "an", "điện lực đã nhận tin"), ("assigned", "an", "binh"),
                            ("commented", "an", "đội kỹ thuật đang tới")]
        assert {a for a, _, _ in done} >= {"incident_resolved", "closed"}
        assert [h["action"] for h in detail["history"]].count("incident_reopened") == 1

        # The camera incident: its snapshot is part of the evidence; "Silence…" opens a prefilled form.
        page.goto(f"{srv.url}/ops?lang=vi#/incidents/{camera['id']}")
        ops_wait(page, "window.__ops.view === 'IncidentView' && window.__ops.ready")
        ops_wait(page, "document.querySelector('#evidence-snapshot')?.naturalWidth === 640")
        page.click(".actions a.button")
        ops_wait(page, "window.__ops.view === 'SilenceView' && window.__ops.ready")
        assert page.input_value(".silence-form [name=device_id]") == cam
        durations = page.eval_on_selector_all(".silence-form [name=duration] option", "os => os.map(o => o.value)")
        assert max(map(int, durations)) == 240  # an officer is offered silences of at most 4 h
        page.fill(".silence-form [name=reason]", "thay ống kính")
        page.click(".silence-form button[type=submit]")
        ops_wait(page, "document.querySelectorAll('table.silences tbody tr[data-id]').length === 1")
        silence = api(f"{srv.url}/api/silences")[0]
        assert silence["matchers"] == {"device_id": cam} and silence["author"] == "an"
        page.click("table.silences button.small >> nth=0")  # +1 h
        wait_until(lambda: api(f"{srv.url}/api/silences")[0]["ends_at"] != silence["ends_at"], 5, 0.1, what="extended")
        page.screenshot(path=str(artifacts / "ops-silences-1366x900.png"))
        page.click("table.silences button.danger")
        ops_wait(page, "document.querySelectorAll('table.silences tbody tr[data-id]').length === 0")
        assert api(f"{srv.url}/api/silences") == []

        # A supervisor may silence for longer: the form offers a day.
        lead = pages.open("ops-supervisor", 1366, 900)
        log_in(lead, srv.url, "lan", USERS["lan"], "/ops?lang=vi#/silences")
        ops_wait(lead, "window.__ops.view === 'SilenceView' && window.__ops.ready")
        assert lead.inner_text("#user") == "lan · trưởng ca"
        assert "1440" in lead.eval_on_selector_all(".silence-form [name=duration] option", "os => os.map(o => o.value)")

        # Alerts list: the camera alert, linked to its incident and its device.
        page.goto(f"{srv.url}/ops?lang=vi#/alerts")
        ops_wait(page, "window.__ops.view === 'AlertList' && window.__ops.ready")
        ops_wait(page, f"[...document.querySelectorAll('table.list tr.row td a')].some(a => a.textContent === '{cam}')")

        # A device's page: latest values (live), history charts, status timeline, alerts and alarms.
        page.goto(f"{srv.url}/ops?lang=vi#/devices/{bts[0]}")
        ops_wait(page, "window.__ops.view === 'DeviceView' && window.__ops.ready")
        assert page.inner_text("#device-title") == bts[0]
        assert "Pin" in page.inner_text("table.latest")
        ops_wait(page, "Number(document.querySelector('.charts').dataset.metrics) === 3")
        ops_wait(page, "Number(document.querySelector('#status-strip').dataset.changes) >= 1")
        assert "Mất điện lưới" in page.inner_text(".col:first-child")  # recent alert and the device's own alarm
        pub.publish(f"ioc/v1/bts/{bts[0]}/telemetry", {"ts": int(time.time() * 1000), "seq": 99,
                                                       "metrics": {"battery_pct": 42.0}})
        pub.wait_all()
        ops_wait(page, "document.querySelector('table.latest tr[data-metric=battery_pct] .value')"
                       ".textContent.startsWith('42')")
        page.screenshot(path=str(artifacts / "ops-device-1366x900.png"))

        # English labels by setting.
        page.goto(f"{srv.url}/ops?lang=en#/incidents")
        ops_wait(page, "window.__ops.ready")
        assert page.inner_text("nav a.on") == "Incidents"
    finally:
        pub.close()
