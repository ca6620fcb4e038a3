"""CPU per upstream token: tokenwire's lean SSE path against the official `openai` SDK.

Both read the same bytes (an OpenAI streaming reply, one event per network
read, as a real upstream sends them) from memory, so only the parsing
differs: tokenwire's reader (`providers/openai.py`: `SSEDecoder` + orjson,
dicts), fed by a stand-in for aiohttp's stream reader, against
`openai.AsyncOpenAI().chat.completions.create(stream=True)` over an
`httpx.MockTransport` (its SSE decoder + a pydantic `ChatCompletionChunk` per
event).

    uv run python bench/sse_parsers.py [--tokens 20000]
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson

CHUNK = {
    "id": "chatcmpl-bench",
    "object": "chat.completion.chunk",
    "created": 1700000000,
    "model": "gpt-4",
    "choices": [{"index": 0, "delta": {"content": " tok"}, "finish_reason": None}],
}


def _events(tokens: int) -> list[bytes]:
    token = b"data: " + orjson.dumps(CHUNK) + b"\n\n"
    finish = {**CHUNK, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    usage = {
        **CHUNK,
        "choices": [],
        "usage": {"prompt_tokens": 1, "completion_tokens": tokens, "total_tokens": tokens + 1},
    }
    return [
        *([token] * tokens),
        b"data: " + orjson.dumps(finish) + b"\n\n",
        b"data: " + orjson.dumps(usage) + b"\n\n",
        b"data: [DONE]\n\n",
    ]


class _Body(httpx.AsyncByteStream):
    def __init__(self, events: list[bytes]) -> None:
        self._events = events

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for event in self._events:
            yield event


def _client(events: list[bytes]) -> httpx.AsyncClient:
    def handler(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            200, headers={"content-type": "text/event-stream"}, stream=_Body(events)
        )

    return httpx.AsyncClient(transport=httpx.MockTransport(handler))


class _Content:
    """aiohttp's `StreamReader` as tokenwire reads it: one event per `readany()`."""

    def __init__(self, events: list[bytes]) -> None:
        self._events = iter(events)

    async def readany(self) -> bytes:
        return next(self._events, b"")


class _Response:
    def __init__(self, events: list[bytes]) -> None:
        self.content = _Content(events)


async def _lean(tokens: int) -> tuple[int, float]:
    from tokenwire.providers.openai import _read_completion

    response: Any = _Response(_events(tokens))
    started, count = time.process_time(), 0
    async for item in _read_completion(response, "gpt-4", 0.0):
        count += isinstance(item, str)
    return count, time.process_time() - started


async def _sdk(tokens: int) -> tuple[int, float]:
    import openai

    async with _client(_events(tokens)) as http:
        client = openai.AsyncOpenAI(
            api_key="sk-bench", base_url="http://upstream/v1", http_client=http
        )
        started, count = time.process_time(), 0
        stream = await client.chat.completions.create(
            model="gpt-4",
            messages=[{"role": "user", "content": "hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                count += 1
        return count, time.process_time() - started


async def _main(tokens: int) -> None:
    await _lean(100)  # warm imports and caches
    await _sdk(100)
    lean_n, lean_s = await _lean(tokens)
    sdk_n, sdk_s = await _sdk(tokens)
    assert lean_n == sdk_n == tokens, (lean_n, sdk_n)
    print(f"lean (SSEDecoder + orjson):          {lean_s / tokens * 1e6:6.1f} µs per token")
    print(f"openai SDK (pydantic chunk objects):   {sdk_s / tokens * 1e6:6.1f} µs per token")
    print(f"SDK / lean: {sdk_s / lean_s:.2f}×")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python bench/sse_parsers.py")
    parser.add_argument("--tokens", type=int, default=20000)
    asyncio.run(_main(parser.parse_args().tokens))


if __name__ == "__main__":
    main()
