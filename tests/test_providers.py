"""The upstream side: SSE parsing, Retry-After, usage fallback, the demo model."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from typing import Any

import pytest

from tests.conftest import Client, Gateway, GatewayFactory
from tokenwire.providers import ChatRequest, StreamEnd
from tokenwire.providers.demo import DemoProvider
from tokenwire.providers.openai import _retry_after
from tokenwire.providers.sse import iter_sse_data
from tokenwire.testing import Script
from tokenwire.tokens import count_messages, count_text, most_tokens, trim_history


async def _chunks(*parts: bytes) -> AsyncIterator[bytes]:
    for part in parts:
        yield part


async def _collect(*parts: bytes) -> list[bytes]:
    return [data async for data in iter_sse_data(_chunks(*parts))]


async def test_sse_events_split_across_reads_and_line_endings() -> None:
    assert await _collect(b'data: {"a"', b":1}\n", b"\ndata: [DONE]\n\n") == [b'{"a":1}', b"[DONE]"]
    assert await _collect(b"data: one\r\n\r\ndata: two\r", b"\n\r\n") == [b"one", b"two"]
    assert await _collect(b"data: cr\r\rdata: lf\n\n") == [b"cr", b"lf"]
    # The blank line that ends an event split across reads, and extra blank lines.
    assert await _collect(b"data: a\n", b"\ndata: b\n\n\n\ndata: c\n\n") == [b"a", b"b", b"c"]
    assert await _collect(b": ping\n\n", b"data: x\r", b"\n\r\n: ping\r\n\r\n") == [b"x"]


async def test_sse_comments_other_fields_and_multiline_data() -> None:
    stream = b": keep-alive\n\nevent: message\nid: 7\ndata: first\ndata: second\n\nretry: 10\n\n"
    assert await _collect(stream) == [b"first\nsecond"]
    assert await _collect(b"data:no-space\n\n") == [b"no-space"]
    assert await _collect(b"data: unterminated") == [b"unterminated"]
    assert await _collect(b"data: a\n") == [b"a"]


def test_retry_after_forms() -> None:
    assert _retry_after({"retry-after": "12"}) == 12
    assert _retry_after({"retry-after-ms": "1500", "retry-after": "9"}) == 1.5
    soon = datetime.now(UTC) + timedelta(seconds=30)
    assert 25 <= (_retry_after({"retry-after": format_datetime(soon, usegmt=True)}) or 0) <= 31
    assert _retry_after({"retry-after": "whenever"}) is None
    assert _retry_after({"retry-after-ms": "x"}) is None
    assert _retry_after({}) is None


async def test_usage_is_counted_with_tiktoken_when_upstream_reports_none(
    gateway: Gateway, client: Client
) -> None:
    gateway.upstream.enqueue(Script(tokens=["Hello", " world", "!"], usage=False))
    await client.emit("chat:start", {"message": "count me"})
    end = (await client.wait_for("chat:end"))[1]
    assert end["completionTokens"] == count_text("Hello world!")
    assert end["promptTokens"] > count_text("count me")
    assert end["totalTokens"] == end["promptTokens"] + end["completionTokens"]


async def test_system_prompt_goes_first_and_history_is_trimmed_oldest_first(
    gateway_factory: GatewayFactory, client_factory: Any
) -> None:
    async with gateway_factory(system_prompt="You are terse.", history_max_tokens=60) as gw:
        c = client_factory()
        await c.connect(gw.url, gw.token())
        conversation = None
        for n in range(4):
            gw.upstream.enqueue(Script(tokens=[f"answer {n} " * 3]))
            payload: dict[str, Any] = {"message": f"question number {n} " * 3}
            if conversation:
                payload["conversationId"] = conversation
            await c.emit("chat:start", payload)
            conversation = (await c.wait_for("chat:end"))[1]["conversationId"]
        sent = gw.upstream.requests[-1].messages
        assert sent[0] == {"role": "system", "content": "You are terse."}
        assert sent[-1]["content"] == "question number 3 " * 3
        assert len(sent) < 8  # the oldest turns were dropped to fit 60 tokens
        assert {"role": "user", "content": "question number 0 " * 3} not in sent
        assert sent[-2] == {"role": "assistant", "content": "answer 2 " * 3}


@pytest.mark.parametrize(
    "text",
    ["plain words, many of them " * 40, "emoji 😀🎉👩‍👩‍👧 and CJK 漢字かな", "  \n\t spaces  ", ""],
)
def test_the_byte_bound_is_never_below_the_count_and_trimming_agrees_with_counting(
    text: str,
) -> None:
    messages = [{"role": "user", "content": text}, {"role": "assistant", "content": text[::-1]}]
    assert most_tokens(messages) >= count_messages(messages)
    latest = {"role": "user", "content": text[:50]}
    exact = count_messages([*messages, latest])
    # A budget the bound clears keeps everything without counting; one only
    # the exact count clears still keeps everything; below it, history goes.
    for budget in (most_tokens([*messages, latest]), exact, exact - 1):
        kept = trim_history([], messages, latest, budget)
        assert (kept == [*messages, latest]) == (budget >= exact)


async def test_demo_model_says_what_it_is_and_how_to_configure(
    gateway_factory: GatewayFactory, client_factory: Any
) -> None:
    async with gateway_factory(llm_provider="demo", demo_tokens_per_s=2000) as gw:
        c = client_factory()
        await c.connect(gw.url, gw.token())
        await c.emit("chat:start", {"message": "Who are you?"})
        end = (await c.wait_for("chat:end"))[1]
        assert len(c.named("chat:message")) > 20  # streamed piece by piece
        assert "demo model" in end["content"] and "OPENAI_API_KEY" in end["content"]
        assert "Who are you?" in end["content"]
        assert end["finishReason"] == "stop" and end["completionTokens"] > 0
        assert gw.upstream.requests == []


async def test_demo_model_respects_max_tokens() -> None:
    provider = DemoProvider(tokens_per_s=10_000)
    request = ChatRequest("m", [{"role": "user", "content": "x" * 200}], 5, 0.7)
    items = [i async for i in provider.stream(request)]
    assert len(items) == 6
    assert isinstance(items[-1], StreamEnd) and items[-1].finish_reason == "length"


@pytest.mark.parametrize("transports", [["polling"], ["polling", "websocket"]])
async def test_long_polling_and_upgrade_work(
    gateway: Gateway, client_factory: Any, transports: list[str]
) -> None:
    c = client_factory()
    await c.connect(gateway.url, gateway.token(), transports=transports)
    await c.emit("chat:start", {"message": "over polling"})
    end = (await c.wait_for("chat:end"))[1]
    assert end["content"] == c.text() == "".join(f"token{i} " for i in range(5))


async def test_upstream_error_object_mid_stream_is_upstream_error(
    gateway_factory: GatewayFactory, client_factory: Any
) -> None:
    from tokenwire.testing import serve

    async def erroring(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        await receive()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        body = (
            b'data: {"choices":[{"index":0,"delta":{"content":"par"}}]}\n\n'
            b'data: {"error":{"message":"model overloaded","type":"server_error"}}\n\n'
        )
        await send({"type": "http.response.body", "body": body})

    async with (
        serve(erroring, lifespan="off") as url,
        gateway_factory(openai_base_url=f"{url}/v1") as gw,
    ):
        c = client_factory()
        await c.connect(gw.url, gw.token())
        await c.emit("chat:start", {"message": "hi"})
        error = (await c.wait_for("chat:error"))[1]
        assert error["code"] == "UPSTREAM_ERROR" and "overloaded" not in error["message"]
        message = await gw.services.repository.get_message(error["messageId"])
        assert (message.status, message.content) == ("error", "par")
