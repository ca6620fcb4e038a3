"""The `/ai` Socket.IO namespace: the guide's events, each handler thin.

Connect authenticates (a refused connection gets `connect_error` with message
'unauthorized' or 'rate_limited' and `data.code`); each client event is
validated, handed to the chat service, and answered. Every event answers an
acknowledgement when the client asks for one: `{ok: true, ...ids}` or
`{ok: false, error: {code, message}}`; failures are also emitted as
`chat:error`, which is what the guide's clients listen to.

Following a reply from anywhere: `chat:join {conversationId}` / `chat:leave`,
`chat:resume {messageId, offset}`, and `chat:stop {messageId}` or
`{conversationId}` from any socket of the reply's owner. What a join or a
resume has missed is sent only once its acknowledgement has gone out
(`after_ack`), so a client always knows what it joined before the text arrives.
Event names and payloads are built in `wire.protocol`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from typing import Any

import engineio
import socketio

from tokenwire import compat
from tokenwire.api.conversations import MessageOut
from tokenwire.auth import Principal
from tokenwire.chat import ChatService
from tokenwire.chat.events import Event
from tokenwire.chat.writer import Emit, Sink
from tokenwire.config import Settings
from tokenwire.errors import (
    Forbidden,
    RateLimited,
    TokenwireError,
    Unauthorized,
    ValidationFailed,
)
from tokenwire.logs import bind
from tokenwire.wire import protocol
from tokenwire.wire.codec import event_packet
from tokenwire.wire.engine import GatewayEngine
from tokenwire.wire.payloads import parse_conversation, parse_resume, parse_start, parse_stop
from tokenwire.wire.recovery import RecoveringServer, next_offset

compat.verify("python-socketio")  # before a connection meets a method that changed shape

__all__ = ["AiNamespace", "GatewayServer", "Runtime", "shown_event_name"]

log = logging.getLogger(__name__)

NAMESPACE = "/ai"
Handler = Callable[[str, tuple[Any, ...]], Awaitable[dict[str, Any]]]
AfterAck = Callable[[], Awaitable[None]]
# What an event's handler wants done once its acknowledgement is sent (a
# join's or a resume's catch-up); set per event by `GatewayServer`.
_after_ack: ContextVar[list[AfterAck] | None] = ContextVar("after_ack", default=None)


async def after_ack(send: AfterAck) -> None:
    """Run `send` once this event's acknowledgement has gone out (at once outside an event)."""
    waiting = _after_ack.get()
    if waiting is None:
        await send()
    else:
        waiting.append(send)


class Runtime:
    """What the namespace needs from the running app; filled in by the app's lifespan."""

    settings: Settings
    chat: ChatService
    verify: Callable[[object], Awaitable[Principal]]

    def __init__(
        self,
        settings: Settings,
        chat: ChatService,
        verify: Callable[[object], Awaitable[Principal]],
    ) -> None:
        self.settings = settings
        self.chat = chat
        self.verify = verify


class GatewayServer(RecoveringServer):
    """python-socketio's server, refusing event packets that it would mis-dispatch.

    python-socketio hands a client's EVENT packet named `connect` or
    `disconnect` to the same handlers as the real lifecycle events, so a
    connected client could re-run authentication or forget its own identity
    with a crafted frame. Such events, and event packets whose payload is not
    a list starting with a string, are answered with VALIDATION_ERROR here and
    go no further.

    Its Engine.IO server is `GatewayEngine` (see `wire.engine`): the same
    protocol, keeping a third of what python-engineio kept per idle client;
    with `lean_engine=False` (LEAN_ENGINE=false), python-engineio's own. The
    two guards here stay either way: they fix python-socketio, not memory.
    """

    def __init__(self, *args: Any, lean_engine: bool = True, **kwargs: Any) -> None:
        self._lean_engine = lean_engine  # read by the base's __init__, below
        super().__init__(*args, **kwargs)

    def _engineio_server_class(self) -> type[engineio.AsyncServer]:
        return GatewayEngine if self._lean_engine else engineio.AsyncServer

    def handle_request(self, *args: Any, **kwargs: Any) -> Awaitable[Any]:
        # python-socketio's own version awaits engine.io's; handing engine.io's
        # coroutine straight to the ASGI app drops a coroutine frame (~0.5 KiB)
        # that every open WebSocket would otherwise keep for its whole life.
        return self.eio.handle_request(*args, **kwargs)  # type: ignore[no-any-return]

    async def _handle_eio_disconnect(self, eio_sid: str, reason: Any) -> None:
        socket = self.eio.sockets.get(eio_sid)
        await super()._handle_eio_disconnect(eio_sid, reason)
        if socket is not None and reason == self.reason.CLIENT_DISCONNECT:
            # python-engineio closes on the client's CLOSE packet without
            # waking a long-poll that is still open, so it lingers for
            # PING_INTERVAL + PING_TIMEOUT; the reference server answers it.
            socket.queue.put_nowait(None)

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        # A message can arrive for a session that has just been closed: the
        # body of a polling POST that was still being read when the session
        # ended (engine.io then hands on what arrived of it). python-socketio
        # looks the session's environ up unguarded and logs a KeyError
        # traceback; a closed session's messages are dropped here instead.
        if eio_sid not in self.environ:
            return
        await super()._handle_eio_message(eio_sid, data)

    async def disconnect_all(self, within_s: float) -> None:
        """Close every client's Engine.IO session on this node, within `within_s`, whatever they do.

        Each client is sent engine.io's CLOSE, so socket.io-client reconnects
        (elsewhere, in a rolling deploy) rather than giving up, as after a
        Socket.IO DISCONNECT. python-engineio's own `disconnect()` waits for
        each CLOSE to be taken from the socket's queue, which never happens
        for a polling session nobody polls, or a WebSocket whose client stopped
        reading (its writer waits for the full TCP window): SIGTERM then hung
        forever. Here whatever has not gone out after `within_s` is dropped: the
        session is closed either way, every waiting poll and writer is woken
        to end, and uvicorn then closes the connections themselves.
        """
        sockets = list(self.eio.sockets.values())
        if not sockets:
            return
        reason = self.eio.reason.SERVER_DISCONNECT
        closing = [asyncio.ensure_future(socket.close(reason=reason)) for socket in sockets]
        _, late = await asyncio.wait(closing, timeout=within_s)
        for task in late:
            task.cancel()  # waiting in the queue's join(); the session is closed already
        if late:
            await asyncio.wait(late, timeout=within_s)
            log.info("%d clients did not take the close in %.1f s; dropped", len(late), within_s)
        for socket in sockets:
            socket.closed = True
            socket.queue.put_nowait(None)  # ends a waiting long poll or WebSocket writer
        self.eio.sockets.clear()

    async def _handle_event_internal(
        self,
        server: Any,
        sid: str,
        eio_sid: str,
        data: Any,
        namespace: str | None,
        id: int | None,
    ) -> None:
        # python-socketio sends the ack after the handler returns, in this
        # same task, so what the handler deferred with `after_ack` goes next.
        waiting: list[AfterAck] = []
        token = _after_ack.set(waiting)
        try:
            await super()._handle_event_internal(server, sid, eio_sid, data, namespace, id)
        finally:
            _after_ack.reset(token)
        for send in waiting:
            await send()

    async def _handle_event(
        self, eio_sid: str, namespace: str | None, id: int | None, data: Any
    ) -> None:
        name = data[0] if isinstance(data, list) and data else None
        if isinstance(name, str) and name not in self.reserved_events and name != "message":
            await super()._handle_event(eio_sid, namespace, id, data)
            return
        namespace = namespace or "/"
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is None or not self.manager.is_connected(sid, namespace):
            return
        error = ValidationFailed("That event name is reserved or malformed.")
        await self.emit(protocol.ERROR, protocol.error_event(error), to=sid, namespace=namespace)
        if id is not None:
            ack = protocol.ack_error(error)
            await self._send_packet(
                eio_sid,
                self.packet_class(socketio.packet.ACK, namespace=namespace, id=id, data=[ack]),
            )


class AiNamespace(socketio.AsyncNamespace):  # type: ignore[misc]
    def __init__(self, settings: Settings) -> None:
        super().__init__(NAMESPACE)
        self.settings = settings
        self.runtime: Runtime | None = None
        self.principals: dict[str, Principal] = {}
        self._per_user: dict[str, int] = {}
        self._handlers: dict[str, Handler] = {
            "chat:start": self._chat_start,
            "chat:stop": self._chat_stop,
            "chat:join": self._chat_join,
            "chat:leave": self._chat_leave,
            "chat:resume": self._chat_resume,
        }
        self.connected = 0

    # --- connection

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        principal = await self._admit(sid, environ, auth)
        self._count_in(sid, principal)

    async def _admit(self, sid: str, environ: dict[str, Any], auth: Any) -> Principal | None:
        """Who this connection is, or ConnectionRefusedError ('unauthorized' or 'rate_limited')."""
        runtime = self._runtime()
        ip = _client_ip(environ)
        try:
            await runtime.chat.limits.check_connect(ip)
        except RateLimited as exc:
            raise socketio.exceptions.ConnectionRefusedError(
                "rate_limited",
                {"code": exc.code, "message": exc.message, "retryAfter": exc.retry_after},
            ) from None
        token = auth.get("token") if isinstance(auth, dict) else None
        if token is None:
            token = _bearer(environ.get("HTTP_AUTHORIZATION"))
        principal: Principal | None = None
        if token is not None or self.settings.auth_required:
            try:
                principal = await runtime.verify(token)
            except Unauthorized as exc:
                log.info("connection refused: %s", exc.code, extra={"sid": sid})
                raise socketio.exceptions.ConnectionRefusedError(
                    "unauthorized", {"code": exc.code, "message": exc.message}
                ) from None
        if principal is not None:
            if self._per_user.get(principal.user_id, 0) >= self.settings.max_connections_per_user:
                raise socketio.exceptions.ConnectionRefusedError(
                    "rate_limited",
                    {"code": "RATE_LIMIT", "message": "Too many open connections for this user."},
                )
        return principal

    def _count_in(self, sid: str, principal: Principal | None) -> None:
        if principal is not None:
            self._per_user[principal.user_id] = self._per_user.get(principal.user_id, 0) + 1
            self.principals[sid] = principal
        self.connected += 1
        with bind(sid=sid, user_id=principal.user_id if principal else None):
            log.info("client connected; %d connected", self.connected)

    def _count_out(self, principal: Principal | None) -> None:
        self.connected -= 1
        if principal is not None:
            left = self._per_user.get(principal.user_id, 1) - 1
            if left > 0:
                self._per_user[principal.user_id] = left
            else:
                self._per_user.pop(principal.user_id, None)

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:
        principal = self.principals.pop(sid, None)
        self._count_out(principal)
        if self.runtime is not None:
            self.runtime.chat.detach(sid)
        with bind(sid=sid, user_id=principal.user_id if principal else None):
            log.info("client disconnected (%s); %d connected", reason, self.connected)

    # --- connection state recovery (see wire.recovery)

    def user_of(self, sid: str) -> str | None:
        principal = self.principals.get(sid)
        return principal.user_id if principal is not None else None

    async def session_away(self, sid: str) -> None:
        """The connection dropped; its session (and its reply) waits for the client to return.

        It no longer counts against MAX_CONNECTIONS_PER_USER (a reload must
        not be refused), but keeps its principal, and its reply keeps
        writing into the session's buffer.
        """
        principal = self.principals.get(sid)
        self._count_out(principal)
        with bind(sid=sid, user_id=principal.user_id if principal else None):
            log.info("connection lost; session kept for recovery; %d connected", self.connected)

    async def recover(
        self, sid: str, environ: dict[str, Any], auth: Any, user_id: str | None
    ) -> bool:
        """Admit a returning client to its session: its token is checked again, and must be the same user's."""
        principal = await self._admit(sid, environ, auth)
        if (principal.user_id if principal is not None else None) != user_id:
            return False
        self.principals.pop(sid, None)
        self._count_in(sid, principal)
        return True

    async def session_expired(self, sid: str) -> None:
        """Its client did not come back within CONNECTION_RECOVERY_S: as a disconnect, counted already."""
        principal = self.principals.pop(sid, None)
        if self.runtime is not None:
            self.runtime.chat.detach(sid)
        with bind(sid=sid, user_id=principal.user_id if principal else None):
            log.info("session not recovered in time; released")

    # --- events

    async def trigger_event(self, event: str, *args: Any) -> Any:
        if event in ("connect", "disconnect"):
            return await super().trigger_event(event, *args)
        sid, data = args[0], args[1:]
        handler = self._handlers.get(event)
        principal = self.principals.get(sid)
        started = time.perf_counter()
        code: str | None = None
        with bind(sid=sid, user_id=principal.user_id if principal else None, event=event):
            try:
                if handler is None:
                    raise ValidationFailed(f"Unknown event '{shown_event_name(event)}'.")
                result = await handler(sid, data)
                return protocol.ack(**result)
            except Exception as exc:
                if not isinstance(exc, TokenwireError):
                    log.exception("event handler failed")
                payload = protocol.error_event(exc)
                code = payload["code"]
                log.info("event refused: %s", code)
                await self.emit(protocol.ERROR, payload, to=sid)
                return protocol.ack_error(exc)
            finally:
                if self.runtime is not None:
                    metrics = self.runtime.chat.metrics
                    metrics.event_handled(
                        event if handler else "unknown", time.perf_counter() - started
                    )
                    if code is not None:
                        metrics.error(code)

    async def _chat_start(self, sid: str, data: tuple[Any, ...]) -> dict[str, Any]:
        runtime = self._runtime()
        chat, claimed_user = parse_start(data[0] if data else None, self.settings)
        user_id = self._user_id(sid, claimed_user)
        with bind(user_id=user_id, conversation_id=chat.conversation_id):
            started = await runtime.chat.start(user_id, sid, self._sink(sid), chat)
        return {
            "conversationId": started.conversation_id,
            "userMessageId": started.user_message_id,
            "messageId": started.message_id,
        }

    async def _chat_stop(self, sid: str, data: tuple[Any, ...]) -> dict[str, Any]:
        chat = self._runtime().chat
        named = parse_stop(data[0] if data else None)
        if named is None:
            reply = await chat.stop(sid)  # the reply this socket started
        else:
            # Someone else's reply answers as a missing one does: not stopped.
            reply = await chat.stop_reply(
                self._user_id(sid, _claimed(named.user_id)),
                message_id=named.message_id,
                conversation_id=named.conversation_id,
            )
        if reply is None:
            return {"stopped": False}
        return {
            "stopped": True,
            "conversationId": reply.conversation_id,
            "messageId": reply.message_id,
        }

    async def _chat_join(self, sid: str, data: tuple[Any, ...]) -> dict[str, Any]:
        payload = parse_conversation(data[0] if data else None, "chat:join")
        user_id = self._user_id(sid, _claimed(payload.user_id))
        joined = await self._runtime().chat.join(
            user_id, sid, self._sink(sid), payload.conversation_id
        )
        if joined.catch_up is not None:
            await after_ack(joined.catch_up.send)
        streaming = (
            None
            if joined.streaming is None
            else {"messageId": joined.streaming[0], "offset": joined.streaming[1]}
        )
        return {
            "conversationId": joined.conversation_id,
            "messages": [
                MessageOut.model_validate(m).model_dump(mode="json", by_alias=True)
                for m in joined.messages
            ],
            "streaming": streaming,
        }

    async def _chat_leave(self, sid: str, data: tuple[Any, ...]) -> dict[str, Any]:
        payload = parse_conversation(data[0] if data else None, "chat:leave")
        left = self._runtime().chat.leave(sid, payload.conversation_id)
        return {"conversationId": payload.conversation_id, "left": left}

    async def _chat_resume(self, sid: str, data: tuple[Any, ...]) -> dict[str, Any]:
        payload = parse_resume(data[0] if data else None)
        user_id = self._user_id(sid, _claimed(payload.user_id))
        catch_up = await self._runtime().chat.resume(
            user_id, sid, self._sink(sid), payload.message_id, payload.offset
        )
        await after_ack(catch_up.send)
        return {
            "conversationId": catch_up.conversation_id,
            "messageId": catch_up.message_id,
            "offset": payload.offset,
        }

    def _user_id(self, sid: str, claimed: str | None) -> str:
        """Who is asking: the token's user; without a token, the `userId` the payload names."""
        principal = self.principals.get(sid)
        if principal is not None:
            if claimed is not None and claimed != principal.user_id:
                raise Forbidden("userId does not match your session.")
            return principal.user_id
        if claimed is None:
            raise ValidationFailed("'userId' is required when the connection carries no token.")
        return claimed

    def _sink(self, sid: str) -> Sink:
        """How a reply reaches this socket: straight to its Engine.IO socket, on this node.

        A reply runs on the node that holds its socket, so its events never
        go through the Redis queue. They skip `AsyncServer.emit` too, which is
        built for rooms: per event it walks the data for binary parts, builds
        a packet object and starts a task per recipient, a quarter of the
        gateway's time at 200 streams (py-spy, B2). For one text event to one
        sid the packet is a string: `2/ai,` and the JSON array, as
        python-socketio's own encoder writes it. Engine.IO's `send` still does
        the rest (closed and ping-timeout checks, the socket's queue).
        """
        server = self.server
        manager = server.manager
        eio = server.eio
        eio_sid = manager.eio_sid_from_sid(sid, NAMESPACE)
        message = engineio.packet.MESSAGE
        recovery = server.recovery
        session = recovery.for_sid(sid) if recovery is not None else None

        def _socket() -> Any:
            current = session.eio_sid if session is not None else eio_sid
            return eio.sockets.get(current) if current is not None else None

        def routed(event: str, payload: dict[str, Any]) -> tuple[Any, str] | None:
            """The event's packet and the socket to send it on; None if nobody gets it now.

            Recoverable: every event is kept with its offset, and is only kept
            while the connection is gone (the replay sends it).
            """
            if session is not None and recovery is not None:
                offset = next_offset()
                text = event_packet(NAMESPACE, event, payload, offset)
                recovery.record(session, offset, text)
                if recovery.for_sid(sid) is not session:
                    return None
                socket = _socket()
            else:
                socket = _socket()
                if socket is None or not manager.is_connected(sid, NAMESPACE):
                    return None  # gone; `on_disconnect` detaches the reply
                text = event_packet(NAMESPACE, event, payload)
            return None if socket is None else (socket, text)

        async def emit(event: str, payload: dict[str, Any]) -> None:
            if (to := routed(event, payload)) is not None:
                await to[0].send(engineio.packet.Packet(message, to[1]))

        lean = isinstance(eio, GatewayEngine)
        encode = protocol.encode

        def emit_now(event: Event) -> bool:
            """`emit` without awaiting, when the socket can take it so (False: use `emit`)."""
            socket = _socket()
            if socket is not None and not socket.can_send_now():
                return False  # closed, or its client is gone: `send` handles that
            if (to := routed(*encode(event))) is not None:
                to[0].send_text_now(to[1])
            return True

        def backlog() -> int:
            socket = _socket()
            return socket.queue.qsize() if socket is not None else 0

        async def disconnect() -> None:
            # Engine.IO level, without waiting: a polite close would queue
            # behind everything the client never read and wait for it forever.
            socket = _socket()
            if socket is None:
                return
            _discard_queue(socket.queue)
            await socket.close(wait=False, abort=True, reason=server.eio.reason.SERVER_DISCONNECT)
            socket.queue.put_nowait(None)  # wakes a websocket writer so it exits

        return Sink(
            _encoding(emit),
            backlog,
            disconnect,
            self.settings.max_socket_backlog,
            emit_now=emit_now if lean else None,
        )

    def _runtime(self) -> Runtime:
        if self.runtime is None:
            raise TokenwireError("The server is starting. Please try again in a moment.")
        return self.runtime


def _discard_queue(queue: Any) -> None:  # engine.io's send queue (a LeanQueue)
    while not queue.empty():
        queue.get_nowait()
        queue.task_done()


def _encoding(emit: Callable[[str, dict[str, Any]], Awaitable[None]]) -> Emit:
    """The chat service's events, encoded as `wire.protocol` says, into a socket's `emit`."""
    encode = protocol.encode

    async def send(event: Event) -> None:
        await emit(*encode(event))

    return send


def _claimed(user_id: str | int | None) -> str | None:
    return None if user_id is None else str(user_id)


def _bearer(header: object) -> str | None:
    if isinstance(header, str) and header.lower().startswith("bearer "):
        return header[7:].strip() or None
    return None


def _client_ip(environ: dict[str, Any]) -> str:
    return str(
        environ.get("REMOTE_ADDR") or environ.get("asgi.scope", {}).get("client", ("unknown",))[0]
    )


def shown_event_name(event: object) -> str:
    """An event name fit to quote back: short, and encodable even if the client sent a lone surrogate."""
    return str(event)[:64].encode("utf-8", "backslashreplace").decode("utf-8")
