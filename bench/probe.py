"""Time to first token, straight from the upstream and through the gateway, alternately.

One process, one python-socketio client and one httpx client, so both paths
pay the same client-side costs and the difference is what the gateway adds.
Each sample asks for `--max-tokens` tokens and reads the reply to its end (the
connection is reused, as the gateway's own pool reuses its connections).
Prints one JSON line: {"direct": [seconds...], "via": [seconds...]}.

    python bench/probe.py --gateway http://127.0.0.1:8000 --upstream http://127.0.0.1:9100/v1 \
        --token JWT --samples 100
"""

from __future__ import annotations

import argparse
import asyncio
import time

import httpx
import orjson
import socketio


async def _direct(http: httpx.AsyncClient, url: str, max_tokens: int) -> float:
    body = {
        "model": "gpt-4",
        "messages": [{"role": "user", "content": "probe"}],
        "max_tokens": max_tokens,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    started = time.perf_counter()
    first = 0.0
    async with http.stream("POST", f"{url}/chat/completions", json=body) as response:
        async for line in response.aiter_lines():
            if first or not line.startswith("data: {"):
                continue
            chunk = orjson.loads(line[6:])
            choices = chunk.get("choices") or [{}]
            if (choices[0].get("delta") or {}).get("content"):
                first = time.perf_counter()
    return first - started


class _Via:
    def __init__(self, max_tokens: int) -> None:
        self.client = socketio.AsyncClient(reconnection=False)
        self.max_tokens = max_tokens
        self.first = 0.0
        self.done = asyncio.Event()
        self.client.on("chat:message", self._message, namespace="/ai")
        self.client.on("chat:end", self._end, namespace="/ai")
        self.client.on("chat:error", self._end, namespace="/ai")

    async def _message(self, _data: object, *_offset: object) -> None:
        if not self.first:
            self.first = time.perf_counter()

    async def _end(self, _data: object, *_offset: object) -> None:
        self.done.set()

    async def sample(self) -> float:
        self.first = 0.0
        self.done.clear()
        started = time.perf_counter()
        await self.client.emit(
            "chat:start", {"message": "probe", "maxTokens": self.max_tokens}, namespace="/ai"
        )
        await asyncio.wait_for(self.done.wait(), 30)
        return self.first - started if self.first else float("nan")


async def _main(args: argparse.Namespace) -> None:
    via = _Via(args.max_tokens)
    await via.client.connect(
        args.gateway,
        namespaces=["/ai"],
        auth={"token": args.token},
        transports=["websocket"],
        wait_timeout=20,
    )
    direct: list[float] = []
    through: list[float] = []
    async with httpx.AsyncClient(timeout=30) as http:
        for i in range(args.warmup + args.samples):
            # Alternate which path goes first so neither always gets the warmer caches.
            if i % 2:
                d = await _direct(http, args.upstream, args.max_tokens)
                v = await via.sample()
            else:
                v = await via.sample()
                d = await _direct(http, args.upstream, args.max_tokens)
            if i >= args.warmup:
                direct.append(d)
                through.append(v)
    await via.client.disconnect()
    print(orjson.dumps({"direct": direct, "via": through}).decode(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python bench/probe.py")
    parser.add_argument("--gateway", required=True)
    parser.add_argument("--upstream", required=True, help="base URL ending in /v1")
    parser.add_argument("--token", required=True)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--max-tokens", type=int, default=2)
    asyncio.run(_main(parser.parse_args()))


if __name__ == "__main__":
    main()
