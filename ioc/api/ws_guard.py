"""WebSocket control frames and a message's fragments bounded per connection, below the app (which sees neither).

uvicorn answers every ping with a pong at once, written whatever the transport's buffer holds: a screen sending
pings as fast as its link took them and never reading the pongs grew the server by what it sent (300 MB of pings:
116 to 407 MB, without end), and while it did another address's API call took 6.2 s and a snapshot 3.3 s.
Browsers send no pings at all, and client libraries one every few seconds (Python's websockets: 20 s), so a
connection may send ``CONTROL_BURST`` ping or pong frames at once and ``CONTROL_RATE`` a second after that; past it
the connection is closed with 1008 (policy violation). What one read already parsed is still bounded by the read
(256 KB).
"""

from __future__ import annotations

import logging
import time
from typing import Any

logger = logging.getLogger(__name__)

#: Ping and pong frames a connection may send at once, and a second over time.
CONTROL_BURST = 50
CONTROL_RATE = 10.0
#: Frames one message may come in. Every frame costs the event loop its parsing, whatever it carries: a message sent
#: as 1-byte fragments (13 MB of frames before the 1 MiB message bound ended it) held another client's API call 3.5 s.
#: Browsers send a message as one frame; libraries fragment only when asked to. Past it: closed with 1009.
MAX_FRAGMENTS = 256


def ws_protocol() -> Any:
    """The WebSocket protocol class to give uvicorn (``ws=``): its sans-I/O protocol with the control-frame bound,
    or ``"auto"`` when that protocol is missing (older uvicorn)."""
    try:
        from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    except ImportError:
        return "auto"

    class GuardedWebSocketProtocol(WebSocketsSansIOProtocol):
        """uvicorn's sans-I/O WebSocket protocol, closing a connection that floods control frames."""

        _tokens = float(CONTROL_BURST)
        _tokens_at = 0.0
        _flooded = False
        _fragments = 0  # frames of the message being received

        def _control_frame(self) -> bool:
            """Charge one control frame; False (and the connection closing with 1008) past the budget."""
            if self._flooded:
                return False
            now = time.monotonic()
            if self._tokens_at:
                self._tokens = min(float(CONTROL_BURST), self._tokens + (now - self._tokens_at) * CONTROL_RATE)
            self._tokens_at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            self._refuse(1008, "too many control frames",
                         f"more than {CONTROL_BURST} control frames at once or {CONTROL_RATE:g} a second")
            return False

        def _refuse(self, code: int, reason: str, why: str) -> None:
            """Close the connection with ``code`` (once): frames it sends are no longer handled."""
            self._flooded = True
            logger.warning("WebSocket from %s closed: %s", self.client, why)
            try:
                self.conn.send_close(code, reason)
            except Exception:  # already closing: the transport is closed below all the same
                self.transport.close()
                return
            self.handle_parser_exception()  # tells the app, writes the close frame, closes the transport

        def handle_text(self, event: Any) -> None:
            self._fragments = 1
            if not self._flooded:
                super().handle_text(event)

        def handle_bytes(self, event: Any) -> None:
            self._fragments = 1
            if not self._flooded:
                super().handle_bytes(event)

        def handle_cont(self, event: Any) -> None:
            if self._flooded:
                return
            self._fragments += 1
            if self._fragments > MAX_FRAGMENTS:
                self._refuse(1009, "message in too many frames", f"a message in more than {MAX_FRAGMENTS} frames")
                return
            super().handle_cont(event)

        def handle_ping(self) -> None:
            if self._control_frame():
                super().handle_ping()

        def handle_pong(self, event: Any) -> None:
            if self._control_frame():
                super().handle_pong(event)

    return GuardedWebSocketProtocol
