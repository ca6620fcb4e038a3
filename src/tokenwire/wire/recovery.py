"""Socket.IO connection state recovery (protocol v4.6+): a session outlives its connection.

python-socketio does not implement it (its issue #1258 was closed as not
planned); this is the reference server's wire format (socket.io's
`socket.ts` and `in-memory-adapter.ts`, socket.io-client's
`_sendConnectPacket` and `emitEvent`):

- the namespace's CONNECT reply carries a private session id, `pid`, beside
  `sid`;
- every EVENT packet to the client that asks for no acknowledgement carries
  an offset as its last argument, a string; socket.io-client remembers the
  last one it received (handlers see it as one more argument and ignore it);
- a client reconnecting after its connection dropped sends `pid` and
  `offset` with its auth in its CONNECT; if the server still holds that
  session, it answers with the same `sid` and `pid`
  (`socket.recovered === true`), the session's rooms are restored, and every
  event after `offset` is sent again, in order.

Here a `Session` keeps the packets it sent, each with its offset, for as
long as a dead connection can go unnoticed (PING_INTERVAL + PING_TIMEOUT);
once its connection is gone it keeps what would have been sent, for
CONNECTION_RECOVERY_S. Both are capped at CONNECTION_RECOVERY_MAX_BYTES: a
session whose client could no longer be given everything it missed is not
recoverable (it becomes a new connection, as the protocol says).

Better than the reference in two cases its issues report: a client that
received no event yet (no offset) still recovers when nothing was dropped;
and a client that reconnects before the server noticed its old connection
died (the old one is still "attached") takes its session over.

`SessionStore` is what the cluster issue will back with Redis: sessions and
their packets keyed by `pid`, found from any node. `MemorySessionStore` is
the single-node implementation.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

import engineio
import socketio

__all__ = [
    "MemorySessionStore",
    "RecoverableNamespace",
    "RecoveringServer",
    "Session",
    "SessionStore",
    "next_offset",
    "parse_offset",
]

log = logging.getLogger(__name__)

# The offsets this process gives out: one counter for every session, so a
# packet sent to a room carries the same offset to each member (as the
# reference's adapter does) and offsets only grow.
_offsets = itertools.count(1)
_last_offset = 0


def next_offset() -> int:
    global _last_offset
    _last_offset = next(_offsets)
    return _last_offset


def parse_offset(value: object) -> int | None:
    """A client's `offset`: the decimal string we sent; None when missing or malformed."""
    if isinstance(value, str) and 0 < len(value) <= 20 and value.isdigit():
        return int(value)
    return None


class Session:
    """One Socket.IO session that may outlive its connection."""

    __slots__ = (
        "_expiry",
        "away_after",
        "dropped",
        "eio_sid",
        "namespace",
        "packets",
        "pid",
        "rooms",
        "sid",
        "size",
        "user_id",
    )

    def __init__(self, pid: str, sid: str, namespace: str, eio_sid: str, user_id: str | None):
        self.pid = pid
        self.sid = sid
        self.namespace = namespace
        self.eio_sid: str | None = eio_sid  # None while the connection is gone
        self.user_id = user_id
        self.rooms: list[str] = []  # while away: the rooms to restore
        # (loop time, offset, packet text), oldest first; made on first use.
        self.packets: deque[tuple[float, int, str]] | None = None
        self.size = 0  # characters held in `packets`
        self.dropped = 0  # the highest offset let go of (0: none)
        self.away_after = 0  # while away: the last offset given out when the connection went
        self._expiry: asyncio.TimerHandle | None = None

    @property
    def away(self) -> bool:
        return self.eio_sid is None

    def missed_since(self, offset: int | None) -> list[str] | None:
        """The packets after `offset` in order, or None if one of them was let go of."""
        after = offset or 0
        if self.dropped > after:
            return None
        return [text for _, o, text in self.packets or () if o > after]


class SessionStore(Protocol):
    """Where sessions live; the cluster issue implements this on Redis."""

    def open(self, sid: str, namespace: str, eio_sid: str, user_id: str | None) -> Session: ...
    def find(self, pid: str) -> Session | None: ...
    def for_sid(self, sid: str) -> Session | None: ...
    def record(self, session: Session, offset: int, text: str) -> None: ...
    def away(self, session: Session, rooms: list[str]) -> None: ...
    def attach(self, session: Session, eio_sid: str) -> None: ...
    def close(self, session: Session) -> None: ...
    def away_in(self, namespace: str, room: str) -> list[Session]: ...


class MemorySessionStore:
    """Sessions of this process, with their packets bounded in time and size."""

    def __init__(
        self,
        *,
        window_s: float,
        retain_s: float,
        max_chars: int,
        on_expire: Callable[[Session], Awaitable[None]],
    ) -> None:
        self.window_s = window_s  # how long a session waits for its client
        self.retain_s = retain_s  # how long sent packets are kept while connected
        self.max_chars = max_chars
        self._on_expire = on_expire
        self._by_pid: dict[str, Session] = {}
        self._by_sid: dict[str, Session] = {}
        self._expiring: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._by_pid)

    def open(self, sid: str, namespace: str, eio_sid: str, user_id: str | None) -> Session:
        session = Session(secrets.token_urlsafe(16), sid, namespace, eio_sid, user_id)
        self._by_pid[session.pid] = session
        self._by_sid[sid] = session
        return session

    def find(self, pid: str) -> Session | None:
        return self._by_pid.get(pid) if isinstance(pid, str) else None

    def for_sid(self, sid: str) -> Session | None:
        return self._by_sid.get(sid)

    def record(self, session: Session, offset: int, text: str) -> None:
        # The process clock, not the loop's: `asyncio.get_running_loop()`
        # costs a getpid() system call per packet (CPython 3.11 checks for a
        # fork), and these times are only compared with each other.
        now = time.monotonic()
        packets = session.packets
        if packets is None:
            packets = session.packets = deque()
        packets.append((now, offset, text))
        session.size += len(text)
        # While connected, a packet older than retain_s has reached a live
        # client (or its connection would have been found dead by now).
        oldest = now - self.retain_s if not session.away else -1.0
        while packets and (session.size > self.max_chars or packets[0][0] < oldest):
            _, session.dropped, old = packets.popleft()
            session.size -= len(old)
        if not packets:
            session.packets = None
        if session.away and session.dropped > session.away_after:
            # A packet its client never got is gone: not recoverable any more.
            self._expire_now(session)

    def away(self, session: Session, rooms: list[str]) -> None:
        session.eio_sid = None
        session.rooms = rooms
        session.away_after = _last_offset
        loop = asyncio.get_running_loop()
        session._expiry = loop.call_later(self.window_s, self._expire_now, session)

    def attach(self, session: Session, eio_sid: str) -> None:
        if session._expiry is not None:
            session._expiry.cancel()
            session._expiry = None
        session.eio_sid = eio_sid
        session.rooms = []

    def close(self, session: Session) -> None:
        if session._expiry is not None:
            session._expiry.cancel()
            session._expiry = None
        if self._by_pid.get(session.pid) is session:
            del self._by_pid[session.pid]
        if self._by_sid.get(session.sid) is session:
            del self._by_sid[session.sid]
        session.packets = None
        session.size = 0

    def away_in(self, namespace: str, room: str) -> list[Session]:
        return [
            s
            for s in self._by_sid.values()
            if s.away and s.namespace == namespace and (room == s.sid or room in s.rooms)
        ]

    def _expire_now(self, session: Session) -> None:
        if self._by_pid.get(session.pid) is not session:
            return
        self.close(session)
        task = asyncio.ensure_future(self._on_expire(session))
        self._expiring.add(task)
        task.add_done_callback(self._expiring.discard)

    async def aclose(self) -> None:
        """Expire every away session now (shutdown): their namespaces hear the disconnect."""
        for session in [s for s in self._by_pid.values() if s.away]:
            self._expire_now(session)
        if self._expiring:
            await asyncio.wait(set(self._expiring), timeout=1.0)


class RecoverableNamespace(Protocol):
    """What a namespace does for recovery (`wire.gateway.AiNamespace`)."""

    def user_of(self, sid: str) -> str | None: ...
    async def recover(
        self, sid: str, environ: dict[str, Any], auth: Any, user_id: str | None
    ) -> bool: ...
    async def session_away(self, sid: str) -> None: ...
    async def session_expired(self, sid: str) -> None: ...


class RecoveringServer(socketio.AsyncServer):  # type: ignore[misc]
    """python-socketio's server with connection state recovery for `recoverable` namespaces.

    The hooks, each a python-socketio private method (pyproject bounds the
    versions): `_handle_connect` (a CONNECT with `pid`), `_send_packet` (the
    CONNECT reply gets `pid`; events get offsets), `_send_eio_packet` (events
    python-socketio encoded once for a room get offsets), `emit` (an event
    for a room also reaches its members that are away), `_handle_eio_disconnect`
    (a lost connection leaves its sessions away instead of disconnecting
    them) and `_handle_disconnect` (a real disconnect ends the session).
    """

    recovery: MemorySessionStore | None = None
    recoverable: frozenset[str] = frozenset()

    def enable_recovery(self, store: MemorySessionStore, namespaces: frozenset[str]) -> None:
        self.recovery = store
        self.recoverable = namespaces

    # --- connecting

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        namespace = namespace or "/"
        if (
            self.recovery is not None
            and namespace in self.recoverable
            and isinstance(data, dict)
            and "pid" in data
        ):
            data = dict(data)
            pid, offset = data.pop("pid"), data.pop("offset", None)
            if await self._recover(eio_sid, namespace, data or None, pid, offset):
                return
        await super()._handle_connect(eio_sid, namespace, data)

    async def _recover(
        self, eio_sid: str, namespace: str, auth: Any, pid: object, offset: object
    ) -> bool:
        """Give this connection its old session back; False: connect it as a new one."""
        assert self.recovery is not None
        session = self.recovery.find(pid) if isinstance(pid, str) else None
        after = parse_offset(offset)
        if session is None or session.namespace != namespace:
            return False
        if offset is not None and after is None:
            return False  # not an offset we gave out
        if session.missed_since(after) is None:
            return False  # something it missed is gone
        handler: RecoverableNamespace | None = self.namespace_handlers.get(namespace)
        if handler is None:
            return False
        if not session.away and session.eio_sid is not None:
            # Its old connection is dead but not yet noticed (the client saw
            # it first): that connection lets go of the session now.
            old = session.eio_sid
            await self._leave(old, namespace)
            stale = self.eio.sockets.get(old)
            if stale is not None:
                await stale.close(wait=False, abort=True, reason=self.eio.reason.TRANSPORT_CLOSE)
                stale.queue.put_nowait(None)
            if not session.away:
                return False
        sid = session.sid
        try:
            same_user = await handler.recover(
                sid, self.environ.get(eio_sid, {}), auth, session.user_id
            )
        except socketio.exceptions.ConnectionRefusedError as exc:
            # As for a new connection: refused (an expired token, a limit).
            await super()._send_packet(
                eio_sid,
                self.packet_class(
                    socketio.packet.CONNECT_ERROR, data=exc.error_args, namespace=namespace
                ),
            )
            return True
        if not same_user:
            return False  # someone else's pid: refused like a missing one
        manager = self.manager
        manager.basic_enter_room(sid, namespace, None, eio_sid=eio_sid)
        manager.basic_enter_room(sid, namespace, sid, eio_sid=eio_sid)
        for room in session.rooms:
            manager.basic_enter_room(sid, namespace, room)
        await super()._send_packet(
            eio_sid,
            self.packet_class(
                socketio.packet.CONNECT, {"sid": sid, "pid": session.pid}, namespace=namespace
            ),
        )
        # What it missed, in order, then live again. Packets recorded while
        # these are sent are sent too; the last check and `attach` happen with
        # no await between them, so nothing falls between replay and live.
        socket = self.eio.sockets.get(eio_sid)
        last = after or 0
        while socket is not None:
            batch = [(o, text) for _, o, text in session.packets or () if o > last]
            if not batch:
                break
            for o, text in batch:
                await socket.send(engineio.packet.Packet(engineio.packet.MESSAGE, text))
                last = o
        self.recovery.attach(session, eio_sid)
        log.info("session recovered", extra={"sid": sid})
        return True

    # --- sending

    async def _send_packet(self, eio_sid: str, pkt: Any) -> None:
        if self.recovery is not None and pkt.namespace in self.recoverable:
            if pkt.packet_type == socketio.packet.CONNECT and isinstance(pkt.data, dict):
                sid = pkt.data.get("sid")
                handler = self.namespace_handlers.get(pkt.namespace)
                if isinstance(sid, str) and handler is not None:
                    opened = self.recovery.open(sid, pkt.namespace, eio_sid, handler.user_of(sid))
                    pkt.data = {**pkt.data, "pid": opened.pid}
            elif pkt.packet_type == socketio.packet.EVENT and pkt.id is None:
                session = self._session_of(eio_sid, pkt.namespace)
                if session is not None:
                    offset = next_offset()
                    pkt.data = [*pkt.data, str(offset)]
                    text = pkt.encode()
                    if isinstance(text, str):
                        self.recovery.record(session, offset, text)
                        if session.away:
                            return  # being recovered: the replay sends it, in order
        await super()._send_packet(eio_sid, pkt)

    async def _send_eio_packet(self, eio_sid: str, eio_pkt: Any) -> None:
        text = eio_pkt.data
        if self.recovery is not None and isinstance(text, str) and text.endswith("]"):
            for namespace in self.recoverable:
                if text.startswith(_event_prefix(namespace)):
                    session = self._session_of(eio_sid, namespace)
                    if session is not None:
                        offset = next_offset()
                        text = f'{text[:-1]},"{offset}"]'
                        self.recovery.record(session, offset, text)
                        if session.away:
                            return  # being recovered: the replay sends it, in order
                        eio_pkt = engineio.packet.Packet(engineio.packet.MESSAGE, text)
                    break
        await super()._send_eio_packet(eio_sid, eio_pkt)

    async def emit(self, event: str, data: Any = None, *args: Any, **kwargs: Any) -> None:
        await super().emit(event, data, *args, **kwargs)
        namespace = kwargs.get("namespace") or "/"
        room = kwargs.get("to") or kwargs.get("room")
        if (
            self.recovery is None
            or namespace not in self.recoverable
            or room is None
            or args
            or kwargs.get("callback") is not None
        ):
            return
        # Members of the room whose connection is gone get it when they come back.
        skip = kwargs.get("skip_sid")
        skipped = set(skip) if isinstance(skip, list) else {skip}
        for session in self.recovery.away_in(namespace, room):
            # One being recovered is in the room again and got it above.
            if session.sid not in skipped and not self.manager.is_connected(session.sid, namespace):
                offset = next_offset()
                payload = [event] + (list(data) if isinstance(data, tuple) else [data])
                text = self.packet_class(
                    socketio.packet.EVENT, namespace=namespace, data=[*payload, str(offset)]
                ).encode()
                if isinstance(text, str):
                    self.recovery.record(session, offset, text)

    def _session_of(self, eio_sid: str, namespace: str) -> Session | None:
        """The session this connection carries in `namespace` (also while it is being recovered)."""
        assert self.recovery is not None
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        return self.recovery.for_sid(sid) if sid is not None else None

    # --- disconnecting

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        # A connection that ended without a Socket.IO DISCONNECT (closed,
        # broken, silent past the ping timeout, or engine.io's CLOSE, as the
        # reference server counts "transport close") leaves its sessions
        # away. The server's own disconnects (drain, a slow client cut off)
        # do not.
        if self.recovery is not None and reason != self.eio.reason.SERVER_DISCONNECT:
            # A client's `disconnect()` sends Socket.IO's DISCONNECT, then
            # closes the connection at once (python-socketio: no engine.io
            # CLOSE, just the socket); engine.io runs the message in a task of
            # its own, which may not have started yet. Let it mark the session
            # disconnecting first (`_leave` then leaves it alone): a client
            # that said goodbye is not away.
            await asyncio.sleep(0)
            for namespace in self.recoverable:
                await self._leave(eio_sid, namespace)
        await super()._handle_eio_disconnect(eio_sid, reason)

    async def _leave(self, eio_sid: str, namespace: str) -> None:
        """This connection is gone; its session waits CONNECTION_RECOVERY_S for its client."""
        assert self.recovery is not None
        session = self._session_of(eio_sid, namespace)
        if session is None or session.away or not self.manager.is_connected(session.sid, namespace):
            return  # none, away already, or being disconnected by its client
        sid, manager = session.sid, self.manager
        rooms = [r for r in manager.get_rooms(sid, namespace) if r != sid]
        manager.pre_disconnect(sid, namespace)
        await manager.disconnect(sid, namespace, ignore_queue=True)
        self.recovery.away(session, rooms)
        handler: RecoverableNamespace | None = self.namespace_handlers.get(namespace)
        if handler is not None:
            await handler.session_away(sid)

    async def _handle_disconnect(
        self, eio_sid: str, namespace: str | None, reason: Any = None
    ) -> None:
        session = None
        if self.recovery is not None and (namespace or "/") in self.recoverable:
            session = self._session_of(eio_sid, namespace or "/")
        await super()._handle_disconnect(eio_sid, namespace, reason)
        if session is not None and self.recovery is not None:
            self.recovery.close(session)

    async def expire_session(self, session: Session) -> None:
        """The session's client did not come back in time: its namespace hears the disconnect."""
        handler: RecoverableNamespace | None = self.namespace_handlers.get(session.namespace)
        if handler is not None:
            await handler.session_expired(session.sid)


def _event_prefix(namespace: str) -> str:
    return "2" if namespace == "/" else f"2{namespace},"
