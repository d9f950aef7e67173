"""Red team of the screens: hostile text from devices and officers, in a real Chromium, stops nothing.

Devices and officers write text that the wall and the operator pages show: an alarm's detail (the alert's
evidence), a status reason, officers' names and notes, silence reasons. Here each carries markup, template
syntax, ``javascript:`` URLs, zero-width and combining characters and long unbroken runs. The pages are opened
with the CSP bypassed, so that the escaping itself is tested (the CSP is checked on its own): nothing runs, the
text shows as text, no page scrolls sideways, and a good alarm after the hostile one still reaches the wall.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BASE_DSN, create_database, drop_database, ingest_env
from tests.integration.browser_support import chromium, publish_event, publish_fleet, wait_js
from tests.support.auth import bearer, make_token_sync, make_user_sync
from tests.support.mqtt import Publisher
from tests.support.services import ServeProcess, private_mosquitto, wait_until

pytestmark = pytest.mark.integration

# Each tries to set window.__pwned if it were parsed as HTML, a template or a URL.
XSS = (
    '<img src=x onerror="window.__pwned=1"></script><script>window.__pwned=2</script>'
    '<svg onload="window.__pwned=3"><a href="javascript:window.__pwned=4">x</a>'
    "{{constructor.constructor('window.__pwned=5')()}}${window.__pwned=6}"
    "</style><style>body{display:none}</style>"
)
# zero-width characters, a combining stack, emoji and right-to-left letters
ODD = "z\u200b\u200c\u200d\ufeff" + "Z" + "\u0336\u0337\u0338" * 40 + " 🚨🔥 \u05e9\u05dc\u05d5\u05dd"
PROTO_NAMES = ("constructor", "toString", "valueOf", "hasOwnProperty")
LONG = "W" * 1900  # one unbroken word, as long as a note may be
LOGS = Path(__file__).resolve().parents[2] / "artifacts" / "test_screens_redteam"
PROBE = """(texts) => ({
  pwned: window.__pwned ?? null,
  handlers: document.querySelectorAll('[onerror],[onload],img[src="x"],svg,style:not([data-page])').length,
  scripts: [...document.scripts].filter(s => !s.src).length,
  overflowX: document.documentElement.scrollWidth - window.innerWidth,
  visible: getComputedStyle(document.body).display !== 'none',
  wide: [...document.querySelectorAll('body *')].filter(e => e.getBoundingClientRect().right > innerWidth + 1
    && ![...e.children].some(c => c.getBoundingClientRect().right > innerWidth + 1))
    .concat(!texts ? [] : (() => { const w = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT), out = [];
      for (let n; (n = w.nextNode());) { const r = document.createRange(); r.selectNodeContents(n);
        if (r.getBoundingClientRect().right > innerWidth + 1) out.push(n.parentElement); } return out; })())
    .slice(0, 5).map(e => `${e.tagName}.${e.className}#${e.id}:${e.textContent.slice(0, 24)}`),
})"""


class Server:
    """One ``ioc serve --ingest`` on its own database and broker for the module, with its users."""

    def __init__(self, srv: ServeProcess, port: int, dsn: str) -> None:
        self.url, self.port = srv.url, port
        self.admin = bearer(make_token_sync(dsn, "admin"))
        self.viewer = make_token_sync(dsn, "viewer", "wall")
        self.officer = make_user_sync(dsn, "officer", "an")[1]

    def api(self, path: str, body: Any = None, method: str = "GET") -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json", **self.admin}
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return json.load(resp)
        except urllib.error.HTTPError as err:
            raise AssertionError(f"{method} {path}: {err.code} {err.read()[:300]!r}") from None


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    LOGS.mkdir(parents=True, exist_ok=True)
    dsn = asyncio.run(create_database(BASE_DSN))
    try:
        with private_mosquitto() as port:
            env = ingest_env(
                dsn,
                port,
                IOC_MQTT__CLIENT_ID=f"scr-{uuid.uuid4().hex[:6]}",
                IOC_ALERTS__TICK_S="0.2",
                IOC_ANALYTICS__ENABLED="false",
            )
            with ServeProcess(env, LOGS / "serve.log") as srv:
                yield Server(srv, port, dsn)
    finally:
        asyncio.run(drop_database(BASE_DSN, dsn))


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as b:
        yield b


def open_page(browser: Any, errors: list[str], bypass_csp: bool = True, width: int = 1366, height: int = 900) -> Any:
    context = browser.new_context(viewport={"width": width, "height": height}, bypass_csp=bypass_csp)
    page = context.new_page()
    page.on("pageerror", lambda err: errors.append(f"pageerror: {err}"))
    page.on("dialog", lambda d: (errors.append(f"dialog: {d.message}"), d.dismiss()))
    return page


def assert_inert(page: Any, where: str, texts: bool = True) -> None:
    """Nothing ran or was parsed as markup, and nothing reaches past the window's right edge (``texts``: no run of
    text either; the wall clips its rows with an ellipsis by design, so it checks boxes only)."""
    got = page.evaluate(PROBE, texts)
    assert got == {"pwned": None, "handlers": 0, "scripts": 0, "overflowX": 0, "visible": True, "wide": []}, (
        where,
        got,
    )


def officer_logs_in(page: Any, server: Server, next_quoted: str) -> None:
    """The officer logs in through the login page, which then goes to ``next_quoted`` (already %-encoded)."""
    page.goto(f"{server.url}/login?next={next_quoted}")
    page.fill("#username", "an")
    page.fill("#password", server.officer)
    page.click("#login-submit")


def test_hostile_text_shows_as_text_and_stops_nothing(server: Server, browser: Any) -> None:
    tag = uuid.uuid4().hex[:4]
    bad, good = f"RB-LC-{tag}", f"RG-HB-{tag}"
    long_id = f"RL-{tag}-" + "W" * (64 - 8)  # the longest id the contract allows, unbroken
    pub = Publisher(server.port)
    errors: list[str] = []
    try:
        publish_fleet(
            pub, {bad: ("bts", "LC", "online"), good: ("bts", "HB", "online"), long_id: ("bts", "NQ", "online")}
        )
        wait_until(lambda: len(server.api("/api/devices")) >= 3, 20, 0.1, what="devices registered")
        # the officer's name, the incident's assignee, notes and a silence: officers' text
        server.api(f"/api/officers/x{tag}", {"name": "<b>" + XSS[:40]}, "PUT")
        publish_event(pub, "bts", bad, "door_open", "critical", note=XSS, odd=ODD, long=LONG)
        publish_event(pub, "bts", long_id, "door_open", "critical", note=LONG)
        # names the contract allows that are also the names of every JS object's own members
        pub.publish(
            f"ioc/v1/bts/{long_id}/telemetry",
            {"ts": int(1000 * time.time()), "seq": 9, "metrics": {k: 1.0 for k in PROTO_NAMES}},
        )
        pub.publish(
            f"ioc/v1/bts/{bad}/status",
            {"ts": int(1000 * time.time()), "state": "degraded", "reason": XSS + ODD + LONG[:400]},
        )
        pub.wait_all()

        def incident_of(dev: str) -> int | None:
            found = [i for i in server.api("/api/incidents/live") if dev in i["devices"]]
            return found[0]["id"] if found else None

        wait_until(lambda: incident_of(bad) and incident_of(long_id), 20, 0.1, what="the hostile incidents")
        inc = incident_of(bad)
        server.api(f"/api/incidents/{inc}/assign", {"assignee": f"x{tag}", "note": XSS + ODD}, "POST")
        server.api(f"/api/incidents/{inc}/comment", {"note": LONG}, "POST")
        server.api(
            "/api/silences",
            {"matchers": {"device_id": f"nobody-{tag}"}, "reason": XSS + LONG[:200], "ends_at": "2099-01-01T00:00:00Z"},
            "POST",
        )

        # the wall: the hostile incident shows, inert, and a good alarm after it shows too
        wall = open_page(browser, errors, width=1366, height=768)
        wall.goto(f"{server.url}/?token={server.viewer}&lang=en")
        wait_js(wall, "window.__ioc && window.__ioc.connected")
        wait_js(wall, f"window.__ioc.incidentOf('{bad}')?.shownAt != null", 10)
        publish_event(pub, "bts", good, "door_open", "critical")
        wait_js(wall, f"window.__ioc.incidentOf('{good}')?.shownAt != null", 10)
        wall.screenshot(path=str(LOGS / "wall.png"))
        assert_inert(wall, "wall", texts=False)
        panel = wall.locator(".incidents-panel").bounding_box()
        for box in wall.locator("#incidents .inc").evaluate_all("rs => rs.map(r => r.getBoundingClientRect().right)"):
            assert box <= panel["x"] + panel["width"] + 1, (box, panel)

        # the operator pages: incident (evidence, timeline, assignee), lists, device, silences
        ops = open_page(browser, errors)
        officer_logs_in(ops, server, f"%2Fops%3Flang%3Den%23%2Fincidents%2F{inc}")
        wait_js(ops, "window.__ops && window.__ops.view === 'IncidentView' && window.__ops.ready", hook="__ops")
        wait_js(ops, "document.querySelector('.evidence table.kv') != null", hook="__ops")
        text = ops.inner_text("body")
        assert 'onerror="window.__pwned=1"' in text and "{{constructor" in text  # shown, as text
        ops.screenshot(path=str(LOGS / "incident.png"))
        assert_inert(ops, "incident page")
        for hashpath in ("#/incidents", "#/alerts", f"#/devices/{bad}", f"#/devices/{long_id}", "#/silences"):
            ops.evaluate(f"location.hash = '{hashpath}'")
            wait_js(ops, f"location.hash === '{hashpath}' && window.__ops.ready", hook="__ops")
            ops.wait_for_timeout(300)  # lists fill after ready
            assert_inert(ops, hashpath)
        ops.evaluate(f"location.hash = '#/devices/{long_id}'")
        wait_js(ops, "document.querySelectorAll('table.latest tr').length >= 7", hook="__ops")
        shown = ops.eval_on_selector_all(
            "table.latest tr", "rs => rs.map(r => [r.dataset.metric, r.cells[0].innerText])"
        )
        assert all(name == label for name, label in shown if name in PROTO_NAMES), shown
        ops.evaluate(f"location.hash = '#/incidents/{incident_of(long_id)}'")
        wait_js(ops, "window.__ops.view === 'IncidentView' && window.__ops.ready", hook="__ops")
        ops.wait_for_timeout(300)
        assert_inert(ops, "long id's incident")
    finally:
        pub.close()
    assert not errors, errors


def test_an_incident_flood_leaves_the_wall_responsive(server: Server, browser: Any) -> None:
    """5,000 live incidents with hostile titles at once through the wall's frame path (below critical: the wall
    lists the most severe, then the oldest, first): its rows stay bounded and a real critical alarm after them
    is on screen within a few seconds."""
    errors: list[str] = []
    wall = open_page(browser, errors, width=1366, height=768)
    wall.goto(f"{server.url}/?token={server.viewer}&lang=en")
    wait_js(wall, "window.__ioc && window.__ioc.connected")
    took_ms = wall.evaluate(
        """([xss, n]) => {
        const now = new Date().toISOString(), frames = [];
        for (let i = 0; i < n; i++) frames.push({type: 'incident', seq: 0, incident: {id: 1e6 + i, state: 'open',
            severity: ['major', 'minor', 'warning'][i % 3], category: 'device', title: xss + i, district: null,
            started_at: now, members: [{device_id: 'FL' + i, kind: 'bts', state: 'open', severity: 'major'}],
            member_count: 1, devices: ['FL' + i]}});
        const t0 = performance.now();
        window.__ioc.inject(frames);
        return performance.now() - t0;
    }""",
        [XSS + "W" * 300, 5000],
    )
    tag = uuid.uuid4().hex[:4]
    late = f"RF-HB-{tag}"
    pub = Publisher(server.port)
    try:
        publish_fleet(pub, {late: ("bts", "HB", "online")})
        publish_event(pub, "bts", late, "door_open", "critical")
        wait_js(wall, f"window.__ioc.incidentOf('{late}')?.shownAt != null", 10)
    finally:
        pub.close()
    print(f"5,000 incident frames handled in {took_ms:.0f} ms")
    assert took_ms < 3000, took_ms
    assert wall.evaluate("document.querySelectorAll('#incidents .inc').length") <= 50
    assert_inert(wall, "flooded wall", texts=False)
    assert not errors, errors


HOSTILE_HASHES = [
    "#/devices/%E0%A4%A",  # not UTF-8 when decoded: decodeURIComponent throws
    "#/devices/%3Cimg%20src%3Dx%20onerror%3Dwindow.__pwned%3D1%3E",
    "#/devices/" + "W" * 5000,
    "#/silences?device_id=%3Cimg%20src%3Dx%20onerror%3Dwindow.__pwned%3D1%3E&reason=%3C%2Fscript%3E%E0%A4%A",
    "#/incidents/99999999999999999999999",
    "#/incidents?q=%3Csvg%20onload%3Dwindow.__pwned%3D1%3E&district=%E0%A4%A&severity=%7B%7B1%7D%7D",
]


def test_hostile_addresses_leave_the_pages_working(server: Server, browser: Any) -> None:
    """What a link can carry (the fragment, ``?lang=``, ``?tz=``), opened first or followed: nothing runs, no page
    error, and the incident list works afterwards."""
    errors: list[str] = []
    ops = open_page(browser, errors)
    officer_logs_in(ops, server, "%2Fops%3Flang%3Den")
    wait_js(ops, "window.__ops && window.__ops.connected", hook="__ops")
    for hostile in HOSTILE_HASHES:
        for first in (True, False):  # the page opened on it, and the address changed under a running page
            if first:
                ops.goto(f"{server.url}/ops?lang=en&tz=%3C%2Fscript%3E{hostile}")
            else:
                ops.evaluate("h => { location.hash = h; }", hostile)
            ops.wait_for_timeout(200)
            assert_inert(ops, hostile, texts=False)
            ops.evaluate("location.hash = '#/incidents'")
            wait_js(
                ops,
                "window.__ops.connected && window.__ops.view === 'IncidentList' && window.__ops.ready",
                5,
                hook="__ops",
            )
    wall = open_page(browser, errors, width=1366, height=768)
    wall.goto(f"{server.url}/?token={server.viewer}&lang=%3Cimg%20src%3Dx%3E&tz=%E0%A4%A")
    wait_js(wall, "window.__ioc && window.__ioc.connected")
    assert_inert(wall, "wall with hostile parameters", texts=False)
    assert not errors, errors


def test_pages_carry_a_csp_without_inline_script(server: Server, browser: Any) -> None:
    pages = ["/", "/ops", "/login", "/wall/index.html", "/wall/ops.html", "/wall/login.html", "/nowhere"]
    for path in pages:
        req = urllib.request.Request(server.url + path, headers=server.admin)
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                ctype, csp = resp.headers.get("content-type", ""), resp.headers.get("content-security-policy", "")
        except urllib.error.HTTPError as err:
            ctype, csp = err.headers.get("content-type", ""), err.headers.get("content-security-policy", "")
        if "html" in ctype or "svg" in ctype:
            assert "script-src 'self'" in csp and "unsafe-inline" not in csp.split("script-src")[1].split(";")[0], path
    # and the browser enforces it: an inline script added to the wall does not run
    errors: list[str] = []
    wall = open_page(browser, errors, bypass_csp=False)
    wall.goto(f"{server.url}/?token={server.viewer}")
    wait_js(wall, "window.__ioc && window.__ioc.connected")
    wall.evaluate(
        "() => { const s = document.createElement('script'); s.textContent = 'window.__pwned = 1';"
        " document.body.append(s); }"
    )
    assert wall.evaluate("window.__pwned ?? null") is None


def test_login_goes_back_to_this_site_only(server: Server, browser: Any) -> None:
    """``/login?next=`` after logging in: a path on this site only (tab and newline, which the URL parser drops
    and so turn ``/\t/host`` into ``//host``, are refused at the edge with the whole request)."""
    errors: list[str] = []
    page = open_page(browser, errors)
    page.route("http://example.org/**", lambda route: route.fulfill(status=200, body="away"))
    for hostile in (
        "/\t/example.org/",
        "/\n/example.org",
        "//example.org",
        "/\\example.org",
        "/%2F/example.org",
        "javascript:window.__pwned=1",
        "https://example.org/",
        "/ops#x",
    ):
        page.context.clear_cookies()
        resp = page.goto(f"{server.url}/login?next={urllib.parse.quote(hostile, safe='')}")
        if resp.status == 422:
            assert hostile[1] in "\t\n", hostile
            continue
        page.fill("#username", "an")
        page.fill("#password", server.officer)
        page.click("#login-submit")
        page.wait_for_url(f"{server.url}/**/*", timeout=10_000)
        page.wait_for_load_state()
        assert page.url.startswith(f"{server.url}/"), (hostile, page.url)
        assert page.evaluate("window.__pwned ?? null") is None, hostile
    assert not errors, errors
