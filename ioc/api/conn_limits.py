"""How many TCP connections the server holds, per client address and in all, refused at the protocol.

A request head must come within 10 s (:mod:`ioc.api.http_guard`), but within those 10 s one address could open as
many connections as the process could hold files: with a limit of 4,096 open files, 5,000 idle connections from
127.0.0.1 took every descriptor, and a client from another address was reset at once (``benchmarks.conn_flood``).
So each connection takes a slot of its peer address when it is made, and gives it back when it is lost, also when
it was upgraded to a WebSocket (the slot follows it to the WebSocket protocol). Past ``per_address`` slots of one
address the new connection is answered 429 at once and closed, past ``total`` in all 503 (both with
``Retry-After``), before uvicorn parses anything: the cheapest refusal there is.

The address is the TCP peer's: behind a reverse proxy every client shares the proxy's address, so the proxy's
addresses can be listed (``proxies``): their connections count against the total only, and the proxy bounds its
own clients (nginx ``limit_conn``). ``X-Forwarded-For`` is not read here (the connection is refused before any
header); the feed's own count per client (``IOC_AUTH__WS_PER_CLIENT``) uses uvicorn's forwarded address.
An IPv6 peer counts by its /64 (one host gets a whole /64).
"""

from __future__ import annotations

import ipaddress
import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

logger = logging.getLogger(__name__)

#: Connections one address may hold at once (a control room behind one NAT: screens, browsers, scripts).
PER_ADDRESS = 256
#: Connections in all, and at most this share of the process's open-files limit (the rest: database, broker, files).
TOTAL = 8192
FILES_SHARE = 0.5
#: What a refused client is told to wait, in seconds.
RETRY_AFTER_S = 5

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConnectionLimits:
    """Slots per client address and in all; shared by every connection of one server."""

    def __init__(self, per_address: int = PER_ADDRESS, total: int = TOTAL, proxies: Iterable[str] = ()) -> None:
        self.per_address, self.total = per_address, total
        self.proxies: list[Network] = [ipaddress.ip_network(p, strict=False) for p in proxies]
        self.by_address: dict[str, int] = {}
        self.open = 0
        self.refused_address = 0  # connections refused for their address's count (429)
        self.refused_total = 0  # ... for the total (503)
        self._logged_at = -60.0

    @classmethod
    def for_files(cls, per_address: int, total: int, proxies: Iterable[str], open_files: int) -> ConnectionLimits:
        """Limits whose total stays under ``FILES_SHARE`` of the open-files limit."""
        room = max(64, int(open_files * FILES_SHARE))
        if total > room:
            logger.warning("at most %d connections (half the open-files limit %d), not %d", room, open_files, total)
            total = room
        return cls(min(per_address, total), total, proxies)

    def key(self, peer: Any) -> str | None:
        """The address a peer (``getpeername()``) counts under; None: the total only (a proxy, a Unix socket)."""
        if not isinstance(peer, tuple) or not peer:
            return None
        try:
            ip = ipaddress.ip_address(peer[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address):
            if ip.ipv4_mapped is not None:
                ip = ip.ipv4_mapped
            else:
                return str(ipaddress.ip_network(f"{ip}/64", strict=False))
        if any(ip in net for net in self.proxies):
            return None
        return str(ip)

    def take(self, peer: Any) -> tuple[int, Callable[[], None] | None]:
        """A slot for a new connection: (0, release) when taken; (429 or 503, None) when refused.
        ``release`` may be called any number of times; it gives the slot back once."""
        if self.open >= self.total:
            self.refused_total += 1
            self._log(peer)
            return 503, None
        key = self.key(peer)
        if key is not None:
            held = self.by_address.get(key, 0)
            if held >= self.per_address:
                self.refused_address += 1
                self._log(peer)
                return 429, None
            self.by_address[key] = held + 1
        self.open += 1
        released = False

        def release() -> None:
            nonlocal released
            if released:
                return
            released = True
            self.open -= 1
            if key is not None:
                left = self.by_address[key] - 1
                if left:
                    self.by_address[key] = left
                else:
                    del self.by_address[key]

        return 0, release

    def _log(self, peer: Any) -> None:
        """At most one line a minute: a flood of refusals must not become a flood of log lines."""
        now = time.monotonic()
        if now - self._logged_at >= 60:
            self._logged_at = now
            logger.warning("connections refused: %d for their address (latest %s, at most %d each), %d for the "
                           "total (%d open, at most %d)", self.refused_address, peer, self.per_address,
                           self.refused_total, self.open, self.total)


def refusal(status: int) -> bytes:
    """The whole answer to a refused connection."""
    phrase, why = ((b"Too Many Requests", b"too many connections from this address") if status == 429
                   else (b"Service Unavailable", b"too many connections"))
    return (b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\nretry-after: %d\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (status, phrase, RETRY_AFTER_S, len(why), why))
