"""Chart time ticks fall on whole hours/days of the city's clock, not of UTC (dashboards/wall/timeaxis.js, run
by node; chart.js draws every time axis through it)."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration

WALL = Path(__file__).resolve().parents[2] / "dashboards" / "wall"
NODE = shutil.which("node")
H = 3600_000


def run(script: str) -> Any:
    """Run an ES module body with timeaxis.js's exports in scope; returns what it prints as JSON."""
    if NODE is None:
        pytest.skip("node is not installed")
    body = (f'import {{ timeTicks, timeStep, zoneOffsetMs }} from "{(WALL / "timeaxis.js").as_uri()}";\n'
            'const hhmm = (tz) => (t) => new Intl.DateTimeFormat("en-GB", {timeZone: tz, hour: "2-digit", '
            'minute: "2-digit", hourCycle: "h23"}).format(t);\n' + script)
    out = subprocess.run([NODE, "--experimental-default-type=module", "--input-type=module"], input=body,
                         capture_output=True, text=True, timeout=30, check=True)
    return json.loads(out.stdout)


def test_a_day_in_hai_phong_reads_00_06_12_18_local_not_utc_multiples() -> None:
    got = run("""
      const start = Date.UTC(2026, 11, 5, 3, 17), end = start + 24 * 3600e3, tz = "Asia/Ho_Chi_Minh";
      const step = timeStep(end - start);
      console.log(JSON.stringify({step, local: timeTicks(start, end, step, tz).map(hhmm(tz)),
                                  utc: timeTicks(start, end, step, "UTC").map(hhmm("UTC"))}));""")
    assert got["step"] == 6 * H
    assert got["local"] == ["12:00", "18:00", "00:00", "06:00"]  # was 13/19/01/07 (UTC multiples)
    assert got["utc"] == ["06:00", "12:00", "18:00", "00:00"]


def test_half_hour_zones_and_dst_changes_keep_ticks_on_the_local_hour() -> None:
    got = run("""
      const day = 24 * 3600e3;
      const kolkata = timeTicks(Date.UTC(2026, 0, 1), Date.UTC(2026, 0, 1) + day, 6 * 3600e3, "Asia/Kolkata");
      const spring = timeTicks(Date.UTC(2026, 2, 28, 12), Date.UTC(2026, 2, 28, 12) + day, 3 * 3600e3, "Europe/Berlin");
      const autumn = timeTicks(Date.UTC(2026, 9, 24, 12), Date.UTC(2026, 9, 24, 12) + day, 3600e3, "Europe/Berlin");
      const days = timeTicks(Date.UTC(2026, 11, 1), Date.UTC(2026, 11, 8), day, "Asia/Ho_Chi_Minh");
      console.log(JSON.stringify({
        kolkata: kolkata.map(hhmm("Asia/Kolkata")), spring: spring.map(hhmm("Europe/Berlin")),
        autumn: autumn.map(hhmm("Europe/Berlin")), days: days.map((t) => new Date(t).toISOString()),
        offsets: [zoneOffsetMs("Asia/Ho_Chi_Minh", Date.UTC(2026, 0, 1)), zoneOffsetMs("Asia/Kolkata", 0)]}));""")
    assert got["kolkata"] == ["06:00", "12:00", "18:00", "00:00"]
    assert got["spring"] == ["15:00", "18:00", "21:00", "00:00", "03:00", "06:00", "09:00", "12:00"]
    assert all(t.endswith(":00") for t in got["autumn"]) and len(got["autumn"]) == len(set(got["autumn"]))
    assert got["days"][0] == "2026-12-01T17:00:00.000Z"  # local midnight, 17:00 UTC the day before
    assert all(d.endswith("T17:00:00.000Z") for d in got["days"])
    assert got["offsets"] == [7 * H, 5.5 * H]


def test_every_chart_axis_goes_through_the_zone_aware_ticks() -> None:
    chart = (WALL / "chart.js").read_text()
    assert 'from "./timeaxis.js"' in chart
    assert "ticksOf(start, end, i18n)" in chart
    assert "Math.ceil(start / tstep)" not in chart  # the old UTC-multiple loop


def test_chart_labels_in_chromium_read_the_city_clock() -> None:
    """timeChart and statusStrip as the operator pages call them, in Chromium: the labels they draw."""
    from tests.integration.browser_support import chromium

    handler = functools.partial(_Quiet, directory=str(WALL))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        with chromium() as browser:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda err: errors.append(str(err)))
            page.goto(f"{base}/timeaxis.js")  # any page of the origin, so that the module imports resolve
            got = page.evaluate("""async () => {
              const {timeChart, statusStrip} = await import("/chart.js");
              const {makeI18n} = await import("/i18n.js");
              document.body.innerHTML = "<canvas id=c style='width:800px;height:200px'></canvas>" +
                                        "<canvas id=s style='width:800px;height:40px'></canvas>";
              const drawn = [];
              const fill = CanvasRenderingContext2D.prototype.fillText;
              CanvasRenderingContext2D.prototype.fillText = function (text, ...rest) {
                drawn.push(String(text)); return fill.call(this, text, ...rest); };
              const i18n = makeI18n("en", "Asia/Ho_Chi_Minh");
              const end = Date.UTC(2026, 11, 6, 3, 17), start = end - 24 * 3600e3;
              timeChart(document.getElementById("c"), [{label: "x", points: [[start, 1], [end, 2]]}],
                        {start, end, i18n});
              const chart = drawn.splice(0);
              statusStrip(document.getElementById("s"), [{t: start, state: "online"}], {start, end, i18n});
              const strip = drawn.splice(0);
              const week = [];
              timeChart(document.getElementById("c"), [{label: "x", points: [[end - 7 * 86400e3, 1], [end, 2]]}],
                        {start: end - 7 * 86400e3, end, i18n});
              week.push(...drawn.splice(0));
              return {chart, strip, week};
            }""")
            assert not errors, errors
    finally:
        server.shutdown()
        server.server_close()
    times = [t for t in got["chart"] if ":" in t]
    assert times == ["12:00", "18:00", "00:00", "06:00"], got["chart"]
    assert got["strip"] == times
    assert [t for t in got["week"] if "/" in t] == ["01/12", "03/12", "05/12"], got["week"]


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: Any) -> None:
        pass
