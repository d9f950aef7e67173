"""Identity pieces an outside reviewer pokes at, without I/O: the OIDC algorithms a deployment may allow, a device
naming another device inside its payload, credentials in logged URLs, webhook URLs in answers, the login page's
``next``."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import pytest
from pydantic import ValidationError
from uvicorn.logging import AccessFormatter

from ingest.parse import parse_message
from ioc.api.redact import CredentialLogFilter, redact_query, redact_urls, site_of
from ioc.api.routes_auth import local_path
from ioc.auth.config import AuthConfig


@pytest.mark.parametrize("algorithms", [["HS256"], ["RS256", "hs512"], ["none"], ["RS256", "None"], []])
def test_oidc_refuses_symmetric_and_unsigned_algorithms(algorithms: list[str]) -> None:
    """With HS256 allowed, a token MACed with the provider's public key (published in its JWKS) would pass."""
    with pytest.raises(ValidationError, match="OIDC_ALGORITHMS"):
        AuthConfig(oidc_algorithms=algorithms)
    assert AuthConfig(oidc_algorithms=["RS256", "EdDSA"]).oidc_algorithms == ["RS256", "EdDSA"]


def test_a_device_cannot_speak_for_another_inside_its_payload() -> None:
    """The broker's ACL ties an account to its own topics; the device id is read from the topic alone, so an id
    (or a kind) written in the payload, in a single reading or a gateway's batch, changes nothing."""
    now = datetime.now(UTC)
    forged = b'{"device_id": "HP-CAM-9999", "kind": "bts", "ts": %d, "metrics": {"x": 1}}' % int(now.timestamp() * 1000)
    one = parse_message("ioc/v1/camera/HP-CAM-0001/telemetry", forged, now)
    batch = parse_message("ioc/v1/camera/HP-CAM-0001/telemetry", b"[" + forged + b"," + forged + b"]", now)
    status = parse_message("ioc/v1/camera/HP-CAM-0001/status", b'{"state": "online", "device_id": "HP-CAM-9999"}', now)
    records = one.records + batch.records + status.records
    assert len(records) == 4
    assert {(r.device_id, r.kind) for r in records} == {("HP-CAM-0001", "camera")}


def test_uvicorn_request_lines_lose_their_credentials() -> None:
    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("127.0.0.1:5", "GET", "/?lang=en&token=ioct_SECRET&x=1", "1.1", 303),
        None,
    )
    assert CredentialLogFilter().filter(record)
    line = AccessFormatter("%(client_addr)s %(request_line)s %(status_code)s", use_colors=False).format(record)
    assert "SECRET" not in line and "/?lang=en&token=[redacted]&x=1" in line, line  # the formatter still works
    assert redact_query("/ws/live?access_token=abc&types=status") == "/ws/live?access_token=[redacted]&types=status"
    assert "SECRET" not in redact_query("/login?next=%2F%3Ftoken%3DSECRET%26lang%3Den")
    assert redact_query("/api/devices?mytoken=1&district=HB") == "/api/devices?mytoken=1&district=HB"


def test_urls_in_answers_are_cut_to_their_site() -> None:
    assert site_of("https://user:pw@hooks.example.vn:8443/services/T/B/S?k=1") == "https://hooks.example.vn:8443/…"
    assert site_of("https://hooks.example.vn") == "https://hooks.example.vn"
    assert site_of("no url at all") == "[redacted]"
    assert redact_urls("404 for url 'https://h.example/s/SECRET?t=1'") == "404 for url 'https://h.example/…'"


@pytest.mark.parametrize(
    "target,local",
    [
        ("/ops", True),
        ("/ops#/incidents/7", True),
        ("/?lang=en", True),
        ("/%09/x", True),
        ("//evil.example", False),
        ("/\\evil.example", False),
        ("\\\\evil.example", False),
        ("/\t/evil.example", False),
        ("/\r\n/evil.example", False),
        (" //evil.example", False),
        ("https://evil.example", False),
        ("javascript:alert(1)", False),
        ("", False),
        ("ops", False),
    ],
)
def test_the_login_page_only_returns_to_this_site(target: str, local: bool) -> None:
    assert local_path(target) is local
