"""Webhook signatures (HMAC-SHA256, Stripe style) and the email message, without any I/O."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from ioc.alerts.notify.email import build_message
from ioc.alerts.notify.webhook import sign, verify

pytestmark = pytest.mark.unit

BODY = '{"version":1,"text":"Mất điện lưới"}'.encode()
SECRET = "s3cret"


def test_signature_format_matches_the_documented_recipe() -> None:
    header = sign(BODY, SECRET, 1_700_000_000)
    expected = hmac.new(SECRET.encode(), b"1700000000." + BODY, hashlib.sha256).hexdigest()
    assert header == f"t=1700000000,v1={expected}"


def test_verify_accepts_within_tolerance_and_rejects_tampering() -> None:
    header = sign(BODY, SECRET, 1_700_000_000)
    assert verify(BODY, header, SECRET, tolerance_s=300, now=1_700_000_100)
    assert not verify(BODY + b" ", header, SECRET, now=1_700_000_000)
    assert not verify(BODY, header, "other", now=1_700_000_000)
    assert not verify(BODY, header, SECRET, tolerance_s=300, now=1_700_000_301)  # replayed later
    assert not verify(BODY, header.replace("t=1700000000", "t=1700000200"), SECRET, now=1_700_000_200)


@pytest.mark.parametrize("header", [None, "", "garbage", "t=abc,v1=00", "t=1700000000", "v1=00"])
def test_verify_rejects_malformed_headers(header: str | None) -> None:
    assert not verify(BODY, header, SECRET, now=1_700_000_000)


def test_verify_accepts_any_matching_v1_during_secret_rotation() -> None:
    good = sign(BODY, SECRET, 1_700_000_000).split("v1=")[1]
    assert verify(BODY, f"t=1700000000,v1={'0' * 64},v1={good}", SECRET, now=1_700_000_000)


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
