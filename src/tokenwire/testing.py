"""Test helpers shipped with the package: an OpenAI-compatible upstream double and a server runner.

`UpstreamDouble` is a real HTTP server (any ASGI server runs it) that speaks
OpenAI's streaming chat-completions format. Each request takes the next
`Script` from its queue (or the default): tokens and their pace, an HTTP error
status, a dropped connection, a stall. It records every request body and
whether the client closed the connection before the end, which is how tests
prove that `chat:stop` really stops generation upstream.

It also does what real model servers do (issue 12): every stream opens with a
role-only chunk in a write of its own, as OpenAI, vLLM and llama.cpp do; a
`Script` can withhold the first token for long (`first_delay_s`), end with
`[DONE]` and no finish_reason, send no usage, answer 200 with an empty body,
or think first (`reasoning`, in either field name); the double itself can
list models' context windows (`models`, llama.cpp's `props`), refuse prompts
past a context (`context_words`) and serve one request at a time
(`max_concurrency`).

    python -m tokenwire.testing upstream --port 9100 --tokens-per-s 100

runs it standalone, for benchmarks and for trying clients against a fake model.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import socket
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import uvicorn

__all__ = ["Script", "UpstreamDouble", "UpstreamRequest", "free_port", "serve"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


@dataclass
class Script:
    """What the double does with one request."""

    tokens: list[str] | None = None  # None: "token0 token1 ..." of `count` tokens
    count: int = 5
    delay_s: float = 0.0  # between tokens
    first_delay_s: float = 0.0  # before the first token (after the headers)
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    error_body: dict[str, Any] | None = None
    finish_reason: str | None = "stop"  # None: no chunk carries one (a truncated stream)
    usage: bool = True
    empty: bool = False  # HTTP 200 with an empty body (llama.cpp, prompt past its context)
    done: bool = True  # send `data: [DONE]`
    drop_after: int | None = None  # close the connection abruptly after this many tokens
    stall_after: int | None = None  # after this many tokens, go silent (until the client leaves)
    # A reasoning model's thinking, streamed before the text, `delay_s` apart,
    # in the delta field DeepSeek and vLLM use ("reasoning_content") or the
    # one OpenRouter and others use ("reasoning").
    reasoning: list[str] = field(default_factory=list)
    reasoning_field: str = "reasoning_content"

    def token_list(self) -> list[str]:
        if self.tokens is not None:
            return list(self.tokens)
        return [f"token{i} " for i in range(self.count)]


@dataclass
class UpstreamRequest:
    body: dict[str, Any]
    headers: dict[str, str]
    sent: list[str] = field(default_factory=list)
    closed_by_client: bool = False
    finished: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def messages(self) -> list[dict[str, str]]:
        messages: list[dict[str, str]] = self.body.get("messages", [])
        return messages


class _Dropped(Exception):
    """Raised inside the app to make the server cut the connection mid-body."""


class UpstreamDouble:
    def __init__(self, default: Script | None = None) -> None:
        self.default = default or Script()
        self.scripts: deque[Script] = deque()
        self.requests: list[UpstreamRequest] = []
        self.active = 0
        # What /v1/models lists, with any extra fields per model (vLLM's
        # `max_model_len`, llama.cpp's `meta`); `props` is llama.cpp's /props.
        # None: /v1/models fails with HTTP 500.
        self.models: dict[str, dict[str, Any]] | None = {"gpt-4": {}}
        self.props: dict[str, Any] | None = None
        self.model_requests = 0
        # Like llama.cpp: a prompt of more words than this gets HTTP 200 and an empty body.
        self.context_words: int | None = None
        # Like llama.cpp and Ollama: serve this many requests at once; the rest wait.
        self.max_concurrency: int | None = None
        self.peak_active = 0
        self._slots: asyncio.Semaphore | None = None

    def enqueue(self, *scripts: Script) -> None:
        self.scripts.extend(scripts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        if scope["path"].rstrip("/").endswith("/models"):
            self.model_requests += 1
            if self.models is None:
                await _send_json(send, 500, {"error": {"message": "no models here"}})
                return
            data = [{"id": name, "object": "model", **extra} for name, extra in self.models.items()]
            await _send_json(send, 200, {"object": "list", "data": data})
            return
        if scope["path"].rstrip("/") == "/props" and self.props is not None:
            await _send_json(send, 200, self.props)
            return
        if not scope["path"].rstrip("/").endswith("/chat/completions") or scope["method"] != "POST":
            await _send_json(send, 404, {"error": {"message": "not found"}})
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            parsed = orjson.loads(body)
        except orjson.JSONDecodeError:
            await _send_json(send, 400, {"error": {"message": "invalid JSON"}})
            return
        request = UpstreamRequest(parsed, headers)
        self.requests.append(request)
        script = self.scripts.popleft() if self.scripts else self.default
        if self.context_words is not None and _words(request) > self.context_words:
            script = Script(empty=True)
        if self.max_concurrency is not None and self._slots is None:
            self._slots = asyncio.Semaphore(self.max_concurrency)
        async with self._slots or contextlib.nullcontext():
            self.active += 1
            self.peak_active = max(self.peak_active, self.active)
            try:
                await self._respond(script, request, receive, send)
            finally:
                self.active -= 1
                request.finished.set()

    async def _respond(
        self, script: Script, request: UpstreamRequest, receive: Receive, send: Send
    ) -> None:
        if script.status != 200:
            body = script.error_body or {
                "error": {"message": f"scripted {script.status}", "type": "test"}
            }
            await _send_json(send, script.status, body, script.headers)
            return
        disconnected = asyncio.Event()

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            disconnected.set()

        watcher = asyncio.create_task(watch())
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": 200,
                    "headers": [
                        (b"content-type", b"text/event-stream"),
                        (b"cache-control", b"no-cache"),
                    ],
                }
            )
            if script.empty:
                await send({"type": "http.response.body", "body": b"", "more_body": False})
                return
            await self._stream(script, request, send, disconnected)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            if disconnected.is_set():
                request.closed_by_client = True

    async def _stream(
        self, script: Script, request: UpstreamRequest, send: Send, disconnected: asyncio.Event
    ) -> None:
        model = str(request.body.get("model", "gpt-4"))
        ident = f"chatcmpl-{len(self.requests)}"
        created = int(time.time())

        async def event(payload: dict[str, Any] | str) -> None:
            data = payload if isinstance(payload, str) else orjson.dumps(payload).decode()
            await send(
                {
                    "type": "http.response.body",
                    "body": f"data: {data}\n\n".encode(),
                    "more_body": True,
                }
            )

        def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
            return {
                "id": ident,
                "object": "chat.completion.chunk",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
            }

        async def pause(seconds: float) -> bool:
            """Sleep, or return True as soon as the client has gone."""
            if seconds <= 0:
                await asyncio.sleep(0)
                return disconnected.is_set()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(disconnected.wait(), seconds)
            return disconnected.is_set()

        await event(chunk({"role": "assistant", "content": ""}))
        if await pause(script.first_delay_s):
            return
        for index, thought in enumerate(script.reasoning):
            if index and await pause(script.delay_s):
                return
            await event(chunk({script.reasoning_field: thought}))
        if script.reasoning and await pause(script.delay_s):
            return
        tokens = script.token_list()
        for index, token in enumerate(tokens):
            if script.drop_after is not None and index >= script.drop_after:
                raise _Dropped()
            if script.stall_after is not None and index >= script.stall_after:
                await disconnected.wait()
                return
            if index and await pause(script.delay_s):
                return
            if disconnected.is_set():
                return
            await event(chunk({"content": token}))
            request.sent.append(token)
        if script.finish_reason is not None:
            await event(chunk({}, script.finish_reason))
        if script.usage:
            prompt = _words(request)
            await event(
                {
                    "id": ident,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "choices": [],
                    "usage": {
                        "prompt_tokens": prompt,
                        "completion_tokens": len(tokens),
                        "total_tokens": prompt + len(tokens),
                    },
                }
            )
        if script.done:
            await event("[DONE]")
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _words(request: UpstreamRequest) -> int:
    """The double's token count of a prompt: its words."""
    return sum(len(str(m.get("content", "")).split()) for m in request.messages)


async def _send_json(
    send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    raw = orjson.dumps(body)
    header_list = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(raw)).encode()),
    ]
    header_list += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": header_list})
    await send({"type": "http.response.body", "body": raw})


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@asynccontextmanager
async def serve(app: Any, *, port: int | None = None, **config: Any) -> AsyncIterator[str]:
    """Run an ASGI app on uvicorn in this event loop, on a real port; yields its base URL.

    WebSockets use the protocol `tokenwire serve` runs, so tests exercise it.
    """
    from tokenwire.server import LeanWebSocketProtocol

    port = port or free_port()
    options: dict[str, Any] = {
        "log_config": None,
        "access_log": False,
        "lifespan": "on",
        "ws": LeanWebSocketProtocol,
        "ws_ping_interval": None,  # Socket.IO runs its own heartbeat, as in production
        "ws_ping_timeout": None,
        # Long-polling requests left open by departed clients must not hold
        # up the end of a test.
        "timeout_graceful_shutdown": 2,
    }
    options.update(config)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, **options))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("server exited before it started")
        await asyncio.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await task


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tokenwire.testing")
    sub = parser.add_subparsers(dest="command", required=True)
    upstream = sub.add_parser("upstream", help="serve the OpenAI-compatible upstream double")
    upstream.add_argument("--host", default="127.0.0.1")
    upstream.add_argument("--port", type=int, default=9100)
    upstream.add_argument("--tokens", type=int, default=100, help="tokens per reply")
    upstream.add_argument("--tokens-per-s", type=float, default=50.0)
    upstream.add_argument("--first-delay-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    script = Script(
        count=args.tokens, delay_s=1 / args.tokens_per_s, first_delay_s=args.first_delay_ms / 1000
    )
    uvicorn.run(
        UpstreamDouble(script),
        host=args.host,
        port=args.port,
        log_level="warning",
        loop="uvloop",
        http="httptools",
        lifespan="on",
        backlog=4096,
    )


if __name__ == "__main__":
    main()
