"""Webhook signatures (Standard Webhooks), Retry-After parsing and the email message, without any I/O."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest
from standardwebhooks import Webhook, WebhookVerificationError

from ioc.alerts.notify.config import NotifyConfig
from ioc.alerts.notify.email import build_message
from ioc.alerts.notify.webhook import retry_after_s, sign, signature_headers, signing_key, verify

pytestmark = pytest.mark.unit

BODY = '{"version":1,"text":"Mất điện lưới"}'.encode()
SECRET = "s3cret"
T = 1_700_000_000


def test_signature_format_matches_the_documented_recipe() -> None:
    headers = signature_headers(BODY, SECRET, T, "42")
    mac = hmac.new(SECRET.encode(), b"42.1700000000." + BODY, hashlib.sha256).digest()
    assert headers == {"webhook-id": "42", "webhook-timestamp": "1700000000",
                       "webhook-signature": "v1," + base64.b64encode(mac).decode()}
    assert signature_headers(BODY, None, T, "42") == {"webhook-id": "42", "webhook-timestamp": "1700000000"}


def test_the_reference_verifier_accepts_our_signature_and_rejects_a_changed_id() -> None:
    now = int(time.time())
    headers = signature_headers(BODY, SECRET, now, "7")
    receiver = Webhook(SECRET.encode())  # a plain secret: its bytes are the key
    assert receiver.verify(BODY, headers)["version"] == 1
    with pytest.raises(WebhookVerificationError):
        receiver.verify(BODY, {**headers, "webhook-id": "8"})  # a replay cannot change the dedupe id
    with pytest.raises(WebhookVerificationError):
        Webhook(b"other").verify(BODY, headers)


def test_whsec_secrets_are_base64_keys_as_in_the_reference_libraries() -> None:
    raw = b"\x00\x01binary key\xff"
    secret = "whsec_" + base64.b64encode(raw).decode()
    assert signing_key(secret) == raw
    now = int(time.time())
    assert Webhook(secret).verify(BODY, signature_headers(BODY, secret, now, "msg_1"), json_parse=False) is None


def test_verify_accepts_within_tolerance_and_rejects_tampering() -> None:
    headers = signature_headers(BODY, SECRET, T, "42")
    assert verify(BODY, headers, SECRET, tolerance_s=300, now=T + 100)
    assert verify(BODY, {k.upper(): v for k, v in headers.items()}, SECRET, now=T)  # names in any case
    assert not verify(BODY + b" ", headers, SECRET, now=T)
    assert not verify(BODY, headers, "other", now=T)
    assert not verify(BODY, headers, SECRET, tolerance_s=300, now=T + 301)  # replayed later
    assert not verify(BODY, {**headers, "webhook-timestamp": str(T + 200)}, SECRET, now=T + 200)
    assert not verify(BODY, {**headers, "webhook-id": "43"}, SECRET, now=T)  # the id is signed


@pytest.mark.parametrize("drop", ["webhook-id", "webhook-timestamp", "webhook-signature"])
def test_verify_rejects_missing_headers(drop: str) -> None:
    headers = signature_headers(BODY, SECRET, T, "42")
    del headers[drop]
    assert not verify(BODY, headers, SECRET, now=T)


@pytest.mark.parametrize("signature", ["", "garbage", "v1,AAAA", "v2," + "A" * 44])
def test_verify_rejects_malformed_signatures(signature: str) -> None:
    headers = {**signature_headers(BODY, SECRET, T, "42"), "webhook-signature": signature}
    assert not verify(BODY, headers, SECRET, now=T)
    assert not verify(BODY, {**headers, "webhook-timestamp": "abc"}, SECRET, now=T)


def test_verify_accepts_any_matching_signature_during_secret_rotation() -> None:
    good = sign(BODY, SECRET, T, "42")
    headers = {"webhook-id": "42", "webhook-timestamp": str(T), "webhook-signature": f"v1,{'A' * 44} {good}"}
    assert verify(BODY, headers, SECRET, now=T)


def test_retry_after_in_seconds_or_as_an_http_date() -> None:
    now = datetime(2026, 12, 6, 8, 0, 0, tzinfo=UTC).timestamp()
    assert retry_after_s("120", now) == 120.0
    assert retry_after_s(" 0 ", now) == 0.0
    assert retry_after_s("Sun, 06 Dec 2026 08:02:30 GMT", now) == 150.0
    assert retry_after_s(format_datetime(datetime(2026, 12, 6, 8, 1, tzinfo=UTC), usegmt=True), now) == 60.0
    assert retry_after_s("Sun, 06 Dec 2026 07:00:00 GMT", now) == 0.0  # in the past: now
    assert retry_after_s("-5", now) == 0.0
    for unreadable in (None, "", "soon", "Sun, 99 Foo 2026"):
        assert retry_after_s(unreadable, now) is None


def test_email_threads_on_the_incident() -> None:
    a = build_message(subject="[MAJOR] Mất điện ở Kiến An", text="Where: Kiến An\n", sender="IOC <ioc@hp.gov.vn>",
                      to="duty@hp.gov.vn", notification_id=7, incident_id=42)
    b = build_message(subject="[RESOLVED MAJOR] x", text="ok\n", sender="ioc@hp.gov.vn", to="duty@hp.gov.vn",
                      notification_id=9, incident_id=42)
    assert a["Message-ID"] == "<ioc-notification-7@hp.gov.vn>" != b["Message-ID"]
    assert a["In-Reply-To"] == a["References"] == b["References"] == "<ioc-incident-42@hp.gov.vn>"
    assert a["Subject"] == "[MAJOR] Mất điện ở Kiến An"
    assert a.get_content_type() == "text/plain" and a.get_content_charset() == "utf-8"
    assert a.get_content() == "Where: Kiến An\n"
    assert "Kiến" not in a.as_string()  # encoded for 7-bit transport
    assert build_message(subject="t", text="t", sender="ioc@x", to="a@x", notification_id=1,
                         incident_id=None)["References"] is None


def test_smtp_security_setting_and_the_older_starttls_switch() -> None:
    assert NotifyConfig().smtp_security == "none"
    assert NotifyConfig(smtp_security="tls", smtp_port=465).smtp_security == "tls"
    assert NotifyConfig(smtp_starttls=True).smtp_security == "starttls"
    with pytest.raises(ValueError, match="choose one"):
        NotifyConfig(smtp_starttls=True, smtp_security="tls")
    with pytest.raises(ValueError):
        NotifyConfig(smtp_security="ssl")
