"""Running replies, and the registry where each one can be found and stopped.

Every reply runs as one asyncio task owned by the `ChatService`. The registry
finds it by message id, by socket (for `chat:stop` and disconnects) and counts
them per user (for MAX_STREAMS_PER_USER); shutdown walks all of them.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from tokenwire.chat.writer import ChunkWriter
from tokenwire.providers import ChatRequest

__all__ = ["Reply", "ReplyRegistry", "StopReason"]

StopReason = Literal["stopped", "shutdown", "deleted", "timeout", "aborted"]


@dataclass(eq=False, slots=True)
class Reply:
    message_id: str
    conversation_id: str
    user_id: str
    sid: str | None
    request: ChatRequest
    writer: ChunkWriter
    parts: list[str] = field(default_factory=list)
    thoughts: list[str] = field(default_factory=list)  # reasoning, beside the reply
    # Loop times of the first reasoning and of the first text after it:
    # how long the model thought ("Thought for 12 s").
    thinking_from: float | None = None
    thinking_until: float | None = None
    task: asyncio.Task[None] | None = None
    stop_reason: StopReason | None = None
    checkpointed_parts: int = 0
    saving: bool = False
    first_token: asyncio.Event = field(default_factory=asyncio.Event)  # sent, or none is coming
    committed: asyncio.Event = field(default_factory=asyncio.Event)  # the turn is in the database
    started_at: float = field(default_factory=lambda: asyncio.get_running_loop().time())
    started_wall: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def content(self) -> str:
        return "".join(self.parts)

    @property
    def reasoning(self) -> str | None:
        return "".join(self.thoughts) if self.thoughts else None

    def thinking_ms(self, now: float) -> int | None:
        if self.thinking_from is None:
            return None
        return round(((self.thinking_until or now) - self.thinking_from) * 1000)

    def cancel(self, reason: StopReason) -> None:
        """Stop generating. Once the reply is being saved it is left to finish:
        interrupting the save could lose it or announce its end twice."""
        if self.saving:
            return
        if self.stop_reason is None:
            self.stop_reason = reason
        if self.task is not None and not self.task.done():
            self.task.cancel()


class ReplyRegistry:
    def __init__(self) -> None:
        self._by_id: dict[str, Reply] = {}
        self._by_sid: dict[str, Reply] = {}
        self._per_user: Counter[str] = Counter()

    def add(self, reply: Reply) -> None:
        self._by_id[reply.message_id] = reply
        if reply.sid is not None:
            self._by_sid[reply.sid] = reply
        self._per_user[reply.user_id] += 1

    def remove(self, reply: Reply) -> None:
        if self._by_id.pop(reply.message_id, None) is None:
            return
        if reply.sid is not None and self._by_sid.get(reply.sid) is reply:
            del self._by_sid[reply.sid]
        self._per_user[reply.user_id] -= 1
        if self._per_user[reply.user_id] <= 0:
            del self._per_user[reply.user_id]

    def detach(self, sid: str) -> Reply | None:
        reply = self._by_sid.pop(sid, None)
        if reply is not None:
            reply.sid = None
            reply.writer.detach()
        return reply

    def for_sid(self, sid: str) -> Reply | None:
        return self._by_sid.get(sid)

    def get(self, message_id: str) -> Reply | None:
        return self._by_id.get(message_id)

    def count_for_user(self, user_id: str) -> int:
        return self._per_user.get(user_id, 0)

    def in_conversation(self, conversation_id: str) -> list[Reply]:
        return [r for r in self._by_id.values() if r.conversation_id == conversation_id]

    def __iter__(self) -> Iterator[Reply]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)
