"""Notification delivery end to end: the outbox in PostgreSQL, a real SMTP server (aiosmtpd) and a real HTTP
webhook receiver; receivers that are down, refuse, or are flooded."""

from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import ssl
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import pytest
import trustme
from aiosmtpd.controller import Controller
from standardwebhooks import Webhook

from ioc.alerts.notify import NotificationDispatcher, NotifyConfig, notification_rows, render, targets_for
from ioc.alerts.notify.webhook import ID_HEADER, verify
from storage import notifications as outbox
from storage.config import StorageConfig
from storage.db import create_pool
from tests.conftest import BASE_DSN, create_database, drop_database
from tests.support.services import free_port

pytestmark = pytest.mark.integration

SECRET = "test-secret"


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``check`` until true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Receiver:
    """A webhook receiver: a real HTTP server in a thread that records requests and answers ``status``."""

    def __init__(self, port: int = 0, status: int = 200) -> None:
        self.status = status
        #: When set, called with each request's headers (lower-case names) for its status; it may block.
        self.answer: Callable[[dict[str, str]], int] | None = None
        self.reply_headers: dict[str, str] = {}
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append((self.path, dict(self.headers.items()), body))
                answer = receiver.answer
                heads = {k.lower(): v for k, v in self.headers.items()}
                self.send_response(receiver.status if answer is None else answer(heads))
                for name, value in receiver.reply_headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class Mailbox:
    """aiosmtpd handler keeping every message it receives."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.rcpts: list[list[str]] = []

    async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                          rcpt_options: list[str]) -> str:
        # Recipients named after an SMTP reply get it: 550@... is refused for good, 451@... for now.
        code = address.partition("@")[0]
        if code.isdigit():
            return f"{code} refused by the test server"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        msg = email.message_from_bytes(envelope.original_content, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self.messages.append(msg)
        self.rcpts.append(list(envelope.rcpt_tos))
        return "250 OK"


@pytest.fixture(scope="module")
def notify_dsn() -> Iterator[str]:
    """A database of its own: the dispatcher claims every due row, other tests' included."""
    dsn = asyncio.run(create_database(BASE_DSN))
    yield dsn
    asyncio.run(drop_database(BASE_DSN, dsn))


@pytest.fixture
async def pool(notify_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await create_pool(notify_dsn, StorageConfig(), max_size=5)
    await pool.execute("TRUNCATE notifications")
    yield pool
    await pool.close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def smtp() -> Iterator[tuple[Mailbox, int]]:
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port())
    controller.start()
    yield box, controller.port
    controller.stop()


async def make_incident(pool: asyncpg.Pool, started: datetime | None = None) -> dict[str, Any]:
    """Insert an incident row and return the dict the engine would render."""
    started = started or datetime.now(UTC) - timedelta(minutes=25)
    title = "Mains power lost at 40 BTS"
    incident_id = await pool.fetchval(
        "INSERT INTO incidents (group_key, category, severity, state, title, district, started_at, updated_at) "
        "VALUES ('power:KA', 'power', 'major', 'open', $1, 'KA', $2, $2) RETURNING id", title, started)
    return {
        "id": incident_id, "title": title, "severity": "major", "state": "open", "category": "power",
        "district": "KA", "district_name": "Kiến An", "started_at": started.isoformat(),
        "updated_at": started.isoformat(), "acked_by": None, "assignee": None, "member_count": 40, "level": None,
        "members": [{"alert_id": i, "device_id": f"bts-ka-{i:03d}", "kind": "bts", "title": "Mains power lost",
                     "severity": "major", "started_at": started.isoformat(), "explanation": "mains_ok=0"}
                    for i in range(40)],
    }


async def enqueue(pool: asyncpg.Pool, incident: dict[str, Any], targets: list[tuple[str, str]],
                  reason: str = "firing", public_url: str = "http://ioc.test") -> list[int]:
    rendered = render(incident, reason, public_url, tz="Asia/Ho_Chi_Minh")
    async with pool.acquire() as conn, conn.transaction():  # as the engine does: with the change it reports
        return await outbox.enqueue(conn, notification_rows(rendered, incident["id"], reason, targets))


async def row(pool: asyncpg.Pool, nid: int) -> dict[str, Any]:
    async with pool.acquire() as conn:
        rows = await outbox.list_notifications(conn, limit=1000)
    return next(r for r in rows if r["id"] == nid)


async def test_email_over_real_smtp_says_what_where_since_and_how_to_ack(
        pool: asyncpg.Pool, smtp: tuple[Mailbox, int]) -> None:
    box, port = smtp
    config = NotifyConfig(smtp_host="127.0.0.1", smtp_port=port, smtp_from="ioc@haiphong.gov.vn",
                          public_url="https://ioc.haiphong.gov.vn")
    incident = await make_incident(pool)
    officers = [{"id": "o1", "name": "Nguyễn Văn A", "email": "duty1@haiphong.gov.vn"},
                {"id": "o2", "name": "Trần Thị B", "email": "duty2@haiphong.gov.vn"}]
    ids = await enqueue(pool, incident, targets_for(config, officers, ["email", "webhook"]),
                        public_url=config.public_url)
    dispatcher = NotificationDispatcher(pool, config)
    assert await dispatcher.send_once() == 2
    await dispatcher.aclose()

    assert sorted(r[0] for r in box.rcpts) == ["duty1@haiphong.gov.vn", "duty2@haiphong.gov.vn"]
    msg = box.messages[0]
    subject = str(msg["Subject"])
    assert subject.startswith("[MAJOR] Mains power lost at 40 BTS in Kiến An (KA) — since ")
    body = msg.get_content()
    assert "What:  Mains power lost at 40 BTS" in body
    assert "Where: Kiến An (KA)" in body
    assert "(25 min ago)" in body and "Since: " in body
    assert f"https://ioc.haiphong.gov.vn/ops#incident/{incident['id']}" in body
    assert f"POST https://ioc.haiphong.gov.vn/api/incidents/{incident['id']}/ack" in body
    assert "… and 30 more" in body
    assert msg["References"] == f"<ioc-incident-{incident['id']}@haiphong.gov.vn>"
    for nid in ids:
        sent = await row(pool, nid)
        assert sent["status"] == "sent" and sent["attempts"] == 1 and sent["sent_at"] is not None


@pytest.fixture(scope="module")
def smtp_ca(tmp_path_factory: pytest.TempPathFactory) -> tuple[trustme.CA, str]:
    """A throwaway CA (trustme) and its PEM file, which the client trusts through smtp_ca_file."""
    ca = trustme.CA()
    path = tmp_path_factory.mktemp("smtp-ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return ca, str(path)


def _server_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return ctx


@pytest.mark.parametrize("security", ["tls", "starttls"])
async def test_email_over_implicit_tls_and_starttls(pool: asyncpg.Pool, smtp_ca: tuple[trustme.CA, str],
                                                    security: str) -> None:
    ca, ca_file = smtp_ca
    box = Mailbox()
    if security == "tls":  # SMTPS: TLS from the first byte, as on port 465
        controller = Controller(box, hostname="127.0.0.1", port=free_port(), ssl_context=_server_tls(ca))
    else:  # a plain connection the server insists be upgraded before mail is accepted
        controller = Controller(box, hostname="127.0.0.1", port=free_port(),
                                tls_context=_server_tls(ca), require_starttls=True)
    controller.start()
    try:
        config = NotifyConfig(smtp_host="127.0.0.1", smtp_port=controller.port, smtp_security=security,
                              smtp_ca_file=ca_file, retry_base_s=30)
        incident = await make_incident(pool)
        [nid] = await enqueue(pool, incident, [("email", "duty@haiphong.gov.vn")])
        dispatcher = NotificationDispatcher(pool, config)
        assert await dispatcher.send_once() == 1
        assert (await row(pool, nid))["status"] == "sent"
        assert box.rcpts == [["duty@haiphong.gov.vn"]]

        # The certificate is checked: without the private CA the server is not trusted, nothing is sent.
        untrusted = NotifyConfig(smtp_host="127.0.0.1", smtp_port=controller.port, smtp_security=security,
                                 retry_base_s=30)
        [refused] = await enqueue(pool, incident, [("email", "duty@haiphong.gov.vn")])
        assert await NotificationDispatcher(pool, untrusted).send_once() == 1
        r = await row(pool, refused)
        assert r["status"] == "pending" and "CERTIFICATE_VERIFY_FAILED" in r["last_error"]
        assert len(box.messages) == 1
        await dispatcher.aclose()
    finally:
        controller.stop()


async def test_plain_smtp_to_an_implicit_tls_port_fails_without_sending(
        pool: asyncpg.Pool, smtp_ca: tuple[trustme.CA, str]) -> None:
    ca, _ = smtp_ca
    box = Mailbox()
    controller = Controller(box, hostname="127.0.0.1", port=free_port(), ssl_context=_server_tls(ca))
    controller.start()
    try:
        config = NotifyConfig(smtp_host="127.0.0.1", smtp_port=controller.port, smtp_timeout_s=2, retry_base_s=30)
        [nid] = await enqueue(pool, await make_incident(pool), [("email", "duty@haiphong.gov.vn")])
        assert await NotificationDispatcher(pool, config).send_once() == 1
        r = await row(pool, nid)
        assert r["status"] == "pending" and r["last_error"]
        assert box.messages == []
    finally:
        controller.stop()


async def test_smtp_replies_and_outages_are_classified(pool: asyncpg.Pool, smtp: tuple[Mailbox, int]) -> None:
    box, port = smtp
    config = NotifyConfig(smtp_host="127.0.0.1", smtp_port=port, retry_base_s=30)
    incident = await make_incident(pool)
    refused, busy = await enqueue(pool, incident, [("email", "550@x.vn"), ("email", "451@x.vn")])
    dispatcher = NotificationDispatcher(pool, config)
    assert await dispatcher.send_once() == 2
    permanent, transient = await row(pool, refused), await row(pool, busy)
    assert permanent["status"] == "failed" and "550" in permanent["last_error"]
    assert transient["status"] == "pending" and transient["attempts"] == 1 and "451" in transient["last_error"]
    assert box.messages == []

    down = NotifyConfig(smtp_host="127.0.0.1", smtp_port=free_port())  # nothing listens there
    [nid] = await enqueue(pool, incident, [("email", "duty@x.vn")])
    assert await NotificationDispatcher(pool, down).send_once() == 1
    r = await row(pool, nid)
    assert r["status"] == "pending" and "connection error" in r["last_error"]
    await dispatcher.aclose()


async def test_webhook_is_signed_and_carries_the_payload(pool: asyncpg.Pool, receiver: Receiver) -> None:
    config = NotifyConfig(webhook_urls=[receiver.url], webhook_secret=SECRET)
    incident = await make_incident(pool)
    [nid] = await enqueue(pool, incident, targets_for(config, [{"id": "o1", "email": "a@x"}], ["email", "webhook"]))
    dispatcher = NotificationDispatcher(pool, config)
    assert await dispatcher.send_once() == 1
    await dispatcher.aclose()

    [(path, headers, body)] = receiver.requests
    assert path == "/hook" and headers["Content-Type"] == "application/json"
    assert headers[ID_HEADER] == str(nid)
    assert verify(body, headers, SECRET, tolerance_s=60)
    assert not verify(body, headers, "wrong-secret")
    assert not verify(body, {**headers, ID_HEADER: str(nid + 1)}, SECRET)  # the id is signed
    # A receiver using the Standard Webhooks reference library accepts it as is.
    assert Webhook(SECRET.encode()).verify(body, headers)["version"] == 1
    doc = json.loads(body)
    assert doc["version"] == 1 and doc["reason"] == "firing"
    assert doc["incident"]["id"] == incident["id"] and doc["incident"]["district_name"] == "Kiến An"
    assert doc["links"]["ack"] == f"http://ioc.test/api/incidents/{incident['id']}/ack"
    assert (await row(pool, nid))["status"] == "sent"


async def test_receiver_down_gets_retries_then_exactly_one_delivery(pool: asyncpg.Pool) -> None:
    port = free_port()  # nothing listens there yet
    url = f"http://127.0.0.1:{port}/hook"
    config = NotifyConfig(webhook_urls=[url], webhook_secret=SECRET, poll_s=0.02,
                          retry_base_s=0.05, retry_max_s=0.2, webhook_timeout_s=2)
    incident = await make_incident(pool)
    [nid] = await enqueue(pool, incident, [("webhook", url)])
    task = asyncio.create_task(NotificationDispatcher(pool, config).run())
    receiver: Receiver | None = None
    try:
        async def retried() -> bool:
            r = await row(pool, nid)
            return bool(r["attempts"] >= 3)

        await wait_for(retried, what="three failed attempts")
        failing = await row(pool, nid)
        assert failing["status"] == "pending"  # not lost, not given up
        assert "connection error" in failing["last_error"]

        receiver = Receiver(port=port)

        async def sent() -> bool:
            return bool((await row(pool, nid))["status"] == "sent")

        await wait_for(sent, what="delivery once the receiver is up")
        await asyncio.sleep(0.3)  # several more passes: nothing is sent again
        delivered = await row(pool, nid)
        assert delivered["attempts"] > 1 and delivered["last_error"] is None
        assert [h[ID_HEADER] for _, h, _ in receiver.requests] == [str(nid)]
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if receiver:
            receiver.close()


async def test_permanent_4xx_fails_at_once(pool: asyncpg.Pool, receiver: Receiver) -> None:
    receiver.status = 400
    config = NotifyConfig(webhook_urls=[receiver.url], retry_base_s=0.01)
    [nid] = await enqueue(pool, await make_incident(pool), [("webhook", receiver.url)])
    dispatcher = NotificationDispatcher(pool, config)
    await dispatcher.send_once()
    await asyncio.sleep(0.05)
    assert await dispatcher.send_once() == 0
    await dispatcher.aclose()
    failed = await row(pool, nid)
    assert failed["status"] == "failed" and failed["attempts"] == 1 and failed["last_error"].startswith("HTTP 400")
    assert len(receiver.requests) == 1
    async with pool.acquire() as conn:
        assert [r["id"] for r in await outbox.list_notifications(conn, status="failed")] == [nid]


@pytest.mark.parametrize("given_as", ["seconds", "http-date"])
async def test_retry_after_is_honoured_in_seconds_and_as_an_http_date(pool: asyncpg.Pool, receiver: Receiver,
                                                                     given_as: str) -> None:
    config = NotifyConfig(webhook_urls=[receiver.url], retry_base_s=0.01, retry_max_s=600)
    [nid] = await enqueue(pool, await make_incident(pool), [("webhook", receiver.url)])
    now = float(int(time.time()) + 1)  # after the row became due; whole seconds, like an HTTP date
    receiver.status = 503
    receiver.reply_headers["Retry-After"] = "240" if given_as == "seconds" else format_datetime(
        datetime.fromtimestamp(now + 240, UTC), usegmt=True)
    dispatcher = NotificationDispatcher(pool, config, clock=lambda: now)
    assert await dispatcher.send_once() == 1
    await dispatcher.aclose()
    r = await row(pool, nid)
    assert r["status"] == "pending" and r["attempts"] == 1
    # Our own backoff alone would be ~0.01 s; the receiver asked for 4 minutes.
    wait = (r["next_attempt"] - datetime.fromtimestamp(now, UTC)).total_seconds()
    assert wait == pytest.approx(240, abs=0.01)


async def test_transient_failures_give_up_after_max_attempts(pool: asyncpg.Pool, receiver: Receiver) -> None:
    receiver.status = 503
    config = NotifyConfig(webhook_urls=[receiver.url], retry_base_s=0.01, retry_max_s=0.02, max_attempts=3)
    [nid] = await enqueue(pool, await make_incident(pool), [("webhook", receiver.url)])
    dispatcher = NotificationDispatcher(pool, config)

    async def failed() -> bool:
        await dispatcher.send_once()
        return bool((await row(pool, nid))["status"] == "failed")

    await wait_for(failed, what="status failed")
    await dispatcher.aclose()
    r = await row(pool, nid)
    assert r["attempts"] == 3 and r["last_error"].startswith("gave up after 3 attempts: HTTP 503")
    assert len(receiver.requests) == 3


async def test_rate_limit_defers_and_does_not_drop(pool: asyncpg.Pool, receiver: Receiver) -> None:
    offset = [0.0]  # the dispatcher's clock runs ahead of the wall clock by this much

    def clock() -> float:
        return time.time() + offset[0]

    config = NotifyConfig(webhook_urls=[receiver.url], rate_per_minute=1, burst=2)
    incident = await make_incident(pool)
    ids = [(await enqueue(pool, incident, [("webhook", receiver.url)]))[0] for _ in range(5)]
    dispatcher = NotificationDispatcher(pool, config, clock=clock)
    assert await dispatcher.send_once() == 5
    rows = [await row(pool, nid) for nid in ids]
    assert [r["status"] for r in rows] == ["sent", "sent", "pending", "pending", "pending"]
    for r in rows[2:]:
        assert r["attempts"] == 0 and r["next_attempt"] > datetime.now(UTC) + timedelta(seconds=50)
    assert await dispatcher.send_once() == 0  # nothing due yet

    offset[0] = 61.0  # a minute later: one more token
    assert await dispatcher.send_once() == 3
    assert [(await row(pool, nid))["status"] for nid in ids] == ["sent", "sent", "sent", "pending", "pending"]
    await dispatcher.aclose()
    assert [h[ID_HEADER] for _, h, _ in receiver.requests] == [str(n) for n in ids[:3]]


async def test_storm_collapses_to_one_waiting_message_per_incident(pool: asyncpg.Pool, receiver: Receiver) -> None:
    config = NotifyConfig(webhook_urls=[receiver.url], rate_per_minute=1, burst=5, coalesce_after=20, batch=50)
    incident = await make_incident(pool)
    rendered = render(incident, "firing", "http://ioc.test")
    async with pool.acquire() as conn:
        storm = await outbox.enqueue(conn, notification_rows(rendered, incident["id"], "firing",
                                                             [("webhook", receiver.url)] * 100))
        [other] = await outbox.enqueue(conn, notification_rows(rendered, incident["id"], "firing",
                                                               [("webhook", receiver.url + "/other")]))
    dispatcher = NotificationDispatcher(pool, config)
    assert await dispatcher.send_once() == 50
    # The storm's newest row (beyond the first batch) is deferred; the other target is not held back.
    assert await dispatcher.send_once() == 2
    await dispatcher.aclose()

    async with pool.acquire() as conn:
        rows = {r["id"]: r for r in await outbox.list_notifications(conn, limit=1000)}
        assert await outbox.pending_count(conn) == 1
    statuses = [rows[nid]["status"] for nid in storm]
    assert statuses[:5] == ["sent"] * 5
    assert statuses.count("dropped") == 94
    assert all(rows[nid]["last_error"] == "superseded" for nid in storm if rows[nid]["status"] == "dropped")
    assert rows[storm[-1]]["status"] == "pending"  # the newest one is kept for when the limit allows
    assert rows[other]["status"] == "sent"
    assert len(receiver.requests) == 6


class FlakyPool:
    """Delegates to a real pool, but ``acquire`` fails while ``down`` is set (a database outage)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.down = True
        self.refused = 0

    def acquire(self) -> Any:
        if self.down:
            self.refused += 1
            raise ConnectionRefusedError("database down")
        return self.pool.acquire()


async def test_database_outage_does_not_stop_the_loop(pool: asyncpg.Pool, receiver: Receiver) -> None:
    config = NotifyConfig(webhook_urls=[receiver.url], poll_s=0.01)
    [nid] = await enqueue(pool, await make_incident(pool), [("webhook", receiver.url)])
    flaky = FlakyPool(pool)
    task = asyncio.create_task(NotificationDispatcher(flaky, config).run())
    try:
        async def refused() -> bool:
            return flaky.refused >= 3

        await wait_for(refused, what="passes against the dead database")
        assert not task.done()
        flaky.down = False

        async def sent() -> bool:
            return bool((await row(pool, nid))["status"] == "sent")

        await wait_for(sent, what="delivery after the outage")
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
