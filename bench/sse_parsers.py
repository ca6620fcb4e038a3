"""CPU per upstream token: tokenwire's SSE reader against the official `openai` SDK.

Both read the same bytes (an OpenAI streaming reply from bench/upstream.py,
`--shape realistic` or `lean`, one event per network read, as a real upstream
sends them) from memory, so only the parsing differs: tokenwire's reader
(`providers/openai.py`: `SSEDecoder` + `_Completion.take`, the read loop's
per-read work) against `openai.AsyncOpenAI().chat.completions.create(stream=True)`
over an `httpx.MockTransport` (its SSE decoder + a pydantic
`ChatCompletionChunk` per event).

    uv run python bench/sse_parsers.py [--tokens 20000] [--shape lean]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx

if __package__ in (None, ""):  # `python bench/sse_parsers.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.upstream import _Reply


def _events(shape: str, tokens: int) -> list[bytes]:
    """The reply's SSE events, one per read, without HTTP's chunked framing."""
    reply = _Reply(shape, tokens)

    def unchunk(raw: bytes) -> list[bytes]:
        out = []
        while raw and not raw.startswith(b"0\r\n"):
            size, _, rest = raw.partition(b"\r\n")
            n = int(size, 16)
            out.append(rest[:n])
            raw = rest[n + 2 :]
        return out

    first = reply.first.split(b"\r\n\r\n", 1)[1]
    more = tokens - (shape == "lean")  # the lean shape's first write carries a token
    return [*unchunk(first), *([unchunk(reply.token)[0]] * more), *unchunk(reply.last)]


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


def _tokenwire(events: list[bytes]) -> tuple[int, float]:
    from tokenwire.providers.openai import _Completion
    from tokenwire.providers.sse import SSEDecoder

    started, count = time.process_time(), 0
    state, decoder = _Completion(), SSEDecoder()
    for chunk in events:
        count += len(state.take(decoder.feed(chunk)))
    assert state.done and state.finish_reason == "stop", "the reply did not end"
    return count, time.process_time() - started


async def _sdk(events: list[bytes]) -> tuple[int, float]:
    import openai

    async with _client(events) as http:
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


async def _main(shape: str, tokens: int) -> None:
    events = _events(shape, tokens)
    _tokenwire(_events(shape, 100))  # warm imports and caches
    await _sdk(_events(shape, 100))
    tw_n, tw_s = _tokenwire(events)
    sdk_n, sdk_s = await _sdk(events)
    assert tw_n == sdk_n == tokens, (tw_n, sdk_n)
    print(f"{shape} events ({len(events[1])} bytes each)")
    print(f"tokenwire (SSEDecoder + _Completion):  {tw_s / tokens * 1e6:6.2f} µs per token")
    print(f"openai SDK (pydantic chunk objects):   {sdk_s / tokens * 1e6:6.2f} µs per token")
    print(f"SDK / tokenwire: {sdk_s / tw_s:.1f}×")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python bench/sse_parsers.py")
    parser.add_argument("--tokens", type=int, default=20000)
    parser.add_argument("--shape", choices=("realistic", "lean"), default="realistic")
    args = parser.parse_args()
    asyncio.run(_main(args.shape, args.tokens))


if __name__ == "__main__":
    main()
