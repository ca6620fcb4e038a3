"""Upstream model providers: an OpenAI-compatible HTTP client and the demo model."""

from tokenwire.providers.base import (
    ChatMessage,
    ChatRequest,
    Provider,
    Reasoning,
    StreamEnd,
    Usage,
)

__all__ = ["ChatMessage", "ChatRequest", "Provider", "Reasoning", "StreamEnd", "Usage"]
