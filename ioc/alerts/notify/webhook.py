"""Webhook delivery: a signed JSON POST, with failures classified as transient (retry) or permanent.

Signed with the Standard Webhooks scheme (https://www.standardwebhooks.com, verifiers in many languages,
``standardwebhooks`` on PyPI), so the delivery id is covered by the signature and a replay within the
time window cannot change the id receivers deduplicate on::

    webhook-id:        <notification id>    (the same on every redelivery: receivers dedupe with it)
    webhook-timestamp: <unix seconds>
    webhook-signature: v1,<base64 HMAC-SHA256 of b"<id>.<timestamp>." + body>

The HMAC key is the secret's bytes; a secret written ``whsec_<base64>`` (the form Standard Webhooks
tools generate) is base64-decoded first, as the reference libraries do. A receiver with a plain secret
verifies with ``standardwebhooks.Webhook(secret.encode()).verify(body, headers)``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
import time
from collections.abc import Mapping
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
from standardwebhooks import Webhook

logger = logging.getLogger(__name__)

ID_HEADER = "webhook-id"
TIMESTAMP_HEADER = "webhook-timestamp"
SIGNATURE_HEADER = "webhook-signature"
USER_AGENT = "ioc-monitor-notify/2"
#: Statuses worth retrying besides 5xx: the receiver asks us to come back later.
_TRANSIENT_4XX = frozenset({408, 425, 429})
_SECRET_PREFIX = "whsec_"


class DeliveryError(Exception):
    """A notification could not be delivered.

    Attributes:
        transient: True when retrying may succeed (connection refused, timeout, 5xx, 429, SMTP 4xx).
        message: What went wrong, short enough for ``notifications.last_error``.
        retry_after: Seconds the receiver asked us to wait, if it said so.
    """

    def __init__(self, transient: bool, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.transient = transient
        self.message = message
        self.retry_after = retry_after


def signing_key(secret: str) -> bytes:
    """The HMAC key of ``secret``: base64-decoded after a ``whsec_`` prefix, else its UTF-8 bytes."""
    if secret.startswith(_SECRET_PREFIX):
        try:
            return base64.b64decode(secret[len(_SECRET_PREFIX):] + "==", validate=False)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("a whsec_ webhook secret must be base64 after the prefix") from exc
    return secret.encode()


def sign(body: bytes, secret: str, ts: int, msg_id: str) -> str:
    """The ``webhook-signature`` value for ``body`` with id ``msg_id`` sent at unix time ``ts``."""
    return str(Webhook(signing_key(secret)).sign(msg_id, datetime.fromtimestamp(ts, UTC), body))


def signature_headers(body: bytes, secret: str | None, ts: int, msg_id: str) -> dict[str, str]:
    """The three Standard Webhooks headers (only ``webhook-id`` and the timestamp when unsigned)."""
    headers = {ID_HEADER: msg_id, TIMESTAMP_HEADER: str(ts)}
    if secret:
        headers[SIGNATURE_HEADER] = sign(body, secret, ts, msg_id)
    return headers


def verify(body: bytes, headers: Mapping[str, str], secret: str, tolerance_s: float = 300.0,
           now: float | None = None) -> bool:
    """Check a delivery's Standard Webhooks headers, as a receiver should.

    Args:
        body: The raw request body, byte for byte.
        headers: The request headers (names in any case).
        secret: The shared secret.
        tolerance_s: Largest accepted difference between the signed time and ``now`` (replay window).
        now: Current unix time (default: the wall clock).

    Returns:
        True when one ``v1`` signature over id, timestamp and body matches and the timestamp is within
        the tolerance.
    """
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, signatures = (lower.get(ID_HEADER), lower.get(TIMESTAMP_HEADER), lower.get(SIGNATURE_HEADER))
    if not (msg_id and stamp and signatures):
        return False
    try:
        ts = int(stamp)
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    expected = sign(body, secret, ts, msg_id).encode()
    return any(hmac.compare_digest(expected, c.encode()) for c in signatures.split(" ") if c)


def retry_after_s(value: str | None, now: float | None = None) -> float | None:
    """Seconds a ``Retry-After`` value asks for: delta-seconds or an HTTP date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None  # unreadable: our own backoff applies
    if when.tzinfo is None:  # "-0000" parses naive; HTTP dates are GMT
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


async def send_webhook(client: httpx.AsyncClient, url: str, body: bytes, delivery_id: int | str,
                       secret: str | None, now: float | None = None) -> None:
    """POST ``body`` (JSON) to ``url``, signed when ``secret`` is set.

    Args:
        client: The HTTP client (its timeout applies).
        url: The receiver.
        body: The JSON document, already serialised; signed byte for byte.
        delivery_id: The notification id, sent (and signed) as ``webhook-id``.
        secret: Shared secret for ``webhook-signature``; None sends unsigned.
        now: Unix time for the signature and for a ``Retry-After`` date (default: the wall clock).

    Raises:
        DeliveryError: transient for connection errors, timeouts, 5xx, 408/425/429; permanent for other
            statuses outside 2xx (redirects included: a moved receiver is a configuration matter).
    """
    now = time.time() if now is None else now
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT,
               **signature_headers(body, secret, int(now), str(delivery_id))}
    try:
        response = await client.post(url, content=body, headers=headers)
    except httpx.TimeoutException as exc:
        raise DeliveryError(True, f"timeout: {type(exc).__name__}") from exc
    except httpx.TransportError as exc:  # connection refused / reset, DNS, TLS
        raise DeliveryError(True, f"connection error: {type(exc).__name__}: {exc}") from exc
    status = response.status_code
    if 200 <= status < 300:
        return
    detail = f"HTTP {status}: {response.text[:200]}".strip()
    if status >= 500 or status in _TRANSIENT_4XX:
        raise DeliveryError(True, detail, retry_after_s(response.headers.get("retry-after"), now))
    raise DeliveryError(False, detail)
