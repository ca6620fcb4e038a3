"""OpenAI-compatible streaming upstreams for load tests, in two shapes.

`python -m tokenwire.testing upstream` is an ASGI app on uvicorn: every token
goes through an ASGI `send`, an `orjson.dumps` and an f-string, which costs
the upstream tens of microseconds per token. At the loads the benchmark drives
(up to ~100,000 tokens/s on a 2-core machine that also runs the gateway and
the clients) that double would compete with the gateway for the CPU it is
measured on. This one is a bare asyncio protocol on uvloop: each reply's
events are encoded once when it starts, and one timer per stream writes them
at the configured pace, so the upstream stays a small part of the machine
(`bench/run.py` reports its CPU next to every figure).

It speaks the part of the API the gateways use: `POST .../chat/completions`
with `stream: true` answers `text/event-stream` (chunked, keep-alive) with
`--tokens` content chunks of " tok" (`max_tokens` in the request caps the
count), a finish chunk, a usage chunk and `data: [DONE]`.

`--shape realistic` (the default) streams the way OpenAI does, and vLLM and
llama.cpp alike: the headers and a first event carrying only
`{"role": "assistant", "content": ""}` go out at once, then each token is its
own event in its own write, the first one a token interval later; every event
carries what OpenAI's do (`id`, `object`, `created`, `model`,
`system_fingerprint`, `service_tier`, `usage: null` since the request asks
for usage, `choices[0].index/delta/logprobs/finish_reason`), ~300 bytes of
JSON per token. `--shape lean` is the double the figures before it were
measured with: the headers, the role event and the first token in one write,
then short events (~150 bytes) with only `id`, `object`, `created`, `model`
and `choices`. That first write hid the first-token delay of a reader that
waits for a beat after the role event (issue 12), and the short events
undercount the parsing every real upstream costs.

    python bench/upstream.py --port 9100 --tokens 300 --tokens-per-s 100 [--shape lean]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import signal

import orjson
import uvloop

TOKEN = " tok"  # 4 characters: clients count tokens as characters / 4
SHAPES = ("realistic", "lean")

_HEADERS = (
    b"HTTP/1.1 200 OK\r\n"
    b"content-type: text/event-stream\r\n"
    b"cache-control: no-cache\r\n"
    b"transfer-encoding: chunked\r\n\r\n"
)
_ids = itertools.count(1)


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _event(payload: object) -> bytes:
    data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
    return _chunked(b"data: " + data + b"\n\n")


_DONE = _event(b"[DONE]") + b"0\r\n\r\n"


class _Reply:
    """The encoded events of one reply: role (with the headers), token, finish + usage + done."""

    __slots__ = ("first", "last", "token")

    def __init__(self, shape: str, count: int) -> None:
        if shape == "lean":
            base: dict[str, object] = {
                "id": "chatcmpl-bench",
                "object": "chat.completion.chunk",
                "created": 1700000000,
                "model": "gpt-4",
            }
            logprobs: dict[str, object] = {}
            tail: dict[str, object] = {}
            usage_extra: dict[str, object] = {}
        else:
            # One id per reply, as OpenAI's (29 characters after the prefix).
            base = {
                "id": f"chatcmpl-B{next(_ids):028d}",
                "object": "chat.completion.chunk",
                "created": 1764547200,
                "model": "gpt-4o-mini-2024-07-18",
                "service_tier": "default",
                "system_fingerprint": "fp_560af6e559",
            }
            logprobs = {"logprobs": None}
            tail = {"usage": None}  # in every event when the request asks for usage
            usage_extra = {
                "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
                "completion_tokens_details": {
                    "reasoning_tokens": 0,
                    "audio_tokens": 0,
                    "accepted_prediction_tokens": 0,
                    "rejected_prediction_tokens": 0,
                },
            }

        def chunk(delta: dict[str, object], finish: str | None = None) -> bytes:
            # In OpenAI's order of keys.
            choice = {"index": 0, "delta": delta, **logprobs, "finish_reason": finish}
            return _event({**base, "choices": [choice], **tail})

        role_delta: dict[str, object] = {"role": "assistant", "content": ""}
        if shape != "lean":
            role_delta["refusal"] = None
        usage = {"prompt_tokens": 1, "completion_tokens": count, "total_tokens": count + 1}
        self.token = chunk({"content": TOKEN})
        self.first = _HEADERS + chunk(role_delta)
        if shape == "lean":
            self.first += self.token  # the first token rides with the headers
        self.last = (
            chunk({}, "stop")
            + _event({**base, "choices": [], "usage": usage | usage_extra})
            + _DONE
        )


def _json_response(status: str, body: object) -> bytes:
    raw = orjson.dumps(body)
    return b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (
        status.encode(),
        len(raw),
        raw,
    )


class _Connection(asyncio.Protocol):
    def __init__(self, shape: str, tokens: int, interval: float) -> None:
        self._shape = shape
        self._tokens = tokens
        self._interval = interval
        # The lean shape sends its first token with the headers; the
        # realistic one a token interval after the role event.
        self._lag = 0 if shape == "lean" else 1
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._buffer = b""
        self._timer: asyncio.TimerHandle | None = None
        self._reply: _Reply | None = None
        self._left = 0
        self._count = 0
        self._start = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is not a subclass

    def connection_lost(self, _exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end < 0:
            return
        head = self._buffer[:end].decode("latin-1")
        length = 0
        for line in head.split("\r\n")[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        if len(self._buffer) < end + 4 + length:
            return
        body = self._buffer[end + 4 : end + 4 + length]
        self._buffer = self._buffer[end + 4 + length :]
        method, path, _ = head.split(" ", 2)
        self._respond(method, path, body)

    def _respond(self, method: str, path: str, body: bytes) -> None:
        transport = self._transport
        if transport is None:
            return
        path = path.split("?", 1)[0].rstrip("/")
        if path.endswith("/models"):
            transport.write(_json_response("200 OK", {"object": "list", "data": [{"id": "gpt-4"}]}))
            return
        if method != "POST" or not path.endswith("/chat/completions"):
            transport.write(_json_response("404 Not Found", {"error": {"message": "not found"}}))
            return
        try:
            request = orjson.loads(body)
            cap = int(request.get("max_tokens") or self._tokens)
        except (orjson.JSONDecodeError, AttributeError, TypeError, ValueError):
            transport.write(_json_response("400 Bad Request", {"error": {"message": "bad JSON"}}))
            return
        self._count = self._left = max(1, min(cap, self._tokens))
        self._start = self._loop.time()
        self._reply = reply = _Reply(self._shape, self._count)
        self._left -= 1 - self._lag
        transport.write(reply.first)
        self._schedule()

    def _schedule(self) -> None:
        if self._left <= 0:
            self._finish()
            return
        due = self._count - self._left + self._lag
        self._timer = self._loop.call_at(self._start + due * self._interval, self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self._transport is None:
            return
        self._left -= 1
        assert self._reply is not None
        self._transport.write(self._reply.token)
        self._schedule()

    def _finish(self) -> None:
        if self._transport is not None and self._reply is not None:
            self._transport.write(self._reply.last)


async def _serve(host: str, port: int, shape: str, tokens: int, tokens_per_s: float) -> None:
    loop = asyncio.get_running_loop()
    interval = 1 / tokens_per_s
    server = await loop.create_server(
        lambda: _Connection(shape, tokens, interval), host, port, backlog=4096, reuse_address=True
    )
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python bench/upstream.py", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--tokens", type=int, default=100, help="tokens per reply")
    parser.add_argument("--tokens-per-s", type=float, default=50.0)
    parser.add_argument("--shape", choices=SHAPES, default="realistic")
    args = parser.parse_args(argv)
    uvloop.run(_serve(args.host, args.port, args.shape, args.tokens, args.tokens_per_s))


if __name__ == "__main__":
    main()
