"""What real OpenAI-compatible model servers do that OpenAI's own API rarely does.

llama.cpp, vLLM, Ollama and reasoning models, reproduced by the upstream
double: truncated streams, empty bodies, missing usage, context windows,
one-at-a-time serving, slow first tokens and reasoning deltas (issue 12).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import httpx
import pytest

from tests.conftest import Client, Gateway, GatewayFactory, make_settings
from tokenwire.config import SettingsError
from tokenwire.providers.openai import redact
from tokenwire.testing import Script
from tokenwire.tokens import count_messages, count_text


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("tokenwire") and r.levelno == logging.WARNING
    ]


async def test_done_without_finish_reason_is_an_error_not_a_complete_reply(
    gateway: Gateway, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    """llama.cpp ends a running stream for a new request with [DONE] and no finish_reason."""
    caplog.set_level(logging.WARNING, logger="tokenwire")
    gateway.upstream.enqueue(Script(tokens=["half ", "a "], finish_reason=None, usage=False))
    await client.emit("chat:start", {"message": "cut me off"})
    error = await client.wait_for("chat:error", "chat:end")
    assert error[0] == "chat:error" and error[1]["code"] == "UPSTREAM_ERROR"
    message = await gateway.services.repository.get_message(error[1]["messageId"])
    assert (message.status, message.content) == ("error", "half a ")
    [line] = [w for w in _warnings(caplog) if "after HTTP 200" in w]
    assert "[DONE] without a finish_reason" in line
    assert "2 text deltas" in line and "bytes" in line


async def test_a_200_with_an_empty_body_says_what_probably_happened(
    gateway: Gateway, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tokenwire")
    gateway.upstream.enqueue(Script(empty=True))
    await client.emit("chat:start", {"message": "far too long"})
    error = (await client.wait_for("chat:error"))[1]
    assert error["code"] == "UPSTREAM_ERROR"
    assert "empty reply" in error["message"] and "too long" in error["message"]
    message = await gateway.services.repository.get_message(error["messageId"])
    assert (message.status, message.content) == ("error", "")
    [line] = [w for w in _warnings(caplog) if "after HTTP 200" in w]
    assert "empty body" in line and "0 bytes" in line


async def test_a_dropped_stream_is_logged_with_how_far_it_got(
    gateway: Gateway, client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tokenwire")
    gateway.upstream.enqueue(Script(count=10, drop_after=3))
    await client.emit("chat:start", {"message": "drop"})
    error = (await client.wait_for("chat:error"))[1]
    assert error["code"] == "UPSTREAM_ERROR"
    [line] = [w for w in _warnings(caplog) if "after HTTP 200" in w]
    assert "the connection broke" in line and "3 text deltas" in line
    assert "token2" in line  # the last event that came


def test_error_bodies_are_logged_without_secrets() -> None:
    body = b'{"error": "bad key sk-proj-abcdefghijklmnop, header Bearer eyJhbGciOi.x.y"}'
    cleaned = redact(body)
    assert b"abcdefghijklmnop" not in cleaned and b"eyJhbGciOi" not in cleaned
    assert b"sk-proj-a[redacted]" in cleaned and b"Bearer [redacted]" in cleaned


async def test_usage_says_where_it_came_from_in_the_end_the_database_and_metrics(
    gateway: Gateway, client: Client
) -> None:
    gateway.upstream.enqueue(
        Script(tokens=["reported"]),
        Script(tokens=["counted", " here"], usage=False),
        # llama-cpp-python: no usage, stopped at max_tokens; tiktoken would count 9.
        Script(tokens=["über" * 3] * 3, usage=False, finish_reason="length"),
    )
    ends = []
    for message, max_tokens in (("one", 100), ("two", 100), ("three", 3)):
        await client.emit("chat:start", {"message": message, "maxTokens": max_tokens})
        ends.append((await client.wait_for("chat:end"))[1])
    assert [e["usageSource"] for e in ends] == ["upstream", "estimated", "estimated"]
    assert ends[0]["completionTokens"] == 1  # the double's own count
    assert ends[1]["completionTokens"] == count_text("counted here")
    assert ends[2]["completionTokens"] == 3 != count_text("über" * 9)  # `length`: exact
    saved = [await gateway.services.repository.get_message(e["messageId"]) for e in ends]
    assert [m.usage_source for m in saved] == ["upstream", "estimated", "estimated"]
    assert [m.completion_tokens for m in saved] == [e["completionTokens"] for e in ends]
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        metrics = (await http.get("/metrics")).text
        rest = await http.get(
            f"/api/conversations/{ends[0]['conversationId']}/messages",
            headers={"Authorization": f"Bearer {gateway.token()}"},
        )
    assert 'tokenwire_completion_tokens_total{source="upstream"} 1.0' in metrics
    estimated = ends[1]["completionTokens"] + 3
    assert f'tokenwire_completion_tokens_total{{source="estimated"}} {estimated}.0' in metrics
    assert rest.json()[1]["usageSource"] == "upstream"


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning"])
async def test_reasoning_streams_is_saved_apart_and_never_goes_back_upstream(
    gateway_factory: GatewayFactory, client_factory: Callable[[], Client], field: str
) -> None:
    # Thinking for ~2 s with no text, against a 0.6 s first-token timeout:
    # the thinking keeps the reply alive.
    async with gateway_factory(upstream_timeout_s=0.6, upstream_idle_timeout_s=0.6) as gw:
        client = client_factory()
        await client.connect(gw.url, gw.token())
        thoughts = ["Let me ", "think… ", "über ", "hmm. "] * 2
        gw.upstream.enqueue(
            Script(
                tokens=["The ", "answer"],
                reasoning=thoughts,
                reasoning_field=field,
                delay_s=0.25,
            ),
            Script(tokens=["again"]),
        )
        await client.emit("chat:start", {"message": "a hard question"})
        end = (await client.wait_for("chat:end", "chat:error", timeout=10))[1]
        assert end["content"] == "The answer"
        events = client.named("chat:reasoning")
        assert "".join(e["content"] for e in events) == "".join(thoughts)
        assert [e["offset"] for e in events] == [
            sum(len(e["content"]) for e in events[:i]) for i in range(len(events))
        ]
        assert {(e["messageId"], e["conversationId"]) for e in events} == {
            (end["messageId"], end["conversationId"])
        }
        # Every chat:reasoning came before the first chat:message.
        order = client.order()
        assert order.index("chat:message") > max(
            i for i, name in enumerate(order) if name == "chat:reasoning"
        )
        saved = await gw.services.repository.get_message(end["messageId"])
        assert saved.content == "The answer" and saved.reasoning == "".join(thoughts)
        assert 1500 <= saved.reasoning_ms <= 5000  # 8 pieces 0.25 s apart, then the text

        await client.emit(
            "chat:start", {"message": "and now?", "conversationId": end["conversationId"]}
        )
        await client.wait_for("chat:end")
        history = gw.upstream.requests[-1].messages
        assert {"role": "assistant", "content": "The answer"} in history
        assert not any("think" in m["content"] for m in history)
        async with httpx.AsyncClient(base_url=gw.url) as http:
            rest = await http.get(
                f"/api/conversations/{end['conversationId']}/messages",
                headers={"Authorization": f"Bearer {gw.token()}"},
            )
        reply = rest.json()[1]
        assert reply["reasoning"] == "".join(thoughts) and reply["reasoningMs"] > 0
        assert rest.json()[3]["reasoning"] is None


async def test_a_message_that_cannot_fit_the_context_is_refused_before_the_upstream(
    gateway_factory: GatewayFactory, client_factory: Callable[[], Client]
) -> None:
    async with gateway_factory(model_context="other=9,gpt-4=100") as gw:
        client = client_factory()
        await client.connect(gw.url, gw.token())
        ack = await client.call("chat:start", {"message": "word " * 150})
        assert ack["ok"] is False and ack["error"]["code"] == "VALIDATION_ERROR"
        assert "too long for this model" in ack["error"]["message"]
        error = (await client.wait_for("chat:error"))[1]
        assert error["code"] == "VALIDATION_ERROR"
        assert gw.upstream.requests == [] and gw.upstream.model_requests == 0
        # Nothing else changed: a message that fits is answered.
        await client.emit("chat:start", {"message": "short"})
        end = (await client.wait_for("chat:end"))[1]
        assert end["content"] == "".join(f"token{i} " for i in range(5))
        assert gw.upstream.requests[0].body["max_tokens"] == 50  # half of 100, the default


async def test_discovered_context_trims_history_and_clamps_max_tokens(
    gateway_factory: GatewayFactory, client_factory: Callable[[], Client]
) -> None:
    """vLLM's /v1/models says `max_model_len`; asked once, for every turn."""
    async with gateway_factory() as gw:
        gw.upstream.models = {"gpt-4": {"max_model_len": 300}, "other": {}}
        client = client_factory()
        await client.connect(gw.url, gw.token())
        conversation = None
        for n in range(6):
            gw.upstream.enqueue(Script(tokens=[f"answer {n} " * 10]))
            payload: dict[str, object] = {"message": f"question {n} " * 10}
            if conversation:
                payload["conversationId"] = conversation
            await client.emit("chat:start", payload)
            conversation = (await client.wait_for("chat:end"))[1]["conversationId"]
        last = gw.upstream.requests[-1]
        assert last.body["max_tokens"] == 150  # DEFAULT_MAX_TOKENS 4096, halved to fit 300
        sent = last.messages
        assert sent[-1]["content"] == "question 5 " * 10
        assert count_messages(sent) <= 300 - 150  # the history that fits, and no more
        assert 2 < len(sent) < 11  # some history kept, the oldest dropped
        assert gw.upstream.model_requests == 1

        # An explicit maxTokens is clamped to the room the message leaves.
        await client.emit("chat:start", {"message": "one more", "maxTokens": 4000})
        await client.wait_for("chat:end")
        assert gw.upstream.requests[-1].body["max_tokens"] == 300 - count_messages(
            [{"role": "user", "content": "one more"}]
        )


async def test_llama_cpp_context_comes_from_props_and_its_overflow_says_too_long(
    gateway_factory: GatewayFactory, client_factory: Callable[[], Client]
) -> None:
    """llama.cpp lists `meta.n_ctx_train` and runs with /props' n_ctx, which may be smaller."""
    async with gateway_factory() as gw:
        gw.upstream.models = {"gpt-4": {"meta": {"n_ctx_train": 32768, "n_vocab": 262144}}}
        gw.upstream.props = {"default_generation_settings": {"n_ctx": 200}}
        client = client_factory()
        await client.connect(gw.url, gw.token())
        ack = await client.call("chat:start", {"message": "word " * 300})
        assert ack["ok"] is False and "too long for this model" in ack["error"]["message"]
        assert gw.upstream.requests == []


async def test_unknown_context_changes_nothing_and_a_failed_discovery_is_tolerated(
    gateway_factory: GatewayFactory, client_factory: Callable[[], Client]
) -> None:
    async with gateway_factory() as gw:
        gw.upstream.models = None  # /v1/models answers 500
        # The model server itself rejects long prompts the llama.cpp way.
        gw.upstream.context_words = 100
        client = client_factory()
        await client.connect(gw.url, gw.token())
        await client.emit("chat:start", {"message": "hello"})
        await client.wait_for("chat:end")
        assert gw.upstream.requests[-1].body["max_tokens"] == 4096
        await client.emit("chat:start", {"message": "word " * 150})
        error = (await client.wait_for("chat:error"))[1]
        assert error["code"] == "UPSTREAM_ERROR" and "too long" in error["message"]
        assert gw.upstream.model_requests == 1  # not asked again for every turn


def test_model_context_is_parsed_and_bad_entries_name_the_variable() -> None:
    settings = make_settings(model_context="llama3.2=8192, org/model:q4=2048")
    assert settings.model_context == {"llama3.2": 8192, "org/model:q4": 2048}
    for bad in ("llama3.2", "llama3.2=lots", "=100", "m=0"):
        with pytest.raises(SettingsError, match="MODEL_CONTEXT"):
            make_settings(model_context=bad)
