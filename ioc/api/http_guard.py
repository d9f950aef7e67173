"""Slow and endless request heads, refused at the HTTP protocol (below the app, which only sees whole heads).

uvicorn's httptools protocol bounds neither how long a request head may take nor how large it may grow:

* a client that connects and sends nothing, or a header line every few seconds (slowloris), held its
  connection open for ever (500 such connections: 500 descriptors held, without end; where the process may
  open 1,024, as in many containers, a thousand of them locked every other client, the database pool and the
  broker link out);
* a header that never ends was buffered whole: 136 MB of one header value in 20 s took the server's memory from
  110 to 309 MB, and it would have gone on until the process was killed.

So a request head must be complete within ``HEAD_TIMEOUT_S`` of the connection (or of the previous response)
and hold at most ``MAX_HEAD_BYTES``, and its body must follow within ``BODY_TIMEOUT_S``; otherwise the connection
is answered 408 or 431 and closed. At most ``MAX_PIPELINED`` requests may wait on one connection, and it is not
read while any wait (uvicorn read and queued pipelined requests without end). A response its client stops reading
is dropped after ``SEND_STALL_S`` (uvicorn held it for ever). And the server raises its own limit of open files to
the hard limit at start (:func:`raise_open_files_limit`).
A connection upgraded to a WebSocket is no longer watched (the live feed bounds its screens itself).
How many connections one address, and all, may hold: :mod:`ioc.api.conn_limits` (counted here, WebSockets too).
"""

from __future__ import annotations

import asyncio
import logging
import resource
from collections.abc import Callable
from typing import Any

from ioc.api.conn_limits import PER_ADDRESS, TOTAL, ConnectionLimits, refusal
from ioc.api.ws_guard import ws_protocol

logger = logging.getLogger(__name__)

#: The longest a request head may take, from the connection or the previous response's end.
HEAD_TIMEOUT_S = 10.0
#: The largest request head (request line and headers); browsers send a few KB, proxies cap at 8-64 KB.
MAX_HEAD_BYTES = 64 * 1024
#: The longest a request body may take once its head is complete (bodies are at most 1 MB: 17 KB/s at least).
BODY_TIMEOUT_S = 60.0


#: A response its client has stopped reading: closed once its buffered bytes went down by less than
#: ``SEND_MIN_BYTES_S`` a second over ``SEND_STALL_S`` (32 clients not reading 8 MB telemetry answers held 380 MB,
#: for as long as they stayed connected).
SEND_STALL_S = 30.0
SEND_MIN_BYTES_S = 1024

#: Requests one connection may have waiting behind the one being answered (HTTP/1.1 pipelining; browsers pipeline
#: none). uvicorn queues every request it parses and reads on after each answer: one connection sending 3.7 MB of
#: pipelined ``GET /healthz`` held 180 MB, 16 of them took the server to 2.8 GB and stalled it past 15 s.
MAX_PIPELINED = 32

#: A screen's WebSocket messages: the largest (a filter of 5,000 device ids is ~350 KB) and how many uvicorn
#: buffers while the feed is not reading them (uvicorn's defaults, 16 MiB x 32, let 16 screens of one address
#: take the server from 111 to 926 MB with 15 MB pings the feed held back; beyond the queue, TCP back-pressure).
WS_MAX_BYTES = 1024 * 1024
WS_MAX_QUEUE = 4


#: Seconds a stopping server waits for open requests and connections before cutting them.
SHUTDOWN_GRACE_S = 10


def uvicorn_bounds(limits: ConnectionLimits | None = None) -> dict[str, Any]:
    """uvicorn settings for ``ioc serve`` and the demo: the HTTP protocol with bounded heads and connection counts
    (the defaults when ``limits`` is None), the WebSocket protocol with bounded control frames
    (:mod:`ioc.api.ws_guard`), the WebSocket message bounds, and a bounded graceful shutdown (a request or screen
    still open after SHUTDOWN_GRACE_S is cut, so SIGTERM or Ctrl-C always stops the server)."""
    if limits is None:
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        limits = ConnectionLimits.for_files(PER_ADDRESS, TOTAL, (), soft)
    return {"http": http_protocol(limits), "ws": ws_protocol(), "ws_max_size": WS_MAX_BYTES,
            "ws_max_queue": WS_MAX_QUEUE, "timeout_graceful_shutdown": SHUTDOWN_GRACE_S}


def raise_open_files_limit() -> tuple[int, int]:
    """The soft limit of open files up to the hard one (containers often start at 1,024); returns (soft, hard)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 1_048_576 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):  # not allowed here: keep what we have
            logger.warning("could not raise the open files limit from %d to %d", soft, target)
    return soft, hard


def http_protocol(limits: ConnectionLimits | None = None) -> Any:
    """The protocol class to give uvicorn (``http=``): httptools with the head's bounds and, given ``limits``, a
    slot per connection; or ``"auto"`` when httptools is missing (uvicorn's h11 protocol caps a head at 16 KB
    already, but neither its time nor the connections)."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return "auto"

    class GuardedHttpToolsProtocol(HttpToolsProtocol):
        """httptools with a deadline and a size bound on each request head, a slot per connection, at most
        MAX_PIPELINED requests waiting and answers left unread dropped."""

        _head_timer: asyncio.TimerHandle | None = None
        _body_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0
        _awaiting_head = False
        _release: Callable[[], None] | None = None
        _dropping = False  # past MAX_PIPELINED: the connection is closing, the rest of its data is not handled
        _send_timer: asyncio.TimerHandle | None = None
        _send_left = 0  # bytes buffered at the last look while writing was paused

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if limits is not None:
                status, self._release = limits.take(transport.get_extra_info("peername"))
                if status:  # refused before anything is parsed; nothing else is kept for it
                    transport.write(refusal(status))
                    transport.close()
                    return
            self._await_head()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._release is not None:
                self._release()
            self._send_done()
            self._head_done()
            self._body_done()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._awaiting_head and self._watched():
                # what did not complete a head in this chunk belongs to the head still open
                self._head_bytes += len(data)
                if self._head_bytes > MAX_HEAD_BYTES:
                    self._refuse(431, "Request Header Fields Too Large",
                                 f"a request head of more than {MAX_HEAD_BYTES} bytes")

        def on_headers_complete(self) -> None:
            if self._dropping:
                return
            if len(self.pipeline) >= MAX_PIPELINED:  # closed: what was answered goes out, the queue is dropped
                self._dropping = True
                self._head_done()
                self._body_done()
                self.transport.close()
                return
            self._head_done()
            before = self.cycle
            super().on_headers_complete()
            if self.cycle is not before:  # a request (not an upgrade): its body, if any, must come in time
                self._body_done()
                self._body_timer = self.loop.call_later(BODY_TIMEOUT_S, self._body_timeout)

        def pause_writing(self) -> None:
            super().pause_writing()
            if self._send_timer is None:
                self._send_left = self.transport.get_write_buffer_size()
                self._send_timer = self.loop.call_later(SEND_STALL_S, self._send_check)

        def resume_writing(self) -> None:
            self._send_done()
            super().resume_writing()

        def _send_done(self) -> None:
            if self._send_timer is not None:
                self._send_timer.cancel()
                self._send_timer = None

        def _send_check(self) -> None:
            """While writing is paused: close a connection whose client reads (next to) nothing."""
            self._send_timer = None
            if self.transport.get_protocol() is not self:
                return  # a WebSocket now; a closing transport is still watched: close() waits for the buffer
            left = self.transport.get_write_buffer_size()
            if self._send_left - left < SEND_MIN_BYTES_S * SEND_STALL_S:
                self.transport.abort()  # close() would wait for the buffer to drain: it does not
                return
            self._send_left = left
            self._send_timer = self.loop.call_later(SEND_STALL_S, self._send_check)

        def on_body(self, body: bytes) -> None:
            if not self._dropping:  # a dropped request's body must not reach the request before it
                super().on_body(body)

        def handle_websocket_upgrade(self) -> None:
            if self._dropping:
                return
            super().handle_websocket_upgrade()
            release, ws = self._release, self.transport.get_protocol()
            if release is not None and ws is not self:  # the WebSocket protocol now hears of the connection's end
                lost = ws.connection_lost

                def connection_lost(exc: Exception | None) -> None:
                    release()
                    lost(exc)

                ws.connection_lost = connection_lost  # type: ignore[method-assign]

        def on_message_complete(self) -> None:
            if self._dropping:
                return
            self._body_done()
            super().on_message_complete()

        def _body_done(self) -> None:
            if self._body_timer is not None:
                self._body_timer.cancel()
                self._body_timer = None

        def _body_timeout(self) -> None:
            self._body_timer = None
            if not self._watched() or self.cycle is None or not self.cycle.more_body:
                return
            if self.cycle.response_started:
                self.transport.close()
            else:
                self._refuse(408, "Request Timeout", f"the request body did not come within {BODY_TIMEOUT_S:g} s")

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if self.pipeline and not self.transport.is_closing():
                self.flow.pause_reading()  # uvicorn resumes reading after each answer, however many wait
            if not self.transport.is_closing():
                self._await_head()  # the next request's head (uvicorn's keep-alive timeout watches idleness)

        def _await_head(self) -> None:
            self._head_done()
            self._awaiting_head, self._head_bytes = True, 0
            self._head_timer = self.loop.call_later(HEAD_TIMEOUT_S, self._head_timeout)

        def _head_done(self) -> None:
            self._awaiting_head = False
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _watched(self) -> bool:
            """Still an HTTP connection of ours (not closing, not handed to a WebSocket protocol)."""
            return not self.transport.is_closing() and self.transport.get_protocol() is self

        def _head_timeout(self) -> None:
            self._head_timer = None
            if not self._awaiting_head or not self._watched():
                return
            if self.cycle is not None and not self.cycle.response_complete:
                return  # a request is still being answered: its pipelined successor waits for it
            self._refuse(408, "Request Timeout", f"no complete request head within {HEAD_TIMEOUT_S:g} s")

        def _refuse(self, status: int, phrase: str, detail: str) -> None:
            self._head_done()
            body = detail.encode()
            self.transport.write(b"HTTP/1.1 %d %s\r\ncontent-type: text/plain; charset=utf-8\r\n"
                                 b"content-length: %d\r\nconnection: close\r\n\r\n%s"
                                 % (status, phrase.encode(), len(body), body))
            self.transport.close()

    return GuardedHttpToolsProtocol
