"""Secrets that travel in URLs, kept out of logs and answers.

A wall's link and the live feed carry an API token in ``?token=`` (browsers cannot set headers on a WebSocket);
uvicorn writes every request's address, query included, to its access and error logs. A chat webhook's URL is
itself a bearer secret (whoever has it can post as the IOC). :class:`CredentialLogFilter` rewrites log records
on their way out; :func:`site_of` and :func:`redact_urls` cut URLs in an answer down to their site.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import urlsplit

#: Query parameters that carry a credential (ours, and OAuth's names, in case a client sends those).
CREDENTIAL_PARAMS = ("token", "access_token", "id_token", "refresh_token")
REDACTED = "[redacted]"
# also percent-encoded inside another parameter (the login page's ?next=%2F%3Ftoken%3D...)
_NAMES = "|".join(CREDENTIAL_PARAMS)
_PARAM_RE = re.compile(rf"((?:^|[?&;\s\"']|%3F|%26)(?:{_NAMES})(?:=|%3D))[^&;#%\s\"']*", re.IGNORECASE)
_URL_RE = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s'\"<>]+", re.IGNORECASE)
#: The loggers uvicorn writes request lines to (the WebSocket handshake's goes to uvicorn.error).
SERVER_LOGGERS = ("uvicorn.access", "uvicorn.error", "uvicorn")


def redact_query(text: str) -> str:
    """``/ws/live?token=ioct_x&types=status`` -> ``/ws/live?token=[redacted]&types=status``."""
    return _PARAM_RE.sub(lambda m: m[1] + REDACTED, text) if ("=" in text or "%" in text) else text


def site_of(url: str) -> str:
    """A URL cut to its scheme and host (no user, path or query): ``https://hooks.example/…``."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return REDACTED
    if not parts.scheme or not host:
        return REDACTED
    site = f"{parts.scheme}://{f'[{host}]' if ':' in host else host}{port}"
    return site + "/…" if url.rstrip("/") != site else site


def redact_urls(text: str) -> str:
    """Every URL inside ``text`` (an error message quoting the address it failed on) cut to its site."""
    return _URL_RE.sub(lambda m: site_of(m[0]), text) if "://" in text else text


class CredentialLogFilter(logging.Filter):
    """Rewrites credential query parameters in a record's message and arguments (uvicorn's access formatter
    reads the arguments one by one, so they are rewritten in place rather than merged into the message)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_query(record.msg)
        if isinstance(record.args, tuple):
            record.args = tuple(redact_query(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.args, dict):
            record.args = {k: redact_query(v) if isinstance(v, str) else v for k, v in record.args.items()}
        return True


_FILTER = CredentialLogFilter()


def install_log_filter(names: tuple[str, ...] = SERVER_LOGGERS) -> None:
    """Put the filter on the server's loggers (idempotent). A logger's filters survive uvicorn's own
    ``dictConfig`` of its loggers, which replaces their handlers only."""
    for name in names:
        logger = logging.getLogger(name)
        if _FILTER not in logger.filters:
            logger.addFilter(_FILTER)


__all__ = ["CredentialLogFilter", "install_log_filter", "redact_query", "redact_urls", "site_of"]
