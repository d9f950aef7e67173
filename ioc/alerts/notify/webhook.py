"""Webhook delivery: a signed JSON POST, with failures classified as transient (retry) or permanent.

Signature header (Stripe style, so a receiver can reject replays and forgeries)::

    X-IOC-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of b"<t>." + body, keyed with the shared secret>
    X-IOC-Delivery:  <notification id>   (the same on every redelivery: receivers dedupe with it)
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import time

import httpx

logger = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-IOC-Signature"
DELIVERY_HEADER = "X-IOC-Delivery"
USER_AGENT = "ioc-monitor-notify/1"
#: Statuses worth retrying besides 5xx: the receiver asks us to come back later.
_TRANSIENT_4XX = frozenset({408, 425, 429})


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


def _digest(body: bytes, secret: str, ts: int) -> str:
    return hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()


def sign(body: bytes, secret: str, ts: int) -> str:
    """The ``X-IOC-Signature`` header value for ``body`` sent at unix time ``ts``."""
    return f"t={ts},v1={_digest(body, secret, ts)}"


def verify(body: bytes, header: str | None, secret: str, tolerance_s: float = 300.0,
           now: float | None = None) -> bool:
    """Check an ``X-IOC-Signature`` header, as a receiver should.

    Args:
        body: The raw request body, byte for byte.
        header: The header value (None when missing).
        secret: The shared secret.
        tolerance_s: Largest accepted difference between the signed time and ``now`` (replay window).
        now: Current unix time (default: the wall clock).

    Returns:
        True when one ``v1`` signature matches and the timestamp is within the tolerance.
    """
    if not header:
        return False
    ts: int | None = None
    candidates: list[str] = []
    for part in header.split(","):
        key, _, value = part.strip().partition("=")
        if key == "t":
            try:
                ts = int(value)
            except ValueError:
                return False
        elif key == "v1":
            candidates.append(value)
    if ts is None or not candidates:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    expected = _digest(body, secret, ts)
    return any(hmac.compare_digest(expected, c) for c in candidates)


def _retry_after(response: httpx.Response) -> float | None:
    value = response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:  # an HTTP date: rare from webhook receivers, our backoff is fine then
        return None


async def send_webhook(client: httpx.AsyncClient, url: str, body: bytes, delivery_id: int | str,
                       secret: str | None, now: float | None = None) -> None:
    """POST ``body`` (JSON) to ``url``, signed when ``secret`` is set.

    Args:
        client: The HTTP client (its timeout applies).
        url: The receiver.
        body: The JSON document, already serialised; signed byte for byte.
        delivery_id: The notification id, sent as ``X-IOC-Delivery``.
        secret: Shared secret for ``X-IOC-Signature``; None sends unsigned.
        now: Unix time for the signature (default: the wall clock).

    Raises:
        DeliveryError: transient for connection errors, timeouts, 5xx, 408/425/429; permanent for other
            statuses outside 2xx (redirects included: a moved receiver is a configuration matter).
    """
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT, DELIVERY_HEADER: str(delivery_id)}
    if secret:
        headers[SIGNATURE_HEADER] = sign(body, secret, int(time.time() if now is None else now))
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
        raise DeliveryError(True, detail, _retry_after(response))
    raise DeliveryError(False, detail)
