"""The built-in demo model: streams a readable reply with no keys and no network.

It is the default when no upstream is configured, so the Quick start works on a
fresh machine. The reply says what it is and how to connect a real model, and
streams word by word at DEMO_TOKENS_PER_S like a real model would.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator

from tokenwire.providers.base import ChatRequest, StreamEnd, Usage
from tokenwire.tokens import count_messages, count_text

__all__ = ["DemoProvider"]

_PIECES = re.compile(r"\s*\S+|\s+")

_REPLY = (
    "Hello! I'm the **tokenwire demo model**: no AI is connected yet, so I can only "
    "echo you. You said: “{excerpt}”.\n\n"
    "To talk to a real model, set these in `.env` and restart `tokenwire serve`:\n\n"
    "- `OPENAI_API_KEY=sk-...` for OpenAI, or\n"
    "- `OPENAI_BASE_URL=http://localhost:11434/v1` for any OpenAI-compatible server "
    "(Ollama, vLLM, llama.cpp), with `DEFAULT_MODEL` naming one of its models.\n\n"
    "Everything else, streaming, stop, history and saved conversations, already works "
    "exactly as it will with a real model."
)


class DemoProvider:
    name = "demo"

    def __init__(self, tokens_per_s: float = 40.0) -> None:
        self._delay = 1.0 / tokens_per_s

    async def context_window(self, model: str) -> int | None:  # noqa: ARG002 - the Provider protocol
        return None  # the demo model reads anything

    async def stream(self, request: ChatRequest) -> AsyncGenerator[str | StreamEnd, None]:
        last = request.messages[-1]["content"] if request.messages else ""
        excerpt = " ".join(last.split())
        if len(excerpt) > 80:
            excerpt = excerpt[:77] + "..."
        text = _REPLY.format(excerpt=excerpt)
        pieces = _PIECES.findall(text)
        budget = request.max_tokens
        for piece in pieces[:budget]:
            await asyncio.sleep(self._delay)
            yield piece
        sent = "".join(pieces[:budget])
        usage = Usage(count_messages(request.messages), count_text(sent))
        yield StreamEnd("stop" if budget >= len(pieces) else "length", usage, request.model)
