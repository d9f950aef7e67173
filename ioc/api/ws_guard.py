"""WebSocket control frames bounded per connection, below the app (which never sees pings or pongs).

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
            self._flooded = True
            logger.warning("WebSocket from %s closed: more than %d control frames at once or %g a second",
                           self.client, CONTROL_BURST, CONTROL_RATE)
            try:
                self.conn.send_close(1008, "too many control frames")
            except Exception:  # already closing: the transport is closed below all the same
                self.transport.close()
                return False
            self.handle_parser_exception()  # tells the app, writes the close frame, closes the transport
            return False

        def handle_ping(self) -> None:
            if self._control_frame():
                super().handle_ping()

        def handle_pong(self, event: Any) -> None:
            if self._control_frame():
                super().handle_pong(event)

    return GuardedWebSocketProtocol
