"""Running replies, and the registry where each one can be found and stopped.

Every reply runs as one asyncio task owned by the `ChatService`. The registry
finds it by message id, by conversation, by the socket that started it (for
`chat:stop` without a payload) and counts them per user (for
MAX_STREAMS_PER_USER); shutdown walks all of them.

A reply's states are explicit:

    running ──stop(reason)──▶ stopping ──▶ saving ──▶ done
       └──────(stream ended)─────────────▶ saving ──▶ done

`stop` is a command: it records why and cancels the reply's *generation*
task, which the reply's own task awaits and owns; the reply's task itself is
never cancelled from outside, so nothing has to be uncancelled. Once the
reply is saving, a stop changes nothing (interrupting the save could lose the
reply or announce its end twice).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from tokenwire.chat.log import ReplyLog
from tokenwire.providers import ChatRequest

__all__ = ["Reply", "ReplyRegistry", "ReplyState", "StopReason"]

StopReason = Literal["stopped", "shutdown", "deleted", "timeout", "aborted"]
ReplyState = Literal["running", "stopping", "saving", "done"]


@dataclass(eq=False, slots=True)
class Reply:
    message_id: str
    conversation_id: str
    user_id: str
    sid: str | None
    request: ChatRequest
    log: ReplyLog
    # Loop times of the first reasoning and of the first text after it:
    # how long the model thought ("Thought for 12 s").
    thinking_from: float | None = None
    thinking_until: float | None = None
    task: asyncio.Task[None] | None = None  # the reply's life: generate, save, announce
    generation: asyncio.Task[object] | None = None  # the upstream stream; what stop cancels
    state: ReplyState = "running"
    stop_reason: StopReason | None = None
    checkpointed_parts: int = 0
    # The request has gone to the upstream, or waits in line, or will not go.
    under_way: asyncio.Event = field(default_factory=asyncio.Event)
    first_token: asyncio.Event = field(default_factory=asyncio.Event)  # sent, or none is coming
    committed: asyncio.Event = field(default_factory=asyncio.Event)  # the turn is in the database
    # True once the turn is committed, False if it never will be (aborted).
    written: asyncio.Future[bool] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future()
    )
    started_at: float = field(default_factory=lambda: asyncio.get_running_loop().time())
    started_wall: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def parts(self) -> list[str]:
        return self.log.parts

    @property
    def content(self) -> str:
        return self.log.text()

    @property
    def reasoning(self) -> str | None:
        return self.log.reasoning() or None

    def thinking_ms(self, now: float) -> int | None:
        if self.thinking_from is None:
            return None
        return round(((self.thinking_until or now) - self.thinking_from) * 1000)

    def stop(self, reason: StopReason) -> None:
        """Stop generating, for `reason` (the first reason given wins). No-op once saving."""
        if self.state in ("saving", "done"):
            return
        if self.stop_reason is None:
            self.stop_reason = reason
        self.state = "stopping"
        if self.generation is not None:
            self.generation.cancel()
        if reason == "aborted" and not self.written.done():
            self.written.set_result(False)


class ReplyRegistry:
    def __init__(self) -> None:
        self._by_id: dict[str, Reply] = {}
        self._by_sid: dict[str, Reply] = {}
        self._per_user: Counter[str] = Counter()
        # A conversation's running replies (joins, stops and deletes look them
        # up by conversation; walking every reply cost O(replies) per join).
        self._by_conversation: dict[str, list[Reply]] = {}
        # Which replies each follower key (a socket) follows, so a disconnect
        # unfollows them without walking every reply.
        self._following: dict[str, set[Reply]] = {}

    def add(self, reply: Reply) -> None:
        self._by_id[reply.message_id] = reply
        if reply.sid is not None:
            self._by_sid[reply.sid] = reply
        self._per_user[reply.user_id] += 1
        self._by_conversation.setdefault(reply.conversation_id, []).append(reply)

    def remove(self, reply: Reply) -> None:
        if self._by_id.pop(reply.message_id, None) is None:
            return
        if reply.sid is not None and self._by_sid.get(reply.sid) is reply:
            del self._by_sid[reply.sid]
        self._per_user[reply.user_id] -= 1
        if self._per_user[reply.user_id] <= 0:
            del self._per_user[reply.user_id]
        running = self._by_conversation.get(reply.conversation_id)
        if running is not None:
            running.remove(reply)
            if not running:
                del self._by_conversation[reply.conversation_id]
        for key in reply.log.followers():
            self._unindex(key, reply)
        reply.log.close()

    def followed(self, key: str, reply: Reply) -> None:
        self._following.setdefault(key, set()).add(reply)

    def unfollow(self, key: str, reply: Reply) -> None:
        reply.log.unfollow(key)
        self._unindex(key, reply)

    def following(self, key: str) -> list[Reply]:
        return list(self._following.get(key, ()))

    def detach(self, sid: str) -> Reply | None:
        """The socket is gone: it follows nothing now; the reply it started carries on."""
        reply = self._by_sid.pop(sid, None)
        if reply is not None:
            reply.sid = None
        for followed in self._following.pop(sid, ()):
            followed.log.unfollow(sid)
        return reply

    def _unindex(self, key: str, reply: Reply) -> None:
        replies = self._following.get(key)
        if replies is not None:
            replies.discard(reply)
            if not replies:
                del self._following[key]

    def for_sid(self, sid: str) -> Reply | None:
        return self._by_sid.get(sid)

    def get(self, message_id: str) -> Reply | None:
        return self._by_id.get(message_id)

    def count_for_user(self, user_id: str) -> int:
        return self._per_user.get(user_id, 0)

    def in_conversation(self, conversation_id: str) -> list[Reply]:
        return list(self._by_conversation.get(conversation_id, ()))

    def __iter__(self) -> Iterator[Reply]:
        return iter(list(self._by_id.values()))

    def __len__(self) -> int:
        return len(self._by_id)
