"""TLS for MQTT clients (ingest, live listener, simulator): one way to build the client's SSL context.

The URL scheme says whether TLS is on (``mqtts://``); the files say whom to trust and who we are.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

#: URL schemes that mean MQTT over TLS, and their default port.
TLS_SCHEMES = frozenset({"mqtts", "ssl"})
PLAIN_SCHEMES = frozenset({"mqtt", "tcp"})
TLS_PORT = 8883
PLAIN_PORT = 1883


@dataclass(frozen=True, slots=True)
class TlsOptions:
    """Trust and identity files of an MQTT-over-TLS client.

    Args:
        ca_file: PEM bundle of the CA(s) that signed the broker's certificate; None = the system's store.
        cert_file: client certificate (PEM), for brokers that require one.
        key_file: its private key (PEM); None when the key is inside ``cert_file``.
    """

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None

    def context(self) -> ssl.SSLContext:
        """A client context: TLS 1.2+, the broker's certificate and host name verified."""
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=self.ca_file)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        if self.cert_file:
            ctx.load_cert_chain(self.cert_file, self.key_file)
        return ctx


def url_uses_tls(url: str) -> bool:
    """True for ``mqtts://`` (and ``ssl://``) URLs."""
    return urlsplit(url).scheme in TLS_SCHEMES


def default_port(url: str) -> int:
    """The URL's port, else 8883 for TLS schemes and 1883 for plain ones."""
    parts = urlsplit(url)
    return parts.port or (TLS_PORT if parts.scheme in TLS_SCHEMES else PLAIN_PORT)


def check_url(url: str) -> str:
    """Return ``url`` if it is an MQTT broker URL we can use, else raise ValueError."""
    parts = urlsplit(url)
    if parts.scheme not in TLS_SCHEMES | PLAIN_SCHEMES or not parts.hostname:
        # The URL is not echoed: it may hold a password.
        raise ValueError("broker URL must look like mqtt://host:1883 or mqtts://host:8883")
    return url
