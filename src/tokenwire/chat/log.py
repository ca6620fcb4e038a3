"""A running reply as a log: its text so far, and the followers reading it from an offset.

The socket that started a reply is only its first follower. Others join
(`chat:join`, every socket in the conversation) or resume (`chat:resume`,
after a reload) at any offset: `follow` takes the text they miss and
registers them in one step, with no await between, so what they receive
is catch-up followed by live text with no gap and no duplicate. Each
follower has its own `ChunkWriter`, so a slow one is cut off alone and the
reply goes on.

Offsets count UTF-16 code units. A finished reply's log is dropped once the
reply is saved and announced (the service removes it from the registry);
the database answers for it from then on.

`ReplyLog` is the interface; `MemoryReplyLog` keeps it in this process. A
Redis implementation (a stream per reply, for followers on other nodes) can
take its place without reshaping the service.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

from tokenwire.chat.events import Event, Finished
from tokenwire.chat.writer import ChunkWriter, Sink, utf16_len

__all__ = ["MemoryReplyLog", "ReplyLog", "utf16_slice"]


class ReplyLog(Protocol):
    message_id: str
    conversation_id: str
    parts: list[str]  # the text, as it arrived
    length: int  # UTF-16 units of the text so far
    final: Finished | None  # set once the end is announced

    def text(self) -> str: ...
    def reasoning(self) -> str: ...

    async def append(self, text: str) -> None: ...
    async def think(self, text: str) -> None: ...
    async def notice(self, event: Event) -> None: ...
    async def announce(self, event: Event, only: str | None = None) -> None: ...
    async def release(self) -> None: ...
    async def flush(self) -> None: ...
    async def finish(self, final: Finished) -> None: ...

    def follow(self, key: str, sink: Sink, offset: int, *, reasoning: bool) -> ChunkWriter: ...
    def unfollow(self, key: str) -> None: ...
    def followers(self) -> Iterator[str]: ...
    def close(self) -> None: ...


def utf16_slice(text: str, offset: int) -> str:
    """`text` after its first `offset` UTF-16 units.

    ValueError when `offset` is negative, past the end, or splits a surrogate
    pair (an emoji): no client holding whole characters can ask for that.
    """
    if offset < 0:
        raise ValueError("negative offset")
    if text.isascii():
        if offset > len(text):
            raise ValueError("offset past the end")
        return text[offset:]
    units = text.encode("utf-16-le", "surrogatepass")
    if offset * 2 > len(units):
        raise ValueError("offset past the end")
    if offset and 0xDC00 <= int.from_bytes(units[offset * 2 : offset * 2 + 2], "little") <= 0xDFFF:
        raise ValueError("offset inside a character")
    return units[offset * 2 :].decode("utf-16-le", "surrogatepass")


class MemoryReplyLog:
    """One reply's log in this process, fanned out to its followers' writers."""

    __slots__ = (
        "_flush_s",
        "_live",
        "_thoughts",
        "_writers",
        "conversation_id",
        "final",
        "length",
        "message_id",
        "parts",
    )

    def __init__(self, message_id: str, conversation_id: str, *, flush_s: float) -> None:
        self.message_id = message_id
        self.conversation_id = conversation_id
        self.parts: list[str] = []
        self.length = 0
        self.final: Finished | None = None
        self._thoughts: list[str] = []
        self._flush_s = flush_s
        self._writers: dict[str, ChunkWriter] = {}
        # What the hot path iterates: a snapshot, so a follower added while a
        # chunk is being sent waits for the next one (its catch-up has this one).
        self._live: tuple[ChunkWriter, ...] = ()

    def text(self) -> str:
        return "".join(self.parts)

    def reasoning(self) -> str:
        return "".join(self._thoughts)

    # --- the reply writes

    async def append(self, text: str) -> None:
        self.parts.append(text)
        self.length += utf16_len(text)
        for writer in self._live:
            await writer.write(text)

    async def think(self, text: str) -> None:
        self._thoughts.append(text)
        for writer in self._live:
            await writer.think(text)

    async def notice(self, event: Event) -> None:
        """An event every follower gets in its place, after chat:user-message (chat:queued)."""
        for writer in self._live:
            await writer.notice(event)

    async def announce(self, event: Event, only: str | None = None) -> None:
        """An event of the turn, sent before any chunk (to one follower, with `only`)."""
        for key, writer in list(self._writers.items()):
            if only is None or key == only:
                await writer.event(event)

    async def release(self) -> None:
        """The turn is announced: the first followers' chunks may flow."""
        for writer in self._live:
            await writer.release()

    async def flush(self) -> None:
        for writer in self._live:
            await writer.flush()

    async def finish(self, final: Finished) -> None:
        self.final = final
        for writer in self._live:
            await writer.finish(final)

    # --- followers

    def follow(self, key: str, sink: Sink, offset: int, *, reasoning: bool) -> ChunkWriter:
        """A follower from `offset` (ValueError if no such offset): held until released.

        The text from `offset` (and, with `reasoning`, the reasoning so far)
        is taken now and sent as one chunk on release; anything appended
        meanwhile joins it. A key that already follows starts over.
        """
        missed = utf16_slice(self.text(), offset)
        thinking = self.reasoning() if reasoning else ""
        writer = ChunkWriter(
            sink,
            message_id=self.message_id,
            conversation_id=self.conversation_id,
            flush_s=self._flush_s,
            sent=offset,
            thought=0 if reasoning else utf16_len(self.reasoning()),
        )
        # Ended already (saved, not yet dropped): the final event follows the catch-up.
        writer.preload(missed, thinking, self.final)
        old = self._writers.pop(key, None)
        if old is not None:
            old.detach()
        self._writers[key] = writer
        self._changed()
        return writer

    def unfollow(self, key: str) -> None:
        writer = self._writers.pop(key, None)
        if writer is not None:
            writer.detach()
            self._changed()

    def followers(self) -> Iterator[str]:
        return iter(list(self._writers))

    def close(self) -> None:
        """The reply is saved and announced: let go of every follower."""
        self._writers.clear()
        self._live = ()

    def _changed(self) -> None:
        # Writers whose socket went away (or that were cut off) are dropped
        # here; until then they ignore what they are given.
        for key in [k for k, w in self._writers.items() if w.emit is None]:
            del self._writers[key]
        self._live = tuple(self._writers.values())
