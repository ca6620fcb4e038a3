"""Sending one reply's text to one follower as `TextAppended` events (`chat:message`).

A reply has as many writers as followers (`tokenwire.chat.log`): the socket
that started it, every socket joined to its conversation, every socket that
resumed it. Each writer paces, coalesces and cuts off its own follower; none
of that touches the reply or the other followers.

Each chunk carries `offset`: how much of the reply came before it, counted in
UTF-16 code units, the unit of JavaScript's `String.length`, so a browser can
check `offset === text.length` before appending and never show a chunk twice
or out of place.

With STREAM_FLUSH_MS > 0, tokens that arrive between two beats of a clock
shared by every reply (`tokenwire.pacing`) are coalesced into one frame:
fewer frames, less CPU per token. The first chunk, and any chunk after a beat
passed with nothing sent, goes at once, so coalescing never delays the first
token.

A reasoning model's thinking goes out as `chat:reasoning` events, with
their own `offset` into the reasoning text, as it arrives; it never starts
the beat, so the first text after it goes out at once too. Thinking that
arrives while the client lags waits, joined, for the next send.

A client that stops reading must not grow the server's memory: when the
socket's send queue (`Sink.backlog`) holds frames, new text is coalesced into
one pending chunk sent every 50 ms at most; past MAX_SOCKET_BACKLOG frames the
client is disconnected. Its reply keeps generating and is saved.

Events are the chat service's own (`tokenwire.chat.events`); the `Sink`
encodes them for its transport.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from tokenwire.chat.events import Event, Finished, ReasoningAppended, TextAppended
from tokenwire.pacing import next_beat

__all__ = ["ChunkWriter", "Emit", "Sink", "utf16_len"]

log = logging.getLogger(__name__)

Emit = Callable[[Event], Awaitable[None]]

_CONGESTED_AT = 2  # frames waiting in the socket's queue: the client is lagging
_CONGESTED_FLUSH_S = 0.05
# The upstream is read every STREAM_FLUSH_MS (providers/openai.py), so text
# usually arrives just as its frame is due; uvloop's clock ticks in whole
# milliseconds, and "due in under a tick" would otherwise cost a timer and a
# task for a frame sent a moment later anyway (30% of frames at B2).
_DUE_SLACK_S = 0.002


@dataclass(slots=True, frozen=True)
class Sink:
    """Where one follower's events go: how to send, how far behind it is, how to cut it off."""

    emit: Emit
    backlog: Callable[[], int] | None = None
    disconnect: Callable[[], Awaitable[None]] | None = None
    max_backlog: int = 256
    # `emit` without a coroutine, for a transport that can take an event so:
    # True once it is sent or queued, False to have `emit` send it instead.
    # One frame per token costs a coroutine per layer otherwise.
    emit_now: Callable[[Event], bool] | None = None


def utf16_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-16-le")) // 2


class ChunkWriter:
    __slots__ = (
        "_backlog",
        "_conversation_id",
        "_disconnect",
        "_emit_now",
        "_final",
        "_max_backlog",
        "_flush_s",
        "_flusher",
        "_held",
        "_last_send",
        "_loop",
        "_message_id",
        "_notices",
        "_pending",
        "_thinking",
        "_timer",
        "emit",
        "sent",
        "thought",
    )

    def __init__(
        self,
        sink: Sink | None,
        *,
        message_id: str,
        conversation_id: str,
        flush_s: float,
        sent: int = 0,
        thought: int = 0,
    ) -> None:
        self.emit = sink.emit if sink is not None else None
        self._emit_now = sink.emit_now if sink is not None else None
        self._backlog = sink.backlog if sink is not None else None
        self._disconnect = sink.disconnect if sink is not None else None
        self._max_backlog = sink.max_backlog if sink is not None else 0
        # UTF-16 units of the text and of the reasoning already sent (or, for
        # a follower that joined late, that it already holds).
        self.sent = sent
        self.thought = thought
        self._thinking: list[str] = []  # reasoning not sent yet
        self._notices: list[Event] = []  # events held until release
        self._final: Finished | None = None  # the reply ended while this writer was held
        self._message_id = message_id
        self._conversation_id = conversation_id
        self._flush_s = flush_s
        self._pending: list[str] = []
        self._loop = asyncio.get_running_loop()
        self._last_send = -float("inf")
        self._timer: asyncio.TimerHandle | None = None
        self._flusher: asyncio.Task[None] | None = None
        # Until the turn is announced (chat:user-message comes first), or, for
        # a late follower, until its join or resume has been acknowledged.
        self._held = True

    async def think(self, text: str) -> None:
        """Send a piece of the model's reasoning (chat:reasoning), at once unless the client lags."""
        if self.emit is None:
            return
        self._thinking.append(text)
        if self._held:
            return
        if self._backlog is not None:
            depth = self._backlog()
            if depth >= self._max_backlog:
                await self._overflow()
                return
            if depth >= _CONGESTED_AT:
                return  # goes with the next send, joined
        await self._send_thinking()

    async def write(self, text: str) -> None:
        if self.emit is None:
            return
        if self._thinking and not self._held:
            await self._send_thinking()  # thinking comes before the text that follows it
        if self._held:
            self._pending.append(text)
            return
        congested = False
        if self._backlog is not None:
            depth = self._backlog()
            if depth >= self._max_backlog:
                await self._overflow()
                return
            congested = depth >= _CONGESTED_AT
        if self._flush_s <= 0 and not congested and not self._pending and self._flusher is None:
            await self._send(text)
            return
        # Coalesce, behind anything still pending, so text never overtakes
        # text that was held back while the client lagged.
        self._pending.append(text)
        if self._timer is None and self._flusher is None:
            # Frames fall on the shared beat (tokenwire.pacing): the next
            # multiple of the interval after the last send, not the interval
            # counted from it, so every reply's frames go out together.
            due = next_beat(self._last_send, self._flush_s or _CONGESTED_FLUSH_S)
            if self._loop.time() >= due - _DUE_SLACK_S:
                await self._send_pending()
            else:
                self._timer = self._loop.call_at(due, self._on_timer)

    async def release(self) -> None:
        """The turn is announced: chunks may flow (held ones go at once)."""
        self._held = False
        notices, self._notices = self._notices, []
        for notice in notices:
            await self.event(notice)
        if self._thinking and self.emit is not None:
            await self._send_thinking()
        if self._pending and self.emit is not None:
            await self._send_pending()
        if self._final is not None:
            final, self._final = self._final, None
            await self.event(final)

    def preload(self, text: str, thinking: str, final: Finished | None = None) -> None:
        """What a late follower missed: it goes out as one chunk (and one piece of reasoning)
        on release, joined with whatever arrives until then, so catch-up and live text meet
        without a gap or a duplicate."""
        if thinking:
            self._thinking.append(thinking)
        if text:
            self._pending.append(text)
        self._final = final

    async def finish(self, final: Finished) -> None:
        """Send what is pending, then the reply's final event (after release, if held)."""
        if self._held:
            self._final = final
            return
        await self.flush()
        await self.event(final)

    async def flush(self) -> None:
        """Send whatever is pending; called before the reply's final event."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._flusher is not None:
            await asyncio.shield(self._flusher)
        if self._thinking and self.emit is not None:
            await self._send_thinking()
        if self._pending and self.emit is not None:
            await self._send_pending()

    def detach(self) -> None:
        """The socket is gone: stop sending; the reply itself carries on."""
        self.emit = None
        self._pending.clear()
        self._thinking.clear()
        self._notices.clear()
        self._final = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _overflow(self) -> None:
        log.warning("client is not reading; disconnecting it (its reply continues and is saved)")
        disconnect = self._disconnect
        self.detach()
        if disconnect is not None:
            await disconnect()

    def _on_timer(self) -> None:
        self._timer = None
        self._flusher = self._loop.create_task(self._timed_flush())

    async def _timed_flush(self) -> None:
        try:
            await self._send_pending()
        finally:
            self._flusher = None

    async def _send_pending(self) -> None:
        if not self._pending:
            return
        text = self._pending[0] if len(self._pending) == 1 else "".join(self._pending)
        self._pending.clear()
        await self._send(text)

    async def _send_thinking(self) -> None:
        text = "".join(self._thinking)
        self._thinking.clear()
        offset = self.thought
        self.thought += utf16_len(text)
        await self.event(ReasoningAppended(self._message_id, self._conversation_id, offset, text))

    async def _send(self, text: str) -> None:
        if self.emit is None:
            return
        offset = self.sent
        self.sent += utf16_len(text)
        self._last_send = self._loop.time()
        await self.event(TextAppended(self._message_id, self._conversation_id, offset, text))

    async def notice(self, event: Event) -> None:
        """An event about the reply that must not overtake chat:user-message (chat:queued)."""
        if self._held:
            self._notices.append(event)
        else:
            await self.event(event)

    async def event(self, event: Event) -> None:
        """Send one event of this reply to its follower, if it still has one."""
        emit = self.emit
        if emit is None:
            return
        try:
            if self._emit_now is None or not self._emit_now(event):
                await emit(event)
        except Exception:
            # The socket went away between our check and the send; the reply
            # carries on and is saved, only this client stops receiving it.
            log.debug("socket went away; %s not delivered", type(event).__name__, exc_info=True)
            self.detach()
