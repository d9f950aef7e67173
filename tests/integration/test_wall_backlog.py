"""A new critical alarm behind a backlog of 1,700 open critical incidents is on the wall within seconds.

The wall lists the most severe incidents first, then the oldest (what has waited longest). Behind 1,700 older open
critical incidents a new one was counted in the header and never drawn: the snapshot held the 200 oldest, the
panel the first rows of those. Now the newest unacknowledged critical incidents are pinned on top of the queue
(``wall-panels.js`` ``queueRows``) and ride in every snapshot (``ioc/alerts/feed_view.py`` ``newest_critical``).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from tests.conftest import BASE_DSN, create_database, drop_database, ingest_env
from tests.integration.browser_support import chromium, publish_event, publish_fleet, wait_js
from tests.support.auth import make_token_sync
from tests.support.mqtt import Publisher
from tests.support.services import ServeProcess, private_mosquitto

pytestmark = pytest.mark.integration

BACKLOG = 1700
LOGS = Path(__file__).resolve().parents[2] / "artifacts" / "test_wall_backlog"
# The row of incident `id` is whole inside the incident panel and the window (not only in the DOM).
SHOWN = """(id) => {
  const row = document.querySelector(`#incidents .inc[data-id="${id}"]`);
  if (!row) return false;
  const r = row.getBoundingClientRect(), box = document.getElementById('incidents').getBoundingClientRect();
  return r.height > 0 && r.top >= box.top - 1 && r.bottom <= box.bottom + 1 && r.bottom <= innerHeight + 1;
}"""


async def _seed(dsn: str) -> None:
    """1,700 open critical incidents of one alert each, started over the last hour (the oldest first)."""
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"""
            INSERT INTO incidents (id, group_key, category, severity, state, title, district, started_at, updated_at,
                                   detail)
            SELECT i, 'backlog:' || i, 'power', 'critical', 'open', 'backlog ' || i, 'HB',
                   now() - make_interval(secs => 3700 - i), now(), jsonb_build_object('members', jsonb_build_array(i))
            FROM generate_series(1, {BACKLOG}) AS i;
            INSERT INTO alerts (id, dedupe_key, rule, category, severity, state, title, explanation, device_id, kind,
                                district, incident_id, started_at, last_seen_at, evidence)
            SELECT i, 'backlog:' || i, 'mains_power_lost', 'power', 'critical', 'open', 'alert ' || i, 'mains lost',
                   'BL-' || i, 'bts', 'HB', i, now() - make_interval(secs => 3700 - i), now(), '{{}}'::jsonb
            FROM generate_series(1, {BACKLOG}) AS i;
            SELECT setval(pg_get_serial_sequence('incidents', 'id'), {BACKLOG} + 1000);
            SELECT setval(pg_get_serial_sequence('alerts', 'id'), {BACKLOG} + 1000);
        """)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def served() -> Iterator[tuple[ServeProcess, int, str]]:
    LOGS.mkdir(parents=True, exist_ok=True)
    dsn = asyncio.run(create_database(BASE_DSN))
    try:
        asyncio.run(_seed(dsn))
        with private_mosquitto() as port:
            env = ingest_env(dsn, port, IOC_MQTT__CLIENT_ID=f"bl-{uuid.uuid4().hex[:6]}", IOC_ALERTS__TICK_S="0.2",
                             IOC_ANALYTICS__ENABLED="false")
            with ServeProcess(env, LOGS / "serve.log") as srv:
                yield srv, port, make_token_sync(dsn, "viewer", "wall backlog")
    finally:
        asyncio.run(drop_database(BASE_DSN, dsn))


def _wall(browser: Any, url: str, errors: list[str], width: int, height: int) -> Any:
    page = browser.new_context(viewport={"width": width, "height": height}).new_page()
    page.on("pageerror", lambda err: errors.append(f"pageerror: {err}"))
    page.goto(url)
    wait_js(page, f"window.__ioc.connected && window.__ioc.incidents >= {BACKLOG}", 15)
    return page


def test_a_new_critical_alarm_behind_1700_old_ones_is_shown_at_once(served: tuple[ServeProcess, int, str]) -> None:
    srv, port, viewer = served
    errors: list[str] = []
    url = f"{srv.url}/?token={viewer}&lang=en"
    with chromium() as browser:
        small = _wall(browser, url, errors, 1366, 768)
        big = _wall(browser, url, errors, 3840, 2160)
        for page in (small, big):
            # pinned: the newest of the backlog; then the queue's usual order, the oldest critical first
            wait_js(page, f"({SHOWN})({BACKLOG}) && ({SHOWN})(1)", 5)
            assert page.evaluate("document.querySelector('#incidents .inc').dataset.id") == str(BACKLOG)
        dev = f"NEW-HB-{uuid.uuid4().hex[:4]}"
        pub = Publisher(port)
        try:
            publish_fleet(pub, {dev: ("bts", "HB", "online")})
            t0 = time.monotonic()
            publish_event(pub, "bts", dev, "door_open", "critical")
            wait_js(small, f"window.__ioc.incidentOf('{dev}') != null", 10)
            inc = small.evaluate(f"window.__ioc.incidentOf('{dev}').id")
            for page in (small, big):
                wait_js(page, f"({SHOWN})({inc})", 5)
            took = time.monotonic() - t0
        finally:
            pub.close()
        print(f"new critical on both walls {took:.2f} s after its alarm")
        assert took < 5, took
        for page in (small, big):
            assert page.evaluate("document.querySelector('#incidents .inc').dataset.id") == str(inc)
            assert page.evaluate("document.querySelector('#incidents .inc').classList.contains('pinned')")
            # the rest of the queue keeps its order: the oldest critical incident is still shown
            assert page.evaluate(f"({SHOWN})(1)")
            assert page.evaluate("document.documentElement.scrollWidth - innerWidth") == 0
        small.screenshot(path=str(LOGS / "wall-backlog-1366x768.png"))
        big.screenshot(path=str(LOGS / "wall-backlog-3840x2160.png"))
        # A wall that connects now gets it in its snapshot (the 200 oldest critical ones do not leave it out).
        late = _wall(browser, url, errors, 1366, 768)
        wait_js(late, f"({SHOWN})({inc})", 5)
    assert not errors, errors
