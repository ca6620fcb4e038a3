"""python-engineio's server, keeping a third of what it kept per idle client.

An idle Socket.IO client costs the gateway what its connection keeps alive
between heartbeats. python-engineio 4.x keeps about 18 KiB of Python objects
per idle WebSocket (bench B4, measured with tracemalloc):

- an `asyncio.Queue` per socket: four deques and an `Event`, ~3.3 KiB, for a
  queue that is empty nearly all the time;
- four tasks besides the connection's own: a writer waiting for packets, the
  reader's wait wrapped in `asyncio.wait_for` (a second task and a timer,
  re-created for every message), the writer's `wait_for` (a task and a timer,
  re-created for every packet) and a ping task sleeping PING_INTERVAL: ~7 KiB
  with their coroutines, futures and timers;
- a class object per request: engine.io's ASGI `translate_request` defines
  the request-body reader class inside the function, and the connect
  request's environ, which python-socketio keeps for the connection's life,
  holds an instance (~2.8 KiB).

`GatewayEngine` keeps the protocol and its timing, with:

- `LeanQueue`, the part of `asyncio.Queue` engine.io and the gateway use,
  allocated on demand (~70 bytes when empty);
- `LeanSocket`, whose heartbeat, read deadline and long-poll deadline are
  kept by one `SocketClock` for all sockets, whose reader waits without an
  extra task, and whose writer runs only while there is something to send;
- smaller WebSocket environs: no per-request class, interned keys.

Everything else (handshake, upgrade from polling, packets, CLOSE handling,
the service task's ping-timeout sweep) is python-engineio's own code.
"""

from __future__ import annotations

import asyncio
import collections
import heapq
import math
import sys
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Generic, TypeVar
from urllib.parse import parse_qs

import engineio
from engineio import exceptions, packet
from engineio.async_socket import AsyncSocket

from tokenwire import compat

compat.verify("python-engineio")  # before a connection meets a method that changed shape

__all__ = ["GatewayEngine", "LeanEvent", "LeanQueue", "LeanSocket"]

T = TypeVar("T")

# A timer may fire up to half a millisecond early (uvloop keeps time in ms).
_EARLY = 0.001

# Put in a socket's queue to end a long-poll that waits there with a NOOP
# (`LeanSocket.handle_get_request`): its request has been given up.
_SUPERSEDED = object()
_NOOP = packet.Packet(packet.NOOP)

# How long a WebSocket writer waits for the next packet before it exits (see
# `LeanSocket._write`): longer than the gaps within a streaming reply, much
# shorter than PING_INTERVAL.
WRITER_LINGER_S = 1.0


class LeanQueue(Generic[T]):
    """An unbounded FIFO with `asyncio.Queue`'s methods, allocated only while in use.

    `asyncio.Queue()` costs ~3.3 KiB before it holds anything (three deques and
    an `Event` with a fourth). Every open connection has two (engine.io's send
    queue and the ASGI server's receive queue), both almost always empty.
    Here the items deque exists only while items wait, and the lists of
    waiting getters and joiners only while someone waits.

    Same semantics as `asyncio.Queue` for what engine.io, uvicorn and the
    gateway call: `put`/`put_nowait`, `get`/`get_nowait`, `task_done`,
    `join`, `qsize`, `empty` (`maxsize` is accepted and ignored: both callers
    use unbounded queues).

    One addition: `on_item`, a callback for an item that arrives while
    nobody waits for one, so a consumer can start only when there is work.
    """

    __slots__ = ("_getters", "_items", "_joiners", "_unfinished", "on_item")

    def __init__(self, maxsize: int = 0) -> None:  # noqa: ARG002 - asyncio.Queue's signature
        self._items: collections.deque[T] | None = None
        self._getters: list[asyncio.Future[None]] | None = None
        self._joiners: list[asyncio.Future[None]] | None = None
        self._unfinished = 0
        self.on_item: Callable[[], None] | None = None

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return False

    def put_nowait(self, item: T) -> None:
        if self._items is None:
            self._items = collections.deque()
        self._items.append(item)
        self._unfinished += 1
        if not self._wake_getter() and self.on_item is not None:
            self.on_item()

    async def put(self, item: T) -> None:
        self.put_nowait(item)

    def put_back(self, items: list[T]) -> None:
        """Items taken with `get_nowait` (and marked done), returned to the front in order."""
        if not items:
            return
        if self._items is None:
            self._items = collections.deque()
        self._items.extendleft(reversed(items))
        self._unfinished += len(items)
        self._wake_getter()

    def get_nowait(self) -> T:
        items = self._items
        if not items:
            raise asyncio.QueueEmpty
        item = items.popleft()
        if not items:
            self._items = None
        return item

    async def get(self) -> T:
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                self._forget_getter(getter)
                if self._items and not getter.cancelled():
                    # Woken for an item, then cancelled: hand the wake-up on.
                    self._wake_getter()
                raise
            self._forget_getter(getter)
        return self.get_nowait()

    def task_done(self) -> None:
        if self._unfinished <= 0:
            raise ValueError("task_done() called too many times")
        self._unfinished -= 1
        if self._unfinished == 0 and self._joiners is not None:
            for joiner in self._joiners:
                if not joiner.done():
                    joiner.set_result(None)
            self._joiners = None

    async def join(self) -> None:
        if self._unfinished:
            joiner = asyncio.get_running_loop().create_future()
            if self._joiners is None:
                self._joiners = []
            self._joiners.append(joiner)
            await joiner

    def _wake_getter(self) -> bool:
        woke = False
        while self._getters:
            getter = self._getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                woke = True
                break
        if not self._getters:
            self._getters = None
        return woke

    def _forget_getter(self, getter: asyncio.Future[None]) -> None:
        if self._getters is not None:
            if getter in self._getters:
                self._getters.remove(getter)
            if not self._getters:
                self._getters = None


class LeanEvent:
    """`asyncio.Event` without the deque it allocates up front (856 bytes -> ~50)."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
        return True


class _NoBody:
    """The request body of a WebSocket handshake: there is none."""

    __slots__ = ()

    async def read(self, length: int | None = None) -> bytes:  # noqa: ARG002 - engine.io's reader signature
        return b""


_NO_BODY = _NoBody()


class AsgiWebSocket:
    """The transport `LeanSocket` runs engine.io's WebSocket protocol over.

    The interface of engine.io's own ASGI wrapper (`wait`, `send`, `close`),
    without its per-connection `__call__` coroutine and instance dict.
    """

    __slots__ = ("_receive", "_send", "send_nowait")

    def __init__(self, environ: MutableMapping[str, Any]) -> None:
        self._receive: Callable[[], Awaitable[MutableMapping[str, Any]]] = environ["asgi.receive"]
        self._send: Callable[[MutableMapping[str, Any]], Awaitable[None]] = environ["asgi.send"]
        # Our uvicorn protocol (`server.LeanWebSocketProtocol`) can take a text
        # message synchronously when it need not wait; under another server,
        # or a middleware wrapping `send`, every message takes `send`.
        protocol = getattr(self._send, "__self__", None)
        self.send_nowait: Callable[[str], bool] | None = getattr(protocol, "send_text_nowait", None)

    async def accept(self) -> None:
        await self._send({"type": "websocket.accept"})

    async def send(self, message: str | bytes) -> None:
        if isinstance(message, bytes):
            await self._send({"type": "websocket.send", "bytes": message, "text": None})
        else:
            await self._send({"type": "websocket.send", "bytes": None, "text": message})

    async def close(self) -> None:
        try:
            await self._send({"type": "websocket.close"})
        except Exception:  # already closed: nothing to do
            pass

    async def wait(self) -> str | bytes:
        """The next message; OSError when the connection is gone."""
        event = await self._receive()
        if event["type"] != "websocket.receive":
            raise OSError()
        if event.get("bytes") is not None:
            return event["bytes"]  # type: ignore[no-any-return]
        if event.get("text") is not None:
            return event["text"]  # type: ignore[no-any-return]
        raise OSError()


class _Deadline:
    """A wait the clock ends (its `asyncio.timeout` expires) once loop time `when` has passed."""

    __slots__ = ("timeout", "when")

    def __init__(self, timeout: asyncio.Timeout, when: float) -> None:
        self.timeout = timeout
        self.when = when


class SocketClock:
    """One loop timer for every socket's heartbeat and deadlines, to within `resolution`.

    A socket asks to be woken at a loop time (`wake_at`); the clock files it
    in the bucket of that time rounded up to `resolution` and calls its
    `_on_timer()` when the bucket is due. That costs a socket one set entry
    instead of a loop timer of its own (uvloop's `TimerHandle`, its libuv
    timer, a context copy and a bound method: ~0.55 KiB). Pings and deadlines
    are late by at most `resolution`, which the client's PING_TIMEOUT absorbs.

    Wake-ups are lazy: asking for a later time than the one a socket is filed
    under keeps the earlier one, and the socket re-files itself when woken.
    """

    def __init__(self, resolution: float) -> None:
        self.resolution = resolution
        self._buckets: dict[int, set[LeanSocket]] = {}
        self._ticks: list[int] = []  # a heap of the buckets' ticks
        self._timer: asyncio.TimerHandle | None = None
        self._timer_tick: int | None = None
        self._firing = False

    def wake_at(self, socket: LeanSocket, when: float) -> None:
        tick = math.ceil(when / self.resolution)
        if socket._tick is not None:
            if socket._tick <= tick:
                return
            self._unfile(socket)
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = set()
            heapq.heappush(self._ticks, tick)
        bucket.add(socket)
        socket._tick = tick
        if not self._firing and (self._timer_tick is None or tick < self._timer_tick):
            self._arm(tick)

    def cancel(self, socket: LeanSocket) -> None:
        if socket._tick is not None:
            self._unfile(socket)

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets.values())

    def _unfile(self, socket: LeanSocket) -> None:
        tick = socket._tick
        socket._tick = None
        bucket = self._buckets.get(tick) if tick is not None else None
        if bucket is not None:
            bucket.discard(socket)
            if not bucket:
                del self._buckets[tick]  # type: ignore[arg-type]

    def _arm(self, tick: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        self._timer = loop.call_at(tick * self.resolution, self._fire)
        self._timer_tick = tick

    def _fire(self) -> None:
        self._timer = None
        self._timer_tick = None
        now = math.floor((asyncio.get_running_loop().time() + _EARLY) / self.resolution)
        self._firing = True
        try:
            while self._ticks and self._ticks[0] <= now:
                for socket in self._buckets.pop(heapq.heappop(self._ticks), ()):
                    socket._tick = None
                    try:
                        socket._on_timer()  # may file it again, always in a later bucket
                    except Exception:  # one socket's failure must not stall the others
                        socket.server.logger.exception("%s: heartbeat failed", socket.sid)
        finally:
            self._firing = False
            while self._ticks and self._ticks[0] not in self._buckets:
                heapq.heappop(self._ticks)  # buckets emptied by cancel()
            if self._ticks:
                self._arm(self._ticks[0])


class LeanSocket(AsyncSocket):  # type: ignore[misc]
    """engine.io's `AsyncSocket`, timed by the server's `SocketClock` instead of its own tasks.

    One clock entry per socket (re-filed lazily, see `_rearm`) serves:

    - the heartbeat: PING_INTERVAL after each PONG (and after the handshake),
      a PING is queued; engine.io slept in a task per socket for this;
    - the read deadline: a WebSocket that sends nothing for PING_INTERVAL +
      PING_TIMEOUT is closed, as engine.io's `wait_for` around every read did;
    - the long-poll deadline: a poll that has had nothing to send for
      PING_INTERVAL + PING_TIMEOUT ends, as before;
    - the WebSocket writer's: it stops after WRITER_LINGER_S without packets
      (`_write`), and a WebSocket with nothing sent for PING_INTERVAL +
      PING_TIMEOUT is closed, as engine.io's writer did (`_quiet_at`).

    A deadline is an `asyncio.timeout(None)` around the wait, registered in
    `_deadlines` with its loop time (`_Deadline`); the clock expires it when
    due (the wait then raises TimeoutError, as `wait_for` did). Receiving a message or
    sending a packet only moves a number: no task or timer is created for it,
    and the reader and the writer await the queues without the extra task
    `wait_for` wrapped around each wait.
    """

    # engine.io's own state this class sets (engine.io has no annotations).
    last_ping: float | None
    connected: bool
    upgrading: bool
    upgraded: bool

    # Class-level defaults: python-engineio creates the socket as an
    # `AsyncSocket` and `GatewayEngine` switches its class afterwards.
    _tick: int | None = None  # the `SocketClock` bucket it is filed in
    _ping_at: float | None = None
    _deadlines: list[_Deadline] | None = None
    _ws: AsgiWebSocket | None = None  # the open WebSocket writers send on
    _writer: asyncio.Future[None] | None = None
    _writing = False  # the writer holds packets it took from the queue and has not sent yet
    _quiet_at: float | None = None  # when an idle WebSocket is closed, as engine.io's writer did
    _sent_at = -math.inf  # loop time of the last packet `send` wrote itself (see `send`)
    _polls = 0  # long-polls waiting for packets now
    _answered_t: str | None = None  # the `t` of the last long-poll answered with packets
    _answered: list[Any] | None = None  # and those packets, in case it comes again
    _poll_ended: asyncio.Future[None] | None = None  # a superseded poll resolves it as it ends

    # --- the clock

    def _rearm(self) -> None:
        """Be woken for the earliest pending ping or deadline (or not at all if none)."""
        due = min(
            self._ping_at if self._ping_at is not None else math.inf,
            self._quiet_at if self._quiet_at is not None else math.inf,
            *(deadline.when for deadline in self._deadlines or ()),
        )
        if due < math.inf:
            self.server.clock.wake_at(self, due)
        else:
            self.server.clock.cancel(self)

    def _on_timer(self) -> None:
        now = asyncio.get_running_loop().time() + _EARLY
        if self._ping_at is not None and self._ping_at <= now:
            self._ping_at = None
            self._ping()
        if self._quiet_at is not None and self._quiet_at <= now:
            # Packets `send` wrote itself since the writer left count as traffic.
            quiet_at = self._sent_at + self._idle_limit()
            if quiet_at > now:
                self._quiet_at = quiet_at
            else:
                self._quiet_at = None
                self._close_quiet_websocket()
        for deadline in list(self._deadlines or ()):
            if deadline.when <= now:
                self._forget(deadline)
                deadline.timeout.reschedule(-math.inf)  # expires it: the wait raises TimeoutError
        self._rearm()

    def _deadline(self, timeout: asyncio.Timeout, when: float) -> _Deadline:
        """Have the clock expire `timeout` (entered, with no time of its own) at `when`."""
        deadline = _Deadline(timeout, when)
        if self._deadlines is None:
            self._deadlines = []
        self._deadlines.append(deadline)
        self.server.clock.wake_at(self, when)
        return deadline

    def _extend(self, deadline: _Deadline, when: float) -> None:
        deadline.when = when
        self.server.clock.wake_at(self, when)  # a no-op while filed for earlier

    def _forget(self, deadline: _Deadline) -> None:
        if self._deadlines is not None and deadline in self._deadlines:
            self._deadlines.remove(deadline)
            if not self._deadlines:
                self._deadlines = None

    def _idle_limit(self) -> float:
        return float(self.server.ping_interval + self.server.ping_timeout)

    # --- heartbeat (engine.io's schedule_ping / _send_ping)

    def schedule_ping(self) -> None:
        # As engine.io: only if the previous ping's cycle has completed.
        if self.last_ping:
            self.last_ping = None
            self._ping_at = asyncio.get_running_loop().time() + self.server.ping_interval
            self._rearm()

    def _ping(self) -> None:
        if self.closing or self.closed:
            return
        self.last_ping = time.time()
        # engine.io's send() first checks the ping timeout, which the
        # last_ping just set always passes; the queue is unbounded.
        self.queue.put_nowait(packet.Packet(packet.PING))

    async def close(self, wait: bool = True, abort: bool = False, reason: Any = None) -> None:
        try:
            await super().close(wait=wait, abort=abort, reason=reason)
        finally:  # also when a wait for the CLOSE to go out is cancelled (`disconnect_all`)
            if self.closed:
                # A closed socket sends no more pings: the clock lets go of it as
                # soon as no reader or poll waits on a deadline.
                self._ping_at = None
                self._rearm()

    # --- sending (engine.io's send, with a way around the writer task)

    async def send(self, pkt: Any) -> None:
        """engine.io's `send`; on an open WebSocket with nothing queued, written at once.

        engine.io queues every packet for the socket's writer task, which
        costs a task wake-up per frame: at bench B2 (200 streaming replies)
        ~4,000 a second, for a write that our WebSocket protocol does without
        waiting anyway. When the WebSocket can take the frame now
        (`AsgiWebSocket.send_nowait`: not over its high-water mark, not
        closing), the queue is empty and the writer is not holding packets
        it took from it, the frame is written here, in order. Otherwise it is
        queued as engine.io does, so a client that stops reading still
        shows as a growing queue (`backlog`) and still gets cut off.
        """
        if not await self.check_ping_timeout():
            return
        # A text frame only; the writer sends the others.
        if not pkt.binary and self._write_now(pkt.encode()):
            return
        await self.queue.put(pkt)

    def can_send_now(self) -> bool:
        """Whether `send_text_now` may be used: `send` would not close the socket first.

        `send` awaits only to close a socket whose client missed the ping
        timeout, or to refuse a closed one; both take `send`.
        """
        last_ping = self.last_ping
        return not self.closed and not (
            last_ping and time.time() - last_ping > self.server.ping_timeout
        )

    def send_text_now(self, text: str) -> None:
        """`send` of a MESSAGE packet (`text`, a Socket.IO packet), without a coroutine.

        Only when `can_send_now()`. The frame is written now, as `send`
        would write it, or queued for the writer behind what waits, as `send`
        would queue it. A reply's chunks take this way
        (`AiNamespace._sink`): per frame it saves the Packet object and four
        coroutines (bench B2 at STREAM_FLUSH_MS=0, a frame per token).
        """
        if not self._write_now("4" + text):  # engine.io's MESSAGE packet, encoded
            self.queue.put_nowait(packet.Packet(packet.MESSAGE, text))

    def _write_now(self, encoded: str) -> bool:
        """Write an encoded text packet to the open WebSocket now, if nothing must go first.

        Nothing queued, nothing the writer took and has not sent, no upgrade
        under way, and the WebSocket can take it without waiting
        (`AsgiWebSocket.send_nowait`). False: it was not written.
        """
        ws = self._ws
        if (
            ws is not None
            and ws.send_nowait is not None
            and not self._writing
            and not self.upgrading
            and self.queue.empty()
            and ws.send_nowait(encoded)
        ):
            self._sent_at = self.server.loop_time()
            return True
        return False

    # --- long-poll and WebSocket writer (engine.io's poll, timed by the clock)

    async def handle_get_request(self, environ: MutableMapping[str, Any]) -> Any:
        """engine.io's, plus: a long-poll sent again is answered again.

        An HTTP client sends an idempotent request again when its reused
        connection closes before any response (RFC 9112 9.3.1.1: aiohttp,
        so python-engineio's client, and browsers do). For a long-poll that
        means its response was lost, and engine.io counted its packets
        delivered once written: they were gone, the session went on, and
        nothing told the client to recover (tests/test_soak_follow.py found
        a chunk missing mid-reply). The retry has the same URL, `t` included,
        which engine.io-client and python-engineio make unique per request:

        - the poll was answered already: the same packets go again;
        - it still waits (the cut came first): it ends with a NOOP to the
          closed connection, and this one takes its place, so no packet is
          written where nobody reads.

        Without `t` (`timestampRequests: false`) nothing changes.
        docs/upstream-bugs.md #7 has stock python-engineio's behaviour.
        """
        if environ.get("HTTP_UPGRADE"):
            self._answered_t = self._answered = None  # polling is over
            return await super().handle_get_request(environ)
        t = parse_qs(environ.get("QUERY_STRING", "")).get("t", [None])[0]
        if t is not None and t == self._answered_t and self._answered is not None:
            self.server.logger.info("%s: long-poll %s came again; answered again", self.sid, t)
            return self._answered
        if self._polls:
            ended = self._poll_ended = asyncio.get_running_loop().create_future()
            self.queue.put_nowait(_SUPERSEDED)  # wakes the waiting poll, which ends
            await ended
        packets = await super().handle_get_request(environ)
        if t is not None and isinstance(packets, list) and packets and packets[0] is not _NOOP:
            self._answered_t, self._answered = t, packets
        return packets

    async def poll(self) -> list[Any]:
        """Wait for packets to send to the client (a NOOP if another poll took its place)."""
        self._polls += 1
        try:
            return await self._take(self._idle_limit())
        finally:
            self._polls -= 1
            ended, self._poll_ended = self._poll_ended, None
            if ended is not None and not ended.done():
                ended.set_result(None)

    async def _take(self, limit: float) -> list[Any]:
        """engine.io's poll, waiting at most `limit` seconds (QueueEmpty after that)."""
        try:
            async with asyncio.timeout(None) as timeout:
                deadline = self._deadline(timeout, asyncio.get_running_loop().time() + limit)
                try:
                    packets = [await self.queue.get()]
                finally:
                    self._forget(deadline)
            self.queue.task_done()
        except (TimeoutError, asyncio.CancelledError):
            raise exceptions.QueueEmpty() from None
        if packets == [None]:
            return []
        if packets[0] is _SUPERSEDED:
            return [_NOOP]
        while True:
            try:
                pkt = self.queue.get_nowait()
                self.queue.task_done()
                if pkt is _SUPERSEDED:
                    # Woken for packets, then given up before it ran: they
                    # are the next poll's, in their order.
                    self.queue.put_back(packets)
                    return [_NOOP]
                if pkt is None:
                    self.queue.put_nowait(None)
                    break
                packets.append(pkt)
            except asyncio.QueueEmpty:
                break
        return packets

    # --- WebSocket transport (engine.io's _upgrade_websocket / _websocket_handler)

    async def _upgrade_websocket(self, environ: MutableMapping[str, Any]) -> str:
        if self.upgraded:
            raise OSError("Socket has been upgraded already")
        ws = AsgiWebSocket(environ)
        await ws.accept()
        await self._websocket_handler(ws)
        return ""  # the response was the WebSocket itself

    async def _websocket_handler(self, ws: AsgiWebSocket) -> None:
        if self.connected:
            # Upgrade from long-polling: engine.io's probe exchange, unchanged.
            if not await self._upgrade_probe(ws):
                return
        else:
            self.connected = True
            self.upgraded = True
        self._ws = ws
        self.queue.on_item = self._start_writer
        if not self.queue.empty():
            self._start_writer()
        self.server.logger.info("%s: Upgrade to websocket successful", self.sid)
        await self._read(ws)
        await self.queue.put(None)  # the writer closes the WebSocket and exits
        if self._writer is not None:
            await self._writer
        self._ws = self.queue.on_item = None
        self._quiet_at = None
        await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)

    async def _read(self, ws: AsgiWebSocket) -> None:
        """Receive packets until the client closes, errs or stays silent past the deadline.

        As engine.io's loop, a timeout, a closed connection or a cancellation
        ends it, and so does a frame too large or not an engine.io packet
        (engine.io let that one escape the handler, which left the session
        open until the ping timeout noticed; here it closes at once).
        """
        loop = asyncio.get_running_loop()
        limit = self._idle_limit()
        try:
            async with asyncio.timeout(None) as timeout:
                deadline = self._deadline(timeout, loop.time() + limit)
                try:
                    while True:
                        data = await ws.wait()
                        deadline.when = math.inf  # it covers waiting, not handling
                        if len(data) > self.server.max_http_buffer_size:
                            return  # engine.io: 'packet is too large'
                        if not await self._receive(packet.Packet(encoded_packet=data)):
                            return
                        self._extend(deadline, loop.time() + limit)
                finally:
                    self._forget(deadline)
        except BaseException:
            return

    async def _receive(self, pkt: Any) -> bool:
        """One packet from the client; False when the socket is closed."""
        try:
            await self.receive(pkt)
        except exceptions.UnknownPacketError:
            pass
        except exceptions.SocketIsClosedError:
            self.server.logger.info("Receive error -- socket is closed")
            return False
        except Exception:
            self.server.logger.exception("Unknown receive error")
        return True

    def _start_writer(self) -> None:
        """A packet is queued and no writer waits: start one (while the WebSocket is open)."""
        if self._writer is None and self._ws is not None:
            self._quiet_at = None
            self._writer = asyncio.ensure_future(self._write(self._ws))

    async def _write(self, ws: AsgiWebSocket) -> None:
        """engine.io's WebSocket writer, which ends after WRITER_LINGER_S with nothing to send.

        engine.io's writer waited for the next packet for as long as the
        connection lived: a task and three coroutine frames per idle client
        (~1.8 KiB). This one exits when the queue has stayed empty for
        WRITER_LINGER_S, and the queue starts a new one with the next packet
        (`_start_writer`), at most one per PING_INTERVAL for an idle client;
        a streaming reply keeps its writer.

        Where engine.io's writer gave up, after PING_INTERVAL + PING_TIMEOUT
        with nothing to send, and closed the WebSocket, `_quiet_at` has the
        clock do the same (`_on_timer`).
        """
        loop = asyncio.get_running_loop()
        try:
            while True:
                try:
                    packets = await self._take(WRITER_LINGER_S)
                except exceptions.QueueEmpty:
                    self._quiet_at = loop.time() - WRITER_LINGER_S + self._idle_limit()
                    self._rearm()
                    return
                if not packets:
                    break  # the connection is closing
                self._writing = True  # `send` must not overtake these
                try:
                    for pkt in packets:
                        await ws.send(pkt.encode())
                except BaseException:  # as engine.io: a failed send ends the writer
                    break
                finally:
                    self._writing = False
            self._ws = None
            await ws.close()
        finally:
            self._writer = None
            if not self.queue.empty():
                self._start_writer()  # a packet that came as the writer gave up

    def _close_quiet_websocket(self) -> None:
        """Nothing sent for PING_INTERVAL + PING_TIMEOUT: engine.io's writer closed the WebSocket."""
        if self._ws is None or self._writer is not None:
            return
        ws, self._ws = self._ws, None
        self._writer = asyncio.ensure_future(ws.close())

    async def _upgrade_probe(self, ws: AsgiWebSocket) -> bool:
        """engine.io's upgrade handshake: PING probe -> PONG probe, then UPGRADE."""
        self.upgrading = True  # hold packet sends during the upgrade
        try:
            pkt = await self._wait_upgrade_packet(ws)
        except OSError:
            return False
        if pkt.packet_type != packet.PING or pkt.data != "probe":
            self.server.logger.info("%s: Failed websocket upgrade, no PING packet", self.sid)
            self.upgrading = False
            return False
        await ws.send(packet.Packet(packet.PONG, data="probe").encode())
        await self.queue.put(packet.Packet(packet.NOOP))  # end the pending poll
        try:
            pkt = await self._wait_upgrade_packet(ws)
        except OSError:
            self.upgrading = False
            return False
        if pkt.packet_type != packet.UPGRADE:
            self.upgraded = False
            self.server.logger.info(
                "%s: Failed websocket upgrade, expected UPGRADE packet, received %s instead.",
                self.sid,
                pkt,
            )
            self.upgrading = False
            return False
        self.upgraded = True
        self.upgrading = False
        return True

    async def _wait_upgrade_packet(self, ws: AsgiWebSocket) -> Any:
        data = await ws.wait()
        if len(data) > self.server.max_http_buffer_size:
            raise ValueError("packet is too large")
        return packet.Packet(encoded_packet=data)


async def _translate_request(
    translate: Callable[..., Awaitable[MutableMapping[str, Any]]],
    scope: MutableMapping[str, Any],
    receive: Any,
    send: Any,
) -> MutableMapping[str, Any]:
    environ = await translate(scope, receive, send)
    if scope.get("type") != "websocket":
        return environ
    # A WebSocket's environ lives as long as the connection (python-socketio
    # keeps it for `get_environ`), so it is made smaller:
    # - engine.io's body reader is an instance of a class defined per request
    #   (~2.8 KiB with the class); a WebSocket handshake has no body to read;
    # - engine.io builds each header's key ("HTTP_...") anew per request;
    #   interned, every connection shares the same few dozen strings.
    if "wsgi.input" in environ:
        environ["wsgi.input"] = _NO_BODY
    return {sys.intern(key): value for key, value in environ.items()}


class GatewayEngine(engineio.AsyncServer):  # type: ignore[misc]
    """python-engineio's ASGI server with `LeanQueue`s, `LeanSocket`s and lighter WebSocket environs."""

    _async: dict[str, Any]  # engine.io's table of its async driver's functions
    clock: SocketClock

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        translate = self._async["translate_request"]

        async def translate_request(scope: Any, receive: Any, send: Any) -> Any:
            return await _translate_request(translate, scope, receive, send)

        # A copy: the driver's table is shared by every server in the process.
        self._async = {**self._async, "translate_request": translate_request}
        # 0.1 s, finer only for sub-second ping intervals (tests).
        self.clock = SocketClock(min(0.1, self.ping_interval / 10))

    _loop: asyncio.AbstractEventLoop | None = None

    def loop_time(self) -> float:
        """The running loop's clock; the loop is looked up once, since
        `asyncio.get_running_loop()` costs a getpid() system call (CPython 3.11)."""
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        return loop.time()

    def create_queue(self, *args: Any, **kwargs: Any) -> LeanQueue[Any]:
        return LeanQueue(*args, **kwargs)

    async def _trigger_event(self, event: str, *args: Any, **kwargs: Any) -> Any:
        if event == "connect":
            # python-engineio builds every socket as `AsyncSocket` by name in
            # `_handle_connect`, with no factory to override. Its connect event
            # is the first moment after that and before the socket schedules
            # its first ping or starts a transport; `LeanSocket` only overrides
            # methods and adds class-level defaults, so switching the class of
            # the fresh socket here is safe.
            socket = self.sockets.get(args[0])
            if type(socket) is AsyncSocket:
                socket.__class__ = LeanSocket
        return await super()._trigger_event(event, *args, **kwargs)
