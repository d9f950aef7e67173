"""Helpers of the browser tests (wall and operator views): Chromium, pages, polling, test devices."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import cv2
import numpy as np
import pytest

from tests.support.mqtt import Publisher, iso

sync_api = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"  # the Debian package; never `playwright install`
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
# Points inside districts of simulators/data/haiphong.json (the tests check them against the outlines).
WHERE = {"HB": (20.868, 106.65), "LC": (20.845, 106.69), "NQ": (20.858, 106.697)}


@contextlib.contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium for one test."""
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class Pages:
    """Pages of one browser, each logging its console to the artefacts; a page error fails the test."""

    def __init__(self, browser: Any, artifacts: Path) -> None:
        self.browser, self.artifacts = browser, artifacts
        self.logs: dict[str, list[str]] = {}

    def open(self, name: str, width: int = 1366, height: int = 768) -> Any:
        context = self.browser.new_context(viewport={"width": width, "height": height})
        page = context.new_page()
        log = self.logs.setdefault(name, [])
        page.on("console", lambda msg: log.append(f"{msg.type}: {msg.text}"))
        page.on("pageerror", lambda err: log.append(f"pageerror: {err}"))
        return page

    def check(self) -> None:
        for name, log in self.logs.items():
            (self.artifacts / f"console-{name}.log").write_text("\n".join(log))
        errors = [line for log in self.logs.values() for line in log if line.startswith("pageerror")
                  or "Content Security Policy" in line]  # the pages run under a strict CSP: nothing inline
        assert not errors, errors


def log_in(page: Any, base_url: str, username: str, password: str, next_path: str = "/ops") -> None:
    """Log ``page`` in through the login page and land on ``next_path`` (path, query and fragment)."""
    page.goto(f"{base_url}/login?next={quote(next_path, safe='')}")
    page.fill("#username", username)
    page.fill("#password", password)
    page.click("#login-submit")
    page.wait_for_url(f"{base_url}{next_path}", timeout=10_000)


def wait_js(page: Any, expr: str, timeout_s: float = 10.0, hook: str = "__ioc") -> None:
    """Poll a JS predicate; on timeout, fail with the page's own view of its state.

    A predicate that throws (the page's debug hook is not defined yet while it loads) means "not yet".
    """
    guarded = f"(() => {{ try {{ return !!({expr}); }} catch (e) {{ return false; }} }})()"
    # Polled from here with evaluate (not wait_for_function, whose string predicates are an eval that the
    # pages' strict Content-Security-Policy rightly refuses).
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if page.evaluate(guarded):
                return
        except sync_api.Error:
            pass  # the page is navigating
        page.wait_for_timeout(100)
    state = page.evaluate(f"window.{hook} && Object.fromEntries(Object.keys(window.{hook})"
                          f".filter(k => typeof window.{hook}[k] !== 'function').map(k => [k, window.{hook}[k]]))")
    pytest.fail(f"timed out after {timeout_s}s waiting for {expr}; page state {state}")


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


METRICS = {"traffic": {"speed_kmh": 38.0, "flow_veh_h": 900.0},
           "bts": {"availability_pct": 99.9, "mains_power": 1.0, "battery_pct": 100.0},
           "camera": {"fps": 25.0}}


def publish_fleet(pub: Publisher, devs: dict[str, tuple[str, str, str]], history_min: int = 0) -> None:
    """Status, readings (with position) and, for cameras, a snapshot per device: ``{id: (kind, district, state)}``.

    ``history_min`` > 0 also sends one reading a minute for that many minutes before now (chart material).
    """
    now = time.time()
    for dev, (kind, district, state) in devs.items():
        lat, lon = WHERE[district]
        base = f"ioc/v1/{kind}/{dev}"
        pub.publish(f"{base}/status", {"ts": iso(now - 60 * history_min - 1), "state": state, "reason": "test"})
        for i in range(history_min, -1, -1):
            metrics = {k: v - (i % 7) if k == "battery_pct" else v for k, v in METRICS[kind].items()}
            pub.publish(f"{base}/telemetry", {"ts": iso(now - 60 * i), "seq": history_min - i + 1, "metrics": metrics,
                                              "lat": lat, "lon": lon})
        if kind == "camera":
            pub.publish(f"{base}/snapshot", camera_jpeg(dev))
    pub.wait_all()


def publish_event(pub: Publisher, kind: str, dev: str, event: str, severity: str, **detail: object) -> float:
    """A device alarm; returns its timestamp (the time the incident's age and latency count from)."""
    ts = time.time()
    pub.publish(f"ioc/v1/{kind}/{dev}/event", {"ts": iso(ts), "type": event, "severity": severity, "detail": detail})
    pub.wait_all()
    return ts
