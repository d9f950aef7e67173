"""Wall display benchmark: 5,000 devices and 2,000 updates/s into a real headless Chromium. Prints figures.

    python -m benchmarks.wall_bench                    # 10 minutes, 5,000 devices, 2,000 updates/s, 3840x2160
    python -m benchmarks.wall_bench --minutes 1 --size 1920x1080 --json out.json

The wall page runs against the real app (`ioc.api.app.create_app`: static files, /api/city, the live hub and
its /ws/live endpoint) served by uvicorn in this process; the load is fed straight into the hub as ingested
records (readings ~94 %, status changes, device alarms, camera snapshots, incident frames), so the figures
are about the page, not the ingest or the database. No database is needed: the routes that would read one
answer 503 (the wall does without them) and camera snapshots come from one fixed JPEG.

The 5,000-device map is drawn in a worker, at most every 200 ms and up to every 2 s when a draw is costly,
so the frame time alone does not say how fresh the map is: the map's redraw rate over the run is reported,
and, with the load still running, ``--probes`` status changes are published over MQTT (a private Mosquitto;
the app follows it as it does without an embedded ingest) on devices of their own, each timed from the
publish to the page holding it and to the end of the first map draw that contains it (polled every
animation frame, so within about one frame).

Figures: frame time = the interval between consecutive requestAnimationFrame callbacks in the page (p50,
p95, p99, max; target p95 <= 33 ms), long tasks (> 50 ms), and the JS heap (page plus the map's worker)
after a forced GC once a minute (target: flat, i.e. the slope over the run is about zero) with DOM node
and listener counts.
Everything shares this machine with the browser: on a busy or small machine the frame times include waiting
for a core.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import socket
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import uvicorn
from fastapi import Response
from starlette.requests import HTTPConnection

from benchmarks.measure import pct, slope_per_hour
from ingest.records import DeviceEvent, Reading, Snapshot, StatusUpdate
from ioc.api.app import create_app
from ioc.api.deps import Principal, Role, requires
from ioc.auth.service import Authenticator
from ioc.geo import City
from ioc.live.hub import LiveHub
from ioc.settings import Settings
from tests.support.services import private_mosquitto

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
KINDS = (("bts", 0.6), ("traffic", 0.25), ("camera", 0.15))

# Collects requestAnimationFrame intervals and long tasks from the first frame on, in fixed-size buffers.
PAGE_PROBE = """
(() => {
  const ring = new Float64Array(1 << 16);
  let n = 0, last = 0, longTasks = 0, longMs = 0;
  const loop = (t) => { if (last) ring[n++ & 0xffff] = t - last; last = t; requestAnimationFrame(loop); };
  requestAnimationFrame(loop);
  try {
    new PerformanceObserver((l) => { for (const e of l.getEntries()) { longTasks++; longMs += e.duration; } })
      .observe({ type: "longtask", buffered: true });
  } catch (e) {}
  let taken = 0;
  window.__bench = {
    take() {  // intervals since the last call (at most the ring's size)
      const from = Math.max(taken, n - ring.length), out = [];
      for (let i = from; i < n; i++) out.push(ring[i & 0xffff]);
      taken = n;
      return out;
    },
    get longTasks() { return longTasks; },
    get longMs() { return longMs; },
    // When device `id` reaches `state` in the page's store, and when the first map draw sent after that
    // has come back from the worker (epoch ms). A draw already in flight at receipt predates the change.
    watch(id, state, timeoutMs) {
      return new Promise((resolve) => {
        const t0 = Date.now();
        let recv = 0, need = 0;
        const check = () => {
          const ioc = window.__ioc, now = Date.now();
          if (!recv) {
            const d = ioc.device(id);
            if (d && d.state === state) { recv = now; need = ioc.draws + (ioc.mapBusy ? 2 : 1); }
          }
          if (recv && ioc.draws >= need) return resolve({ recv, drawn: now });
          if (now - t0 > timeoutMs) return resolve({ recv, drawn: 0 });
          requestAnimationFrame(check);
        };
        check();
      });
    },
  };
})();
"""


def city_points(city: City, n: int, rng: random.Random) -> Iterator[tuple[float, float]]:
    """``n`` positions inside the city's districts, denser where the population is (as a real fleet is)."""
    weights = [float(d.properties.get("population") or 1) for d in city.districts]
    for _ in range(n):
        d = rng.choices(city.districts, weights)[0]
        x0, y0, x1, y1 = d.bbox
        for _ in range(100):
            lon, lat = rng.uniform(x0, x1), rng.uniform(y0, y1)
            if d.contains(lon, lat):
                break
        yield lat, lon


class Load:
    """Feeds the hub: ``rate`` records/s over ``devices`` devices, plus a few live incidents."""

    def __init__(self, hub: LiveHub, devices: int, rate: float, seed: int = 7) -> None:
        self.hub, self.rate = hub, rate
        self.rng = random.Random(seed)
        city = City.load()
        self.devices: list[tuple[str, str, float, float]] = []
        for i, (lat, lon) in enumerate(city_points(city, devices, self.rng)):
            kind = self.rng.choices([k for k, _ in KINDS], [w for _, w in KINDS])[0]
            self.devices.append((f"B-{kind[:3].upper()}-{i:05d}", kind, lat, lon))
        # Devices of the publish -> screen probes: on the map, never touched by the load.
        self.probes = [(f"B-PRB-{i:03d}", "bts", lat, lon)
                       for i, (lat, lon) in enumerate(city_points(city, 20, self.rng))]
        self.sent = 0
        self.stop = False
        self.incidents: dict[int, dict[str, Any]] = {}
        self.jpeg = b""

    def seed(self) -> None:
        """Every device once (position, state, a reading), as the registry would have them at start."""
        now = datetime.now(UTC)
        for dev, kind, lat, lon in self.devices + self.probes:
            self.hub.on_record(StatusUpdate(dev, kind, now, "online", "boot"), now)
            self.hub.on_record(Reading(dev, kind, now, self.metrics(kind), 1, lat, lon), now)

    def metrics(self, kind: str) -> dict[str, float]:
        r = self.rng
        if kind == "bts":
            return {"availability_pct": 99 + r.random(), "active_users": float(r.randint(5, 400)),
                    "battery_pct": 100.0, "mains_power": 1.0}
        if kind == "traffic":
            return {"speed_kmh": max(3.0, r.gauss(45, 12)), "flow_veh_h": float(r.randint(100, 2400))}
        return {"fps": 25.0, "bitrate_kbps": float(r.randint(1500, 4000))}

    def one(self, now: datetime) -> None:
        dev, kind, lat, lon = self.devices[self.rng.randrange(len(self.devices))]
        x = self.rng.random()
        if x < 0.94:
            self.hub.on_record(Reading(dev, kind, now, self.metrics(kind), None, lat, lon), now)
        elif x < 0.985:
            state = self.rng.choices(["online", "degraded", "offline"], [0.8, 0.1, 0.1])[0]
            self.hub.on_record(StatusUpdate(dev, kind, now, state, "bench"), now)
        elif x < 0.995 and kind == "camera":
            self.hub.on_record(Snapshot(dev, kind, now, self.jpeg, 640, 360), now)
        else:
            ev = {"bts": "mains_power_lost", "traffic": "congestion", "camera": "tamper"}[kind]
            self.hub.on_record(DeviceEvent(dev, kind, now, ev, "major", {"bench": True}), now)
        self.sent += 1

    def incident_tick(self, now: datetime) -> None:
        """Open, acknowledge or resolve one synthetic incident: about 20 live at any time."""
        r = self.rng
        iid = r.randint(1, 30)
        inc = self.incidents.get(iid)
        if inc is None or inc["state"] == "resolved":
            members = r.sample(self.devices, r.randint(1, 6))
            inc = {"id": iid, "state": "open", "severity": r.choice(["critical", "major", "minor", "warning"]),
                   "category": "power", "title": f"Bench incident {iid}", "district": None,
                   "started_at": now.isoformat().replace("+00:00", "Z"), "member_count": len(members),
                   "members": [{"alert_id": iid * 10 + k, "device_id": m[0], "kind": m[1], "state": "open",
                                "severity": "major", "lat": m[2], "lon": m[3]} for k, m in enumerate(members)]}
        else:
            inc = {**inc, "state": "acknowledged" if inc["state"] == "open" else "resolved", "acked_by": "bench"}
        self.incidents[iid] = inc
        self.hub.emit_alert("incident", iid, None, inc)

    async def run(self) -> None:
        tick = 0.02  # 50 batches a second, each sent to the page as one WebSocket message or a few
        start = time.monotonic()
        next_incident = start
        while not self.stop:
            now = datetime.now(UTC)
            due = int((time.monotonic() - start) * self.rate) - self.sent
            for _ in range(max(0, due)):
                self.one(now)
            if time.monotonic() >= next_incident:
                self.incident_tick(now)
                next_incident += 1.0
            await asyncio.sleep(tick)


def jpeg() -> bytes:
    img = np.full((360, 640, 3), 60, np.uint8)
    cv2.rectangle(img, (0, 230), (640, 360), (70, 70, 70), -1)
    cv2.putText(img, "wall bench", (20, 60), cv2.FONT_HERSHEY_SIMPLEX, 1.2, (255, 255, 255), 2)
    return bytes(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])[1])


class _BenchViewer(Authenticator):
    """Every caller is a wall's viewer (what a wall display's token resolves to in production)."""

    async def identify(self, conn: HTTPConnection) -> Principal | None:
        return Principal(name="token:bench-wall", role=Role.VIEWER, via="token")


class Server:
    """The app under uvicorn in a thread of its own, with the load feeding its hub."""

    def __init__(self, port: int, devices: int, rate: float, mqtt_port: int | None = None) -> None:
        settings = Settings(database_url="postgresql://bench@127.0.0.1:9/none")  # nothing listens on port 9
        settings.alerts.enabled = False
        settings.analytics.enabled = False
        settings.live.listen_mqtt = mqtt_port is not None  # follow the broker (the publish -> screen probes)
        if mqtt_port is not None:
            settings.mqtt_url = f"mqtt://127.0.0.1:{mqtt_port}"
        settings.live.client_queue = 20_000  # 10 s of this load before the page is marked behind
        self.app = create_app(settings)
        self.app.state.auth = _BenchViewer(settings.auth)  # no database here to hold sessions or tokens
        image = jpeg()

        async def snapshot(device_id: str) -> Response:  # the database's job in production
            return Response(image, media_type="image/jpeg", headers={"Cache-Control": "no-cache"})

        self.app.add_api_route("/api/devices/{device_id}/snapshot", snapshot, dependencies=[requires(Role.VIEWER)])
        # Routes match in order: the bench's snapshot route goes before the app's own.
        self.app.router.routes.insert(0, self.app.router.routes.pop())
        self.port, self.devices, self.rate = port, devices, rate
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=port, log_level="error"))
        self.load: Load | None = None
        self.ready = threading.Event()
        self.thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _main(self) -> None:
        serving = asyncio.create_task(self.server.serve())
        while not self.server.started:
            if serving.done():
                await serving
                return
            await asyncio.sleep(0.05)
        self.load = Load(self.app.state.hub, self.devices, self.rate)
        self.load.jpeg = jpeg()
        self.load.seed()
        self.ready.set()
        feeding = asyncio.create_task(self.load.run())
        await serving
        self.load.stop = True
        await feeding

    def start(self) -> None:
        self.thread.start()
        if not self.ready.wait(60):
            raise RuntimeError("the bench server did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)


class WorkerHeaps:
    """JS heap of the page's workers (the map draws in one), over a browser-level CDP session.

    A page's CDP session sees only the page's own isolate; workers are separate targets, reached here
    through Target.attachToTarget (non-flattened) and Target.sendMessageToTarget.
    """

    def __init__(self, browser: Any, page: Any) -> None:
        self.cdp = browser.new_browser_cdp_session()
        self.page = page
        self.sessions: dict[str, str] = {}  # target id -> our session with it
        self.replies: dict[tuple[str, int], dict[str, Any]] = {}
        self.next_id = 0
        self.cdp.on("Target.receivedMessageFromTarget", self._reply)

    def _reply(self, event: dict[str, Any]) -> None:
        msg = json.loads(event["message"])
        if "id" in msg:
            self.replies[(event["sessionId"], msg["id"])] = msg

    def _call(self, session: str, method: str) -> dict[str, Any]:
        self.next_id += 1
        key = (session, self.next_id)
        self.cdp.send("Target.sendMessageToTarget", {"sessionId": session,
                                                    "message": json.dumps({"id": self.next_id, "method": method})})
        deadline = time.monotonic() + 10
        while key not in self.replies:  # replies arrive while Playwright runs its loop, not during time.sleep
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer to {method} from a worker")
            self.page.wait_for_timeout(20)
        return self.replies.pop(key).get("result", {})

    def used_mb(self) -> float:
        live = set()
        for target in self.cdp.send("Target.getTargets")["targetInfos"]:
            if target["type"] == "worker":  # Playwright is attached too; a target takes several sessions
                live.add(target["targetId"])
                if target["targetId"] not in self.sessions:
                    self.sessions[target["targetId"]] = self.cdp.send(
                        "Target.attachToTarget", {"targetId": target["targetId"], "flatten": False})["sessionId"]
        total = 0.0
        for target_id, session in list(self.sessions.items()):
            if target_id not in live:
                del self.sessions[target_id]
                continue
            self._call(session, "HeapProfiler.collectGarbage")
            total += self._call(session, "Runtime.getHeapUsage").get("usedSize", 0) / 1e6
        return total


def publish_to_screen(page: Any, mqtt_port: int | None, probes: list[tuple[str, str, float, float]],
                      count: int) -> list[dict[str, Any]]:
    """Publish ``count`` status changes over MQTT, one at a time, each on a probe device, alternating
    offline/online; time each to the page holding it and to the map draw that shows it."""
    import paho.mqtt.client as mqtt

    if not mqtt_port or not probes or not count:
        return []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"wall-probe-{port_suffix()}",
                         protocol=mqtt.MQTTv5)
    client.connect("127.0.0.1", mqtt_port)
    client.loop_start()
    out = []
    try:
        for i in range(count):
            dev, kind, _, _ = probes[i % len(probes)]
            state = "offline" if (i // len(probes)) % 2 == 0 else "online"
            page.evaluate(f"() => {{ window.__probe = window.__bench.watch({json.dumps(dev)}, {json.dumps(state)}, "
                          "10000); }")  # started, not awaited
            sent = time.time()
            body = json.dumps({"ts": datetime.now(UTC).isoformat().replace("+00:00", "Z"), "state": state,
                               "reason": "wall bench probe"})
            client.publish(f"ioc/v1/{kind}/{dev}/status", body, qos=1, retain=True).wait_for_publish(5)
            got = page.evaluate("window.__probe")
            out.append({"device": dev, "state": state,
                        "recv_ms": round(got["recv"] - sent * 1000, 1) if got["recv"] else None,
                        "drawn_ms": round(got["drawn"] - sent * 1000, 1) if got["drawn"] else None})
            page.wait_for_timeout(300)
    finally:
        client.loop_stop()
        client.disconnect()
    return out


def port_suffix() -> str:
    return f"{random.getrandbits(24):06x}"


def _summary(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "p50": round(pct(values, 0.5), 1), "max": round(max(values, default=math.nan), 1)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    width, height = (int(v) for v in args.size.lower().split("x"))
    broker = private_mosquitto() if args.probes else None
    mqtt_port = broker.__enter__() if broker else None
    server = Server(port, args.devices, args.rate, mqtt_port)
    server.start()
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            # bypass_csp: the page's CSP (no eval) would refuse Playwright's string predicates, not the app's code
            page = browser.new_page(viewport={"width": width, "height": height}, bypass_csp=True)
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.add_init_script(PAGE_PROBE)
            cdp = page.context.new_cdp_session(page)
            cdp.send("Performance.enable")
            workers = WorkerHeaps(browser, page)
            page.goto(f"http://127.0.0.1:{port}/?lang={args.lang}")
            ready = f"window.__ioc && window.__ioc.connected && window.__ioc.drawnDevices >= {args.devices}"
            page.wait_for_function(ready, timeout=60_000)

            def heap() -> dict[str, float]:
                cdp.send("HeapProfiler.collectGarbage")
                used = cdp.send("Runtime.getHeapUsage")["usedSize"] / 1e6
                metrics = {m["name"]: m["value"] for m in cdp.send("Performance.getMetrics")["metrics"]}
                worker = workers.used_mb()
                return {"heap_mb": used + worker, "page_mb": used, "worker_mb": worker,
                        "nodes": metrics.get("Nodes", math.nan),
                        "listeners": metrics.get("JSEventListeners", math.nan)}

            print(f"warming up {args.warmup_s:.0f} s ...", file=sys.stderr)
            time.sleep(args.warmup_s)
            page.evaluate("window.__bench.take()")  # the warm-up's frames do not count
            frames0, long0, draws0 = page.evaluate(
                "[window.__ioc.frames, window.__bench.longTasks, window.__ioc.draws]")
            t0 = time.monotonic()
            samples = [(0.0, heap())]
            intervals: list[float] = []
            sent0 = server.load.sent if server.load else 0
            end = t0 + args.minutes * 60
            next_heap = t0 + args.heap_every_s
            while time.monotonic() < end:
                time.sleep(min(5.0, max(0.1, end - time.monotonic())))
                intervals += page.evaluate("window.__bench.take()")
                if time.monotonic() >= next_heap or time.monotonic() >= end:
                    next_heap += args.heap_every_s
                    samples.append((time.monotonic() - t0, heap()))
                    h = samples[-1][1]
                    print(f"  {samples[-1][0] / 60:5.1f} min: heap {h['heap_mb']:.1f} MB (page {h['page_mb']:.1f}, "
                          f"map worker {h['worker_mb']:.1f}), nodes {h['nodes']:.0f}, "
                          f"p95 so far {pct(intervals, 0.95):.1f} ms", file=sys.stderr)
            elapsed = time.monotonic() - t0
            draws = page.evaluate("window.__ioc.draws") - draws0
            sent1 = server.load.sent if server.load else 0
            probes = publish_to_screen(page, mqtt_port, server.load.probes if server.load else [], args.probes)
            state = page.evaluate("({frames: window.__ioc.frames, lagged: window.__ioc.lagged, "
                                  "draws: window.__ioc.draws, drawMs: window.__ioc.lastDrawMs, "
                                  "uiMs: window.__ioc.lastUiMs, devices: window.__ioc.devices, "
                                  "longTasks: window.__bench.longTasks, longMs: window.__bench.longMs})")
            page.screenshot(path=str(Path(args.out_dir) / f"wall-bench-{width}x{height}.png"))
            browser.close()
    finally:
        server.stop()
        if broker:
            broker.__exit__(None, None, None)
    heap_points = [(t, s["heap_mb"]) for t, s in samples]
    sent = sent1 - sent0
    return {
        "minutes": round(elapsed / 60, 2), "viewport": f"{width}x{height}", "devices": state["devices"],
        "updates_per_s_sent": round(sent / elapsed),
        "frames_per_s_received": round((state["frames"] - frames0) / elapsed),
        "lagged_notices": state["lagged"], "animation_frames": len(intervals),
        "fps": round(len(intervals) / elapsed, 1),
        "frame_ms": {"p50": round(pct(intervals, 0.5), 1), "p95": round(pct(intervals, 0.95), 1),
                     "p99": round(pct(intervals, 0.99), 1), "max": round(max(intervals, default=math.nan), 1)},
        "long_tasks": state["longTasks"] - long0, "map_draw_ms_last": round(state["drawMs"], 1),
        "heap_mb": {"first": round(heap_points[0][1], 1), "last": round(heap_points[-1][1], 1),
                    "max": round(max(p[1] for p in heap_points), 1),
                    "slope_mb_per_h": round(slope_per_hour(heap_points), 2),
                    # bounded buffers fill during the first minutes (events, KPI history): judge flatness after
                    "slope_second_half_mb_per_h": round(slope_per_hour(heap_points[len(heap_points) // 2:]), 2)},
        "heap_samples": [{"s": round(t), **{k: round(v, 2) for k, v in h.items()}} for t, h in samples],
        "dom_nodes": {"first": samples[0][1]["nodes"], "last": samples[-1][1]["nodes"]},
        "listeners": {"first": samples[0][1]["listeners"], "last": samples[-1][1]["listeners"]},
        "page_errors": errors,
        "map_redraws_per_s": round(draws / elapsed, 2),
        "publish_to_page_ms": _summary([p["recv_ms"] for p in probes if p["recv_ms"] is not None]),
        "publish_to_map_ms": _summary([p["drawn_ms"] for p in probes if p["drawn_ms"] is not None]),
        "probes": probes,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="measured run after the warm-up (default 10)")
    parser.add_argument("--devices", type=int, default=5000)
    parser.add_argument("--rate", type=float, default=2000.0, help="updates per second")
    parser.add_argument("--size", default="3840x2160", help="viewport WxH (default 3840x2160, the wall)")
    parser.add_argument("--lang", default="vi", choices=["vi", "en"])
    parser.add_argument("--warmup-s", type=float, default=30.0)
    parser.add_argument("--heap-every-s", type=float, default=60.0)
    parser.add_argument("--out-dir", default=".", help="where the final screenshot goes")
    parser.add_argument("--json", help="also write the figures to this file")
    parser.add_argument("--probes", type=int, default=20, help="MQTT publish -> screen probes after the run (0: none)")
    args = parser.parse_args()
    figures = run(args)
    fm, hp = figures["frame_ms"], figures["heap_mb"]
    print(f"wall bench: {figures['devices']} devices, {figures['updates_per_s_sent']} updates/s sent, "
          f"{figures['frames_per_s_received']} frames/s received, {figures['viewport']}, {figures['minutes']} min")
    print(f"  frame time (rAF interval): p50 {fm['p50']} ms, p95 {fm['p95']} ms (target <= 33), p99 {fm['p99']} ms, "
          f"max {fm['max']} ms; {figures['fps']} fps; long tasks {figures['long_tasks']}")
    print(f"  JS heap after GC (page + map worker): {hp['first']} -> {hp['last']} MB (max {hp['max']}), slope "
          f"{hp['slope_mb_per_h']} MB/h over the run, {hp['slope_second_half_mb_per_h']} MB/h over its second half;"
          f" DOM nodes {figures['dom_nodes']['first']:.0f} -> {figures['dom_nodes']['last']:.0f}, listeners "
          f"{figures['listeners']['first']:.0f} -> {figures['listeners']['last']:.0f}")
    pp, pm = figures["publish_to_page_ms"], figures["publish_to_map_ms"]
    print(f"  map: {figures['map_redraws_per_s']} redraws/s over the run (a draw every "
          f"{1000 / max(figures['map_redraws_per_s'], 1e-9):.0f} ms on average); MQTT publish -> page holds it "
          f"p50 {pp['p50']} ms, max {pp['max']} ms; -> drawn on the map p50 {pm['p50']} ms, max {pm['max']} ms "
          f"({pm['n']} of {len(figures['probes'])} probes drawn)")
    print(f"  lagged notices {figures['lagged_notices']}, last map draw {figures['map_draw_ms_last']} ms, "
          f"page errors {len(figures['page_errors'])}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
