"""Email delivery over SMTP (the standard library's client, run in a worker thread).

The connection is plain, upgraded with STARTTLS, or TLS from the first byte (implicit TLS, port 465):
``NotifyConfig.smtp_security``. The server's certificate is always verified (system CAs or
``smtp_ca_file``).

Messages of one incident share a ``References`` / ``In-Reply-To`` root, so they thread in the officer's
mail client. SMTP 4xx replies and connection problems are transient, 5xx replies permanent.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import formatdate

from ioc.alerts.notify.config import NotifyConfig
from ioc.alerts.notify.webhook import DeliveryError

logger = logging.getLogger(__name__)


def _domain(address: str) -> str:
    return address.rpartition("@")[2].strip("<> ") or "localhost"


def thread_id(incident_id: int | None, domain: str) -> str | None:
    """The Message-ID every message of an incident refers to (None without an incident)."""
    return f"<ioc-incident-{incident_id}@{domain}>" if incident_id is not None else None


def build_message(*, subject: str, text: str, sender: str, to: str, notification_id: int,
                  incident_id: int | None) -> EmailMessage:
    """A text/plain UTF-8 email, threaded on the incident.

    Args:
        subject: Subject line.
        text: Plain-text body.
        sender: From address.
        to: Recipient address.
        notification_id: Outbox id; makes the Message-ID unique and stable across retries.
        incident_id: Incident the message is about; keys In-Reply-To / References.
    """
    domain = _domain(sender)
    msg = EmailMessage()
    msg["Subject"] = subject
    msg["From"] = sender
    msg["To"] = to
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    # Stable across retries, so a receiving server that got the message before our connection broke
    # can recognise the duplicate.
    msg["Message-ID"] = f"<ioc-notification-{notification_id}@{domain}>"
    root = thread_id(incident_id, domain)
    if root:
        msg["In-Reply-To"] = root
        msg["References"] = root
        msg["X-IOC-Incident"] = str(incident_id)
    msg["X-IOC-Delivery"] = str(notification_id)
    # quoted-printable, not 8bit: Vietnamese text must pass servers without 8BITMIME untouched.
    msg.set_content(text, charset="utf-8", cte="quoted-printable")
    return msg


def _classify(exc: Exception) -> DeliveryError:
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        codes = [code for code, _ in exc.recipients.values()]
        transient = bool(codes) and all(400 <= c < 500 for c in codes)
        return DeliveryError(transient, f"recipient refused: {exc.recipients}"[:300])
    if isinstance(exc, smtplib.SMTPResponseException):
        reply = exc.smtp_error.decode(errors="replace") if isinstance(exc.smtp_error, bytes) else str(exc.smtp_error)
        return DeliveryError(400 <= exc.smtp_code < 500, f"SMTP {exc.smtp_code}: {reply}"[:300])
    if isinstance(exc, smtplib.SMTPNotSupportedError):  # e.g. STARTTLS configured, server lacks it
        return DeliveryError(False, f"SMTP not supported: {exc}")
    if isinstance(exc, smtplib.SMTPServerDisconnected | OSError):  # refused, reset, timeout, TLS
        return DeliveryError(True, f"connection error: {type(exc).__name__}: {exc}")
    return DeliveryError(True, f"SMTP error: {type(exc).__name__}: {exc}")


def tls_context(config: NotifyConfig) -> ssl.SSLContext:
    """The client TLS context for the SMTP server: verifies its certificate and host name."""
    return ssl.create_default_context(cafile=config.smtp_ca_file)


def _connect(config: NotifyConfig) -> smtplib.SMTP:
    assert config.smtp_host is not None
    if config.smtp_security == "tls":
        return smtplib.SMTP_SSL(config.smtp_host, config.smtp_port, timeout=config.smtp_timeout_s,
                                context=tls_context(config))
    smtp = smtplib.SMTP(config.smtp_host, config.smtp_port, timeout=config.smtp_timeout_s)
    if config.smtp_security == "starttls":
        try:
            smtp.starttls(context=tls_context(config))
        except BaseException:
            smtp.close()
            raise
    return smtp


def _send_blocking(msg: EmailMessage, config: NotifyConfig) -> None:
    with _connect(config) as smtp:
        if config.smtp_username:
            password = config.smtp_password.get_secret_value() if config.smtp_password else ""
            smtp.login(config.smtp_username, password)
        smtp.send_message(msg)


async def send_email(msg: EmailMessage, config: NotifyConfig) -> None:
    """Send ``msg`` through the configured SMTP server.

    Raises:
        DeliveryError: permanent when email is disabled (no ``smtp_host``) or the server answers 5xx;
            transient on 4xx replies and connection problems.
    """
    if not config.smtp_host:
        raise DeliveryError(False, "email disabled: no smtp_host configured")
    try:
        # smtplib blocks; a thread keeps the event loop (and the other channels) moving.
        await asyncio.to_thread(_send_blocking, msg, config)
    except Exception as exc:
        raise _classify(exc) from exc
