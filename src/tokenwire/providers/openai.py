"""OpenAI-compatible chat completions over HTTP: OpenAI, vLLM, Ollama, llama.cpp, gateways.

The wire format is the contract (`POST {base}/chat/completions` with
`stream: true` and `stream_options.include_usage`), so this speaks it directly
with aiohttp and orjson instead of the `openai` SDK, which builds a pydantic
object per chunk: parsing cost 3 µs per token here against 111 µs through the
SDK (`bench/sse_parsers.py`). aiohttp rather than httpx because its C HTTP
parser halves the cost of reading a stream: 25-28 µs per SSE event against
54-55 µs, 100 streams x 300 events from `bench/upstream.py` on uvloop.

Errors are translated here, where they enter: 429 becomes
`UpstreamRateLimited` (with Retry-After), a refused or dropped connection and
every other status becomes `UpstreamError`. Before the first byte of a reply
the request is retried with exponential backoff; once data has arrived it
never is, because the client has seen it.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import math
import random
import re
import time
from collections.abc import AsyncGenerator, Mapping
from typing import Any

import aiohttp
import orjson

from tokenwire.errors import UpstreamError, UpstreamRateLimited
from tokenwire.pacing import Beat
from tokenwire.providers.base import ChatRequest, Reasoning, StreamEnd, Usage
from tokenwire.providers.sse import SSEDecoder

__all__ = ["OpenAIProvider"]

log = logging.getLogger(__name__)

_RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
_MAX_RETRY_AFTER_S = 10.0  # longer waits go back to the user as RATE_LIMIT
_WINDOWS_TTL_S = 600.0  # how long discovered context windows are trusted
_WINDOWS_RETRY_S = 60.0  # after a failed discovery
_DISCOVERY_TIMEOUT = aiohttp.ClientTimeout(total=5)  # for /models and /props
_EMPTY_BODY = (
    "The model server sent back an empty reply. The conversation may be too long "
    "for this model: start a new one or send a shorter message."
)


class OpenAIProvider:
    name = "openai"

    def __init__(
        self,
        client: aiohttp.ClientSession,
        *,
        base_url: str,
        api_key: str | None,
        retries: int = 2,
        backoff_s: float = 0.5,
        pace_s: float = 0.0,
    ) -> None:
        self._client = client
        self._url = f"{base_url.rstrip('/')}/chat/completions"
        self._headers = {"Accept": "text/event-stream", "Content-Type": "application/json"}
        if api_key:
            self._headers["Authorization"] = f"Bearer {api_key}"
        self._retries = retries
        self._backoff_s = backoff_s
        self._models_url = f"{base_url.rstrip('/')}/models"
        self._props_url = f"{base_url.rstrip('/').removesuffix('/v1')}/props"
        self._windows: dict[str, int] = {}
        self._windows_until = -math.inf  # monotonic time the discovered windows expire
        self._discovery: asyncio.Task[None] | None = None
        # Reads after the first text wait for the shared beat (tokenwire.pacing).
        self._beat = Beat(pace_s) if pace_s > 0 else None

    async def context_window(self, model: str) -> int | None:
        """The model's context window as the upstream's /v1/models reports it; None if it does not.

        vLLM says `max_model_len`; llama.cpp's server `meta.n_ctx_train`, and
        the context it actually runs with in `/props`
        (`default_generation_settings.n_ctx`), the smaller of the two being
        the one that counts; LM Studio and OpenRouter say `context_length`.
        OpenAI's API and llama-cpp-python say nothing (set MODEL_CONTEXT).
        One request serves every model and turn for _WINDOWS_TTL_S; a failed
        one is tolerated (unknown) and tried again after _WINDOWS_RETRY_S.
        """
        if time.monotonic() >= self._windows_until:
            first = self._windows_until == -math.inf
            if self._discovery is None:
                self._discovery = asyncio.create_task(self._discover())
            if first:
                # Shielded: a turn that is cancelled leaves the look-up to the others.
                await asyncio.shield(self._discovery)
            # Later refreshes run behind the turns, which use what was known.
        return self._windows.get(model)

    async def _discover(self) -> None:
        try:
            windows = await self._fetch_windows()
            self._windows_until = time.monotonic() + _WINDOWS_TTL_S
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning(
                "could not learn the models' context windows from %s: %s (set MODEL_CONTEXT)",
                self._models_url,
                type(exc).__name__,
            )
            windows = {}
            self._windows_until = time.monotonic() + _WINDOWS_RETRY_S
        finally:
            self._discovery = None
        self._windows = windows

    async def _fetch_windows(self) -> dict[str, int]:
        async with self._client.get(
            self._models_url, headers=self._headers, timeout=_DISCOVERY_TIMEOUT
        ) as response:
            if response.status != 200:
                raise ValueError(f"HTTP {response.status}")
            listed: Any = orjson.loads(await response.read())
        entries = listed.get("data") if isinstance(listed, dict) else None
        windows: dict[str, int] = {}
        llama_cpp = False
        for entry in entries if isinstance(entries, list) else ():
            if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
                continue
            meta = entry.get("meta")
            meta = meta if isinstance(meta, dict) else {}
            size = _tokens(entry.get("max_model_len")) or _tokens(entry.get("context_length"))
            if size is None and (size := _tokens(meta.get("n_ctx_train"))) is not None:
                llama_cpp = True
            if size is not None:
                windows[entry["id"]] = size
        if llama_cpp:
            running = await self._llama_cpp_context()
            if running is not None:
                windows = {name: min(size, running) for name, size in windows.items()}
        return windows

    async def _llama_cpp_context(self) -> int | None:
        """llama.cpp's running context (`-c`), which may be smaller than the model's n_ctx_train."""
        try:
            async with self._client.get(
                self._props_url, headers=self._headers, timeout=_DISCOVERY_TIMEOUT
            ) as response:
                if response.status != 200:
                    return None
                props: Any = orjson.loads(await response.read())
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        settings = props.get("default_generation_settings") if isinstance(props, dict) else None
        return _tokens(settings.get("n_ctx")) if isinstance(settings, dict) else None

    async def stream(self, request: ChatRequest) -> AsyncGenerator[str | StreamEnd, None]:
        """Deltas of one completion: all that one read brought, joined; then one `StreamEnd`.

        With a beat (STREAM_FLUSH_MS > 0), reads return as soon as bytes arrive
        until the first text has been yielded; after each later read the
        reader waits for the next beat, shared by every reply
        (`tokenwire.pacing`), letting tokens collect in the socket buffer. A
        reply then costs one wake-up per frame sent instead of one per token,
        all replies' frames go out together, and no token waits longer than
        the writer's coalescing would make it wait anyway.

        The read loop is written out here rather than in a generator of its
        own that this one would relay: each delta then passes through one
        generator instead of two (bench: the reader alone, 1,000 streams of
        50 tok/s, ~5% less CPU).
        """
        response = await self._open(request)
        # From here on the reply belongs to the client: no retry. Leaving this
        # block early (stop, timeout) closes the connection, so the upstream
        # stops generating.
        async with response:
            model = request.model
            state = _Completion()
            decoder = SSEDecoder()
            content_stream = response.content
            beat = self._beat
            # Between beats the socket is left unread (`Beat.wait(hold=...)`);
            # only the transport is paused, so aiohttp's parser and its own
            # flow control are untouched.
            connection = response.connection
            # Only once text has gone out: every OpenAI-compatible server
            # opens with a role-only chunk (`{"role": "assistant", "content":
            # ""}`) in a write of its own, and waiting for the beat after it
            # held every reply's first token back by up to STREAM_FLUSH_MS.
            paced = False
            transport = (
                connection.transport if beat is not None and connection is not None else None
            )
            try:
                while True:
                    chunk = await content_stream.readany()
                    state.received += len(chunk)
                    texts = state.take(decoder.feed(chunk) if chunk else decoder.close())
                    if state.thoughts:
                        # Thinking does not start the beat: the first text
                        # after it must still go out at once.
                        yield Reasoning("".join(state.thoughts))
                        state.thoughts.clear()
                    if texts:
                        yield texts[0] if len(texts) == 1 else "".join(texts)
                        paced = True
                    if state.failure is not None:
                        raise state.failure
                    if state.done or not chunk:
                        break
                    if paced and beat is not None:
                        await beat.wait(hold=transport)
            except (aiohttp.ClientError, TimeoutError) as exc:
                # A connection dropped mid-reply (ClientPayloadError, ServerDisconnectedError, ...).
                raise state.broken(f"the connection broke ({type(exc).__name__})") from exc
            finally:
                if transport is not None and beat is not None:
                    beat.let_go(transport)  # never hand a paused connection back to the pool
        if state.received == 0:
            # llama.cpp answers a prompt longer than its context this way.
            raise state.broken("HTTP 200 with an empty body", message=_EMPTY_BODY)
        if state.finish_reason is None:
            # A reply is complete only when the upstream says why it ended.
            # llama.cpp (interrupt_requests) ends a running stream for a new
            # request with [DONE] and no finish_reason: that is a truncation.
            where = "[DONE] without a finish_reason" if state.done else "the body ended early"
            raise state.broken(where)
        yield StreamEnd(state.finish_reason, state.usage, state.model or model)

    async def _open(self, request: ChatRequest) -> aiohttp.ClientResponse:
        """The response to the completion request, status 200; retried until then."""
        body = orjson.dumps(
            {
                "model": request.model,
                "messages": request.messages,
                "max_tokens": request.max_tokens,
                "temperature": request.temperature,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
        )
        attempt = 0
        while True:
            try:
                response = await self._client.post(self._url, data=body, headers=self._headers)
                if response.status == 200:
                    return response
                async with response:
                    raise _status_error(response.status, response.headers, await response.read())
            except (aiohttp.ClientError, TimeoutError) as exc:
                # Raised while connecting or waiting for the status line:
                # nothing was streamed yet, so the attempt can be retried.
                log.warning("upstream unreachable: %s", type(exc).__name__)
                error: UpstreamError = UpstreamError(retryable=True)
                error.__cause__ = exc
            except UpstreamError as exc:
                error = exc
            if attempt >= self._retries or not error.retryable:
                raise error
            delay = error.retry_after if error.retry_after is not None else self._backoff(attempt)
            if delay > _MAX_RETRY_AFTER_S:
                raise error
            attempt += 1
            log.warning(
                "upstream attempt %d failed (%s); retrying in %.2fs", attempt, error.code, delay
            )
            await asyncio.sleep(delay)

    def _backoff(self, attempt: int) -> float:
        return self._backoff_s * float(2**attempt) * (0.5 + random.random() / 2)


class _Completion:
    """What the events of one completion said so far."""

    __slots__ = (
        "done",
        "events",
        "failure",
        "finish_reason",
        "last_event",
        "model",
        "received",
        "seen_data",
        "texts",
        "thoughts",
        "usage",
    )

    def __init__(self) -> None:
        self.finish_reason: str | None = None
        self.usage: Usage | None = None
        self.model: str | None = None
        self.seen_data = False
        self.done = False  # [DONE] arrived
        self.failure: UpstreamError | None = None
        # For the log when the stream breaks: how far it got.
        self.received = 0  # bytes of body
        self.events = 0
        self.texts = 0
        self.last_event = b""
        self.thoughts: list[str] = []  # reasoning deltas of the current read

    def broken(
        self, where: str, *, body: bytes | None = None, message: str | None = None
    ) -> UpstreamError:
        """The error for a stream that failed after HTTP 200, logged with where and how far."""
        log.warning(
            "upstream stream failed after HTTP 200: %s; %d bytes, %d events, %d text deltas "
            "received; %s %.300r",
            where,
            self.received,
            self.events,
            self.texts,
            "error body:" if body is not None else "last event:",
            redact(body if body is not None else self.last_event),
        )
        return UpstreamError(message, retryable=not self.seen_data)

    def take(self, events: list[bytes]) -> list[str]:
        """The text deltas of `events` (the data of one read's SSE events), in order.

        Stops at `[DONE]` (`done`) or at an error or garbage event
        (`failure`); text that came before the failure is still returned,
        so it reaches the client and is saved with the error.
        """
        texts: list[str] = []
        for data in events:
            self.events += 1
            if data == b"[DONE]":
                self.done = True
                break
            try:
                parsed: Any = orjson.loads(data)
            except orjson.JSONDecodeError:
                parsed = None
            if not isinstance(parsed, dict) or "error" in parsed:
                what = "an error event" if isinstance(parsed, dict) else "an event that is not JSON"
                self.failure = self.broken(what, body=data)
                break
            self.last_event = data
            self.seen_data = True
            self.model = parsed.get("model") or self.model
            for choice in parsed.get("choices") or ():
                delta = choice.get("delta")
                if delta:
                    text = delta.get("content")
                    if text:
                        texts.append(text)
                        self.texts += 1
                    else:
                        # Thinking comes in deltas without text: DeepSeek,
                        # vLLM's reasoning parsers and llama.cpp
                        # --reasoning-format send `reasoning_content`, others
                        # `reasoning`. Text deltas skip both look-ups.
                        thought = delta.get("reasoning_content") or delta.get("reasoning")
                        if thought and isinstance(thought, str):
                            self.thoughts.append(thought)
                if choice.get("finish_reason"):
                    self.finish_reason = choice["finish_reason"]
            if parsed.get("usage"):
                self.usage = _usage(parsed["usage"])
        return texts


def _tokens(value: Any) -> int | None:
    return value if type(value) is int and value > 0 else None


def _usage(raw: Any) -> Usage | None:
    try:
        return Usage(int(raw["prompt_tokens"]), int(raw["completion_tokens"]))
    except (KeyError, TypeError, ValueError):
        return None


def _status_error(status: int, headers: Mapping[str, str], body: bytes) -> UpstreamError:
    retryable = status in _RETRYABLE_STATUS
    if status == 429:
        return UpstreamRateLimited(retry_after=_retry_after(headers), retryable=True)
    if status in (401, 403):
        # A server misconfiguration (bad key), not the user's fault: loud in
        # the log, vague on the wire.
        log.error("upstream refused our credentials (HTTP %d); check OPENAI_API_KEY", status)
    else:
        log.warning("upstream answered HTTP %d: %.300r", status, redact(body))
    return UpstreamError(retryable=retryable)


_SECRETS = re.compile(rb"(sk-[A-Za-z0-9_-]{6})[A-Za-z0-9_-]+|(Bearer\s+)\S+", re.IGNORECASE)


def redact(body: bytes) -> bytes:
    """An upstream body fit for the log: anything shaped like a key or a bearer token cut.

    Upstreams echo request headers or keys in some errors (gateways, proxies).
    """
    return _SECRETS.sub(lambda m: (m.group(1) or m.group(2)) + b"[redacted]", body)


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from `retry-after-ms` or `Retry-After` (seconds or an HTTP date)."""
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(float(ms) / 1000, 0.001)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(float(value), 0.001)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(when.timestamp() - time.time(), 0.001)
