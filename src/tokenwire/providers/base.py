"""What every upstream model provider offers the chat service.

A provider turns a `ChatRequest` into an async stream of text deltas (plain
`str`, the hot path: no object per token) closed by exactly one `StreamEnd`.
A reasoning model's thinking comes as `Reasoning`, a `str` subclass, so the
text path still checks one exact type.
Failures are raised as `errors.UpstreamError` subclasses; providers never
touch storage or sockets.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import Protocol

__all__ = ["ChatMessage", "ChatRequest", "Provider", "Reasoning", "StreamEnd", "Usage"]

ChatMessage = dict[str, str]  # {"role": ..., "content": ...}, as OpenAI's API takes it


@dataclass(slots=True, frozen=True)
class ChatRequest:
    model: str
    messages: list[ChatMessage]
    max_tokens: int
    temperature: float


@dataclass(slots=True, frozen=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int


@dataclass(slots=True, frozen=True)
class StreamEnd:
    finish_reason: str
    usage: Usage | None = None
    model: str | None = None


class Reasoning(str):
    """A piece of the model's thinking: shown and saved beside the reply, never sent back."""

    __slots__ = ()


class Provider(Protocol):
    name: str

    async def context_window(self, model: str) -> int | None:
        """The model's context window in tokens, if the upstream says; None when unknown."""
        ...

    def stream(self, request: ChatRequest) -> AsyncGenerator[str | StreamEnd, None]:
        """Yield text deltas (and `Reasoning`), then one `StreamEnd`; raise `UpstreamError` on failure."""
        ...
