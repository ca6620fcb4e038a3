"""Running the app on uvicorn, with a graceful drain before uvicorn's own shutdown.

On SIGTERM or SIGINT uvicorn stops its main loop and calls `shutdown`. Before
it closes connections, tokenwire:

1. stops listening, so no new connections arrive (a load balancer moves on);
2. drains: refuses new replies (SERVER_SHUTDOWN), lets running ones finish
   for up to SHUTDOWN_GRACE_S, then saves each unfinished one as
   `interrupted` with the content so far and tells its client;
3. disconnects every Socket.IO client, so they reconnect elsewhere;

and only then lets uvicorn close what is left and run the lifespan shutdown.

Every step after the grace period that waits on a peer (a client, the
database, Redis, the upstream) waits a bounded time, whatever the peer does:
a polling session nobody polls, a WebSocket whose client stopped reading, a
half-sent request. `SHUTDOWN_BOUND_S` is the sum of those bounds, so the
process exits within SHUTDOWN_GRACE_S + SHUTDOWN_BOUND_S. Should something
still hang past that (a bug, or a library that ignores cancellation), a
watchdog thread logs where each thread is and ends the process.
"""

from __future__ import annotations

import faulthandler
import gc
import logging
import os
import signal
import socket
import struct
import sys
import threading
from types import FrameType
from typing import Any

import uvicorn
from websockets.exceptions import InvalidState
from websockets.http11 import Request
from websockets.protocol import State

from tokenwire import compat
from tokenwire.app import DISCONNECT_CLIENTS_S, TokenwireApp
from tokenwire.chat.service import INTERRUPT_SAVE_S
from tokenwire.closing import CLOSE_RESOURCE_S
from tokenwire.config import Settings
from tokenwire.wire.engine import LeanEvent, LeanQueue

compat.verify("uvicorn")
compat.verify("websockets")
# After the check, so a uvicorn without it (< 0.35) stops with the check's line.
from uvicorn.protocols.websockets.websockets_sansio_impl import (  # noqa: E402
    WebSocketsSansIOProtocol,
)

__all__ = [
    "GC_THRESHOLDS",
    "SHUTDOWN_BOUND_S",
    "GracefulServer",
    "LeanWebSocketProtocol",
    "uvicorn_config",
]

log = logging.getLogger(__name__)

# The cyclic garbage collector's thresholds while serving (CPython's are
# 700, 10, 10). Streaming makes almost no cyclic garbage (a full collection
# finds 0-500 objects), but each reply leaves objects that live for seconds
# (its task, generators, HTTP response, writer), so with the defaults they
# are promoted to the oldest generation fast enough to trigger a full
# collection every ~3 s at 1,000 streams. A full collection walks every live
# object (~200,000 there) and stops the event loop for ~100 ms: every reply
# misses a beat. Measured with bench B3 at 1,000 streams of 50 tok/s
# (`--b3-levels 1000`, 2x): p99 gap between chunks 154/179 ms with the
# defaults, 77/70 ms with these; the collector's CPU 0.77/0.74 s -> 0.14/0.14
# s per run. Young collections then run ~7x less often and pause <= ~20 ms,
# and a full one comes after 100 middle ones (minutes at that load) instead
# of 10. Cyclic garbage waits longer for collection; at these rates it is a
# few MB at most.
GC_THRESHOLDS = (5000, 10, 100)

# After the drain, how long uvicorn waits for HTTP requests and WebSockets
# still open (a long poll just answered, a request whose body never came)
# before it cancels their tasks.
CONNECTIONS_CLOSE_S = 2.0

# How long shutdown may take beyond SHUTDOWN_GRACE_S: saving interrupted
# replies, disconnecting clients, uvicorn's connections, and closing the
# lifespan's resources (the node's lease, database, HTTP client, two Redis
# clients), each bounded. 11.5 s; the README states it.
SHUTDOWN_BOUND_S = (
    INTERRUPT_SAVE_S + DISCONNECT_CLIENTS_S + CONNECTIONS_CLOSE_S + 5 * CLOSE_RESOURCE_S + 0.5
)

# The watchdog's allowance past SHUTDOWN_GRACE_S + SHUTDOWN_BOUND_S.
_WATCHDOG_SLACK_S = 5.0


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: TokenwireApp) -> None:
        super().__init__(config)
        self.tokenwire = app
        self._watchdog: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:  # noqa: ARG002 - uvicorn's signature
        # uvicorn records the signal and re-raises it after shutdown, so the
        # process would die "by signal 15". A drained shutdown is a clean
        # exit: status 0. A second Ctrl-C still forces the exit.
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True
            self._start_watchdog()

    def _start_watchdog(self) -> None:
        if self._watchdog is not None:
            return
        limit = self.tokenwire.settings.shutdown_grace_s + SHUTDOWN_BOUND_S + _WATCHDOG_SLACK_S
        # A thread, not a loop timer: it must fire even if the event loop is stuck.
        self._watchdog = threading.Timer(limit, _force_exit, args=(limit,))
        self._watchdog.daemon = True
        self._watchdog.start()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        # What start-up imported and built lives as long as the process (~150,000
        # objects). Frozen, the collector stops walking it in every full
        # collection, which with thousands of connections open already walks
        # ~70 objects per connection (B4 scale: a pause of ~0.3 s at 5,000).
        gc.collect()
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        await self.tokenwire.drain()
        self._abort_stalled_connections()
        await super().shutdown(sockets)

    def _abort_stalled_connections(self) -> None:
        """Drop the connections that cannot finish; uvicorn closes the rest gracefully.

        Two kinds, both waiting on a client that has stopped:

        - a transport holding unsent bytes: that happens only while the
          kernel's send buffer to the client is full, and after the drain
          gave every client DISCONNECT_CLIENTS_S to take its CLOSE, such a
          client has stopped reading (or its network is gone);
        - an HTTP request whose body has not all arrived (a polling POST cut
          off half-way): its engine.io session is closed by now.

        Closing them gracefully would wait for a flush or a body that never
        comes, until uvicorn cancels their handlers and engine.io logs each
        cancellation as a traceback. Aborted, their handlers see a disconnect
        and end as for any client that left.
        """
        for connection in list(self.server_state.connections):
            transport = getattr(connection, "transport", None)
            if transport is None:
                continue
            cycle = getattr(connection, "cycle", None)  # uvicorn's HTTP request in progress
            body_pending = (
                cycle is not None
                and not getattr(cycle, "response_complete", True)
                and getattr(cycle, "more_body", False)
            )
            if body_pending or transport.get_write_buffer_size() > 0:
                transport.abort()


def _force_exit(limit: float) -> None:
    """The watchdog: shutdown outlived every bound. Say where it is stuck, then end the process."""
    log.critical("shutdown still running after %.0f s; forcing exit (status 1)", limit)
    faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
    logging.shutdown()
    os._exit(1)


class LeanWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's `websockets-sansio` WebSocket protocol, holding less per open connection.

    An idle connection costs what its objects keep between heartbeats (bench
    B4: 41.0 -> 31.1 KiB per idle connection with this class alone). Unlike
    uvicorn's class this one keeps:

    - its receive queue and its "writable" flag as `LeanQueue` / `LeanEvent`
      (~4 KiB less: `asyncio.Queue` and `asyncio.Event` allocate deques up front);
    - no handshake once it is done: uvicorn keeps the 101 response, and the
      `websockets` parser keeps the request (a generator frame holds it for
      the connection's life). The headers live on in the ASGI scope, which is
      what the app reads (~4 KiB less with socket.io-client's headers, more
      with a browser's);
    - its attributes in slots rather than an instance dict: uvicorn sets more
      than the 30 a shared-key dict holds, so each instance had a full dict
      of its own (~1.2 KiB less). An attribute a later uvicorn adds still
      works; it goes to the instance dict.
    """

    __slots__ = (
        "app",
        "app_state",
        "asgi_version",
        "client",
        "close_sent",
        "close_timeout",
        "close_timer",
        "config",
        "conn",
        "connections",
        "curr_msg_data_type",
        "default_headers",
        "disconnected",
        "frames",
        "handshake_complete",
        "handshake_initiated",
        "initial_response",
        "last_ping_rtt",
        "logger",
        "loop",
        "pending_ping_payload",
        "ping_interval",
        "ping_sent_at",
        "ping_timeout",
        "ping_timer",
        "pong_timer",
        "queue",
        "read_paused",
        "request",
        "response",
        "root_path",
        "scheme",
        "scope",
        "server",
        "tasks",
        "transport",
        "writable",
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = LeanQueue()  # type: ignore[assignment]
        self.writable = LeanEvent()  # type: ignore[assignment]
        self.writable.set()

    def handle_connect(self, event: Request) -> None:
        super().handle_connect(event)
        if self.handshake_complete:
            return  # refused: uvicorn answered and closes
        # Copied into the scope (bytes) by now; nothing reads them again.
        event.headers.clear()

    async def send(self, message: Any) -> None:
        await super().send(message)
        if message["type"] == "websocket.accept" and self.handshake_complete:
            self.request = self.response = None  # type: ignore[assignment]

    def send_text_nowait(self, text: str) -> bool:
        """`send` of one text message, if it can go without waiting; False if not sent.

        What uvicorn's `send` does for `websocket.send` once the handshake is
        done, without the ASGI message and the coroutine: the Engine.IO
        socket (`wire.engine.LeanSocket`) writes a reply's frames through
        this when nothing is queued ahead of them. It refuses (and the frame
        takes the queue and the writer task instead) whenever `send` would
        have to wait or fail: the transport is over its high-water mark, or
        the connection is closing or closed.
        """
        if (
            not self.writable.is_set()
            or self.disconnected
            or self.close_sent
            or not self.handshake_complete
            or self.initial_response is not None
        ):
            return False
        conn = self.conn
        data = text.encode()
        if conn.extensions or conn.writes or conn.expect_continuation_frame:
            # Compression (WS_COMPRESSION) or something already waiting to
            # go out: websockets frames it, in order.
            try:
                conn.send_text(data)
            except InvalidState:
                return False
            self.transport.write(b"".join(conn.data_to_send()))
            return True
        if conn.state is not State.OPEN:
            return False
        # An unmasked, unfragmented text frame is its length and the data:
        # what `conn.send_text` serializes, without its Frame object and
        # checks (a sixth of a frame's cost at STREAM_FLUSH_MS=0, bench B2).
        self.transport.write(_text_frame_header(len(data)) + data)
        return True


def _text_frame_header(length: int) -> bytes:
    """RFC 6455 5.2: FIN and opcode 1, then the payload length, unmasked (server to client)."""
    if length < 126:
        return bytes((0x81, length))
    if length < 0x10000:
        return struct.pack("!BBH", 0x81, 126, length)
    return struct.pack("!BBQ", 0x81, 127, length)


def uvicorn_config(app: TokenwireApp, settings: Settings, **overrides: object) -> uvicorn.Config:
    options: dict[str, object] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": "httptools",
        # websockets-sansio, lightened (above). wsproto was measured too: with
        # the same changes it holds as much per connection (B4, within 0.3 KiB).
        # LEAN_ENGINE=false: uvicorn's own, the class LeanWebSocketProtocol extends.
        "ws": LeanWebSocketProtocol if settings.lean_engine else "websockets-sansio",
        "ws_per_message_deflate": settings.ws_compression,
        # Socket.IO runs its own heartbeat (PING_INTERVAL / PING_TIMEOUT).
        "ws_ping_interval": None,
        "ws_ping_timeout": None,
        "log_config": None,
        "access_log": False,
        "lifespan": "on",
        "proxy_headers": True,
        "timeout_graceful_shutdown": CONNECTIONS_CLOSE_S,
        "backlog": 4096,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)  # type: ignore[arg-type]
