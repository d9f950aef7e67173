"""The wall display in a real Chromium against a real `ioc serve --ingest`: render, live events, reconnect."""

from __future__ import annotations

import asyncio
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest

from ioc.geo import City
from tests.conftest import BASE_DSN, create_database, drop_database, ingest_env
from tests.support.mqtt import Publisher, iso
from tests.support.services import ServeProcess, private_mosquitto

pytestmark = pytest.mark.integration

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
# Points inside three districts of simulators/data/haiphong.json (checked against the outlines below).
WHERE = {"HB": (20.868, 106.65), "LC": (20.845, 106.69), "NQ": (20.858, 106.697)}


@pytest.fixture
def own_database() -> Iterator[str]:
    """A fresh database (with the private broker below), so district figures count this test's devices only."""
    dsn = asyncio.run(create_database(BASE_DSN))
    yield dsn
    asyncio.run(drop_database(BASE_DSN, dsn))


@pytest.fixture
def broker() -> Iterator[int]:
    """A private broker: the shared one carries other tests' devices, which would skew district figures."""
    with private_mosquitto() as port:
        yield port


@pytest.fixture
def server(own_database: str, broker: int, artifacts: Path) -> Iterator[ServeProcess]:
    # Detectors on: the restart below also checks their worker processes release the server's port.
    env = ingest_env(own_database, broker, IOC_MQTT__CLIENT_ID=f"wall-{uuid.uuid4().hex[:6]}")
    with ServeProcess(env, artifacts / "serve.log") as srv:
        yield srv


@pytest.fixture
def page(artifacts: Path) -> Iterator[Any]:
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1366, "height": 768})
        pg = context.new_page()
        console: list[str] = []
        pg.on("console", lambda msg: console.append(f"{msg.type}: {msg.text}"))
        pg.on("pageerror", lambda err: console.append(f"pageerror: {err}"))
        try:
            yield pg
        finally:
            (artifacts / "console.log").write_text("\n".join(console))
            browser.close()
        assert not [line for line in console if line.startswith("pageerror")], console


def camera_jpeg(label: str) -> bytes:
    """A small street-like test picture with the camera id written on it."""
    img = np.zeros((360, 640, 3), np.uint8)
    img[:] = np.linspace(40, 120, 640, dtype=np.uint8)[None, :, None]
    cv2.rectangle(img, (0, 230), (640, 360), (70, 70, 70), -1)
    for x in range(20, 640, 90):
        cv2.rectangle(img, (x, 290), (x + 50, 300), (230, 230, 230), -1)
    cv2.rectangle(img, (200, 180), (330, 250), (30, 30, 200), -1)
    cv2.putText(img, label, (20, 60), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (255, 255, 255), 2)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])
    assert ok
    return buf.tobytes()


def publish_fleet(pub: Publisher, devs: dict[str, tuple[str, str, str]]) -> None:
    """Status, one reading (with position) and, for cameras, a snapshot per device."""
    now = time.time()
    metrics = {"traffic": {"speed_kmh": 38.0, "flow_veh_h": 900.0}, "bts": {"availability_pct": 99.9},
               "camera": {"fps": 25.0}}
    for dev, (kind, district, state) in devs.items():
        lat, lon = WHERE[district]
        base = f"ioc/v1/{kind}/{dev}"
        pub.publish(f"{base}/status", {"ts": iso(now), "state": state, "reason": "test"})
        pub.publish(f"{base}/telemetry", {"ts": iso(now), "seq": 1, "metrics": metrics[kind], "lat": lat, "lon": lon})
        if kind == "camera":
            pub.publish(f"{base}/snapshot", camera_jpeg(dev))
    pub.wait_all()


def tile(page: Any, code: str) -> dict[str, str]:
    """The three figures of a district tile as shown."""
    return {name: page.inner_text(f".district[data-code={code}] .v.{cls} b")
            for name, cls in (("bts", "b"), ("cam", "c"), ("speed", "s"))}


def wait_js(page: Any, expr: str, timeout_s: float = 10.0) -> None:
    """Poll a JS predicate; on timeout, fail with the page's own view of its state."""
    try:
        page.wait_for_function(expr, timeout=timeout_s * 1000, polling=100)
    except sync_api.TimeoutError:
        state = page.evaluate("window.__ioc && Object.fromEntries(Object.keys(window.__ioc)"
                              ".filter(k => typeof window.__ioc[k] !== 'function').map(k => [k, window.__ioc[k]]))")
        pytest.fail(f"timed out after {timeout_s}s waiting for {expr}; page state {state}")


def test_wall_renders_live_state_and_survives_a_restart(server: ServeProcess, page: Any, broker: int,
                                                        artifacts: Path) -> None:
    city = City.load()
    assert all(city.district_of(*WHERE[code]) == code for code in WHERE)
    with urllib.request.urlopen(f"{server.url}/", timeout=5) as resp:  # 404 here: routes_wall is not mounted
        assert resp.headers["content-type"].startswith("text/html")
        assert resp.headers["cache-control"] == "no-cache"

    page.goto(f"{server.url}/?lang=vi")
    wait_js(page, "window.__ioc && window.__ioc.connected")
    assert page.inner_text("#city-name") == "Hải Phòng"

    tag = uuid.uuid4().hex[:4]
    devs = {
        f"WT-HB-{tag}": ("traffic", "HB", "online"), f"WT-LC-{tag}": ("traffic", "LC", "online"),
        f"WB-HB-{tag}": ("bts", "HB", "online"), f"WB-LC1-{tag}": ("bts", "LC", "online"),
        f"WB-LC2-{tag}": ("bts", "LC", "offline"), f"WC-HB-{tag}": ("camera", "HB", "online"),
        f"WC-NQ-{tag}": ("camera", "NQ", "degraded"),
    }
    pub = Publisher(broker)
    try:
        publish_fleet(pub, devs)
        wait_js(page, f"window.__ioc.devices >= {len(devs)} && window.__ioc.drawnDevices >= {len(devs)}")
        for dev, (_, district, state) in devs.items():
            got = page.evaluate("id => window.__ioc.device(id)", dev)
            assert (got["district"], got["state"]) == (district, state), dev

        # District tiles: HB fully up, LC has one of two BTS offline, NQ's only camera degraded.
        wait_js(page, "document.querySelector('.district[data-code=LC] .v.b b')?.textContent === '50%'")
        assert tile(page, "HB") == {"bts": "100%", "cam": "100%", "speed": "38"}
        assert tile(page, "LC") == {"bts": "50%", "cam": "—", "speed": "38"}
        assert tile(page, "NQ") == {"bts": "—", "cam": "0%", "speed": "—"}
        assert page.get_attribute(".district[data-code=LC]", "data-level") == "bad"

        # Camera tiles: the degraded camera first, both pictures loaded from /api/devices/{id}/snapshot.
        wait_js(page, "[...document.querySelectorAll('.cam:not([hidden]) img')]"
                      ".filter(i => i.complete && i.naturalWidth === 640).length === 2")
        cams = page.locator(".cam:not([hidden]) .id").all_inner_texts()
        assert cams == [f"WC-NQ-{tag}", f"WC-HB-{tag}"]

        # A device event reaches the top of the queue within a few seconds, with its Vietnamese label.
        pub.publish(f"ioc/v1/bts/WB-HB-{tag}/event", {"ts": iso(time.time()), "type": "mains_power_lost",
                                                      "severity": "major", "detail": {"battery_pct": 96}})
        wait_js(page, f"(document.querySelector('#events .ev') || {{}}).innerText?.includes('WB-HB-{tag}')", 5)
        first = page.locator("#events .ev").first
        assert "Mất điện lưới" in first.inner_text()
        assert first.get_attribute("data-sev") == "major"

        # A network drop (same server): the page resumes from its last sequence instead of a new snapshot.
        page.evaluate("window.__ioc.drop()")
        wait_js(page, "window.__ioc.connected && window.__ioc.resumes === 1")
        assert page.evaluate("window.__ioc.snapshots") == 1

        page.screenshot(path=str(artifacts / "wall-1366x768.png"))
        page.set_viewport_size({"width": 3840, "height": 2160})
        draws = page.evaluate("window.__ioc.draws")
        wait_js(page, f"window.__ioc.draws > {draws}")
        page.wait_for_timeout(600)  # one UI pass (2 Hz) re-lays the sparklines at the new size
        page.screenshot(path=str(artifacts / "wall-3840x2160.png"))
        page.set_viewport_size({"width": 1366, "height": 768})

        # Restart the server on the same port: the banner shows the outage, then the page reconnects by
        # itself (a new epoch, so a fresh snapshot from the database) and follows new data.
        epoch = page.evaluate("window.__ioc.epoch")
        server.stop()
        wait_js(page, "!window.__ioc.connected")
        page.wait_for_selector("#banner:not([hidden])", timeout=5000)
        page.screenshot(path=str(artifacts / "wall-outage-1366x768.png"))
        server.start()
        wait_js(page, f"window.__ioc.connected && window.__ioc.epoch !== '{epoch}'", 20)
        assert page.evaluate("window.__ioc.devices") >= len(devs)
        late = f"WT-NQ-{tag}"
        publish_fleet(pub, {late: ("traffic", "NQ", "online")})
        wait_js(page, f"window.__ioc.device('{late}') !== null")
        wait_js(page, "document.querySelector('#banner').hidden")
        wait_js(page, "document.querySelector('.district[data-code=NQ] .v.s b').textContent === '38'", 3)
    finally:
        pub.close()

    # 5,000 synthetic devices through the normal frame path: the map still draws quickly.
    page.evaluate("""() => {
        const frames = [];
        const states = ['online', 'online', 'online', 'degraded', 'offline'];
        for (let i = 0; i < 5000; i++) frames.push({type: 'device', seq: 0, device_id: 'SYN' + i,
            kind: ['traffic', 'bts', 'camera'][i % 3], district: null, lat: 20.70 + (i % 71) * 0.003,
            lon: 106.50 + Math.floor(i / 71) * 0.005, state: states[i % 5], latest: {}, last_snapshot: null});
        window.__ioc.inject(frames);
    }""")
    draws = page.evaluate("window.__ioc.draws")
    wait_js(page, f"window.__ioc.draws > {draws} && window.__ioc.drawnDevices >= 5000")
    assert page.evaluate("window.__ioc.lastDrawMs") < 200
    page.wait_for_timeout(600)  # header counts follow at the next UI pass
    page.screenshot(path=str(artifacts / "wall-1366x768-5000-devices.png"))

    page.goto(f"{server.url}/?lang=en")
    wait_js(page, "window.__ioc.connected")
    assert page.inner_text(".title") == "Intelligent Operations Center"
    assert page.inner_text("#conn-text") == "Live"
