"""Every bad input and every upstream fault ends in a clear chat:error with a stable code."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import Client, Gateway, GatewayFactory
from tokenwire.testing import Script

BAD_PAYLOADS: list[tuple[Any, str]] = [
    (None, "VALIDATION_ERROR"),
    ("just a string", "VALIDATION_ERROR"),
    ([1, 2, 3], "VALIDATION_ERROR"),
    ({}, "VALIDATION_ERROR"),
    ({"message": ""}, "VALIDATION_ERROR"),
    ({"message": "   "}, "VALIDATION_ERROR"),
    ({"message": "nul\x00byte"}, "VALIDATION_ERROR"),
    ({"message": 42}, "VALIDATION_ERROR"),
    ({"message": "hi", "maxTokens": "5"}, "VALIDATION_ERROR"),
    ({"message": "hi", "maxTokens": 0}, "VALIDATION_ERROR"),
    ({"message": "hi", "maxTokens": 10**9}, "VALIDATION_ERROR"),
    ({"message": "hi", "maxTokens": True}, "VALIDATION_ERROR"),
    ({"message": "hi", "maxTokens": 1.5}, "VALIDATION_ERROR"),
    ({"message": "hi", "temperature": 2.5}, "VALIDATION_ERROR"),
    ({"message": "hi", "temperature": -0.1}, "VALIDATION_ERROR"),
    ({"message": "hi", "temperature": "hot"}, "VALIDATION_ERROR"),
    ({"message": "hi", "conversationId": 7}, "VALIDATION_ERROR"),
    ({"message": "hi", "conversationId": {"$ne": None}}, "VALIDATION_ERROR"),
    ({"message": "hi", "model": "gpt-999"}, "INVALID_MODEL"),
    ({"message": "hi", "userId": "mallory"}, "FORBIDDEN"),
    ({"message": "hi", "conversationId": "00000000-0000-0000-0000-000000000000"}, "NOT_FOUND"),
]


@pytest.mark.parametrize(("payload", "code"), BAD_PAYLOADS)
async def test_bad_chat_start_gets_error_and_nothing_changes(
    gateway: Gateway, client: Client, payload: Any, code: str
) -> None:
    ack = await client.call("chat:start", payload)
    event, error = await client.wait_for("chat:error")
    assert error["code"] == code
    assert ack["ok"] is False and ack["error"]["code"] == code
    assert ack["error"]["message"] == error["message"]
    assert "Traceback" not in error["message"] and "File " not in error["message"]
    assert gateway.upstream.requests == []
    rows, total = await gateway.services.repository.list_conversations("alice", limit=10, offset=0)
    assert total == 0
    # The socket is still fine: a good request right after works.
    await client.emit("chat:start", {"message": "hello"})
    await client.wait_for("chat:end")


async def test_message_longer_than_limit_is_refused(
    gateway_factory: GatewayFactory, client_factory: Any
) -> None:
    async with gateway_factory(max_message_chars=10) as gw:
        c = client_factory()
        await c.connect(gw.url, gw.token())
        ack = await c.call("chat:start", {"message": "x" * 11})
        assert ack["error"]["code"] == "VALIDATION_ERROR"
        assert "10" in ack["error"]["message"]


async def test_other_users_conversation_answers_like_a_missing_one(
    gateway: Gateway, client: Client, client_factory: Any
) -> None:
    await client.emit("chat:start", {"message": "alice's secret"})
    end = (await client.wait_for("chat:end"))[1]
    bob = client_factory()
    await bob.connect(gateway.url, gateway.token("bob"))
    theirs = await bob.call(
        "chat:start", {"message": "peek", "conversationId": end["conversationId"]}
    )
    missing = await bob.call("chat:start", {"message": "peek", "conversationId": "does-not-exist"})
    assert theirs["error"] == missing["error"]
    assert theirs["error"]["code"] == "NOT_FOUND"


async def test_second_start_while_streaming_is_busy(gateway: Gateway, client: Client) -> None:
    gateway.upstream.enqueue(Script(count=50, delay_s=0.02))
    first = await client.call("chat:start", {"message": "one"})
    second = await client.call("chat:start", {"message": "two"})
    assert first["ok"] is True
    assert second["error"]["code"] == "BUSY"
    await client.call("chat:stop")


async def test_unknown_event_gets_validation_error(client: Client) -> None:
    ack = await client.call("chat:explode", {"x": 1})
    assert ack["ok"] is False and ack["error"]["code"] == "VALIDATION_ERROR"
    assert "chat:explode" in ack["error"]["message"]


@pytest.mark.parametrize(
    ("script", "code"),
    [
        (Script(status=429, headers={"retry-after": "30"}), "RATE_LIMIT"),
        (Script(status=500), "UPSTREAM_ERROR"),
        (Script(status=503), "UPSTREAM_ERROR"),
        (Script(status=401), "UPSTREAM_ERROR"),
        (Script(status=403), "UPSTREAM_ERROR"),
        (Script(status=400), "UPSTREAM_ERROR"),
        (Script(count=10, drop_after=3), "UPSTREAM_ERROR"),
        (Script(count=10, done=False, finish_reason=""), "UPSTREAM_ERROR"),
    ],
    ids=["429", "500", "503", "401", "403", "400", "dropped-mid-reply", "cut-off"],
)
async def test_upstream_failure_maps_to_code_and_saves_partial(
    gateway: Gateway, client: Client, script: Script, code: str
) -> None:
    gateway.upstream.enqueue(script)
    await client.emit("chat:start", {"message": "hi"})
    error = (await client.wait_for("chat:error", "chat:end"))[1]
    assert error["code"] == code, error
    assert error["messageId"] and error["conversationId"]
    assert "scripted" not in error["message"]  # upstream detail never reaches the client
    if code == "RATE_LIMIT":
        assert error["retryAfter"] == 30
    message = await gateway.services.repository.get_message(error["messageId"])
    assert message.status == "error"
    assert message.content == client.text()
    assert len(gateway.services.chat.replies) == 0


async def test_upstream_refused_connection_is_upstream_error(
    gateway_factory: GatewayFactory, client_factory: Any
) -> None:
    from tokenwire.testing import free_port

    async with gateway_factory(openai_base_url=f"http://127.0.0.1:{free_port()}/v1") as gw:
        c = client_factory()
        await c.connect(gw.url, gw.token())
        await c.emit("chat:start", {"message": "hi"})
        error = (await c.wait_for("chat:error"))[1]
        assert error["code"] == "UPSTREAM_ERROR"


async def test_silence_before_first_token_times_out(
    gateway_factory: GatewayFactory, client_factory: Any
) -> None:
    async with gateway_factory(upstream_timeout_s=0.3) as gw:
        gw.upstream.enqueue(Script(count=3, first_delay_s=5))
        c = client_factory()
        await c.connect(gw.url, gw.token())
        await c.emit("chat:start", {"message": "hi"})
        error = (await c.wait_for("chat:error"))[1]
        assert error["code"] == "UPSTREAM_TIMEOUT"
        request = gw.upstream.requests[-1]
        await asyncio.wait_for(request.finished.wait(), 5)
        assert request.closed_by_client


async def test_silence_between_chunks_times_out_and_keeps_partial(
    gateway_factory: GatewayFactory, client_factory: Any
) -> None:
    async with gateway_factory(upstream_idle_timeout_s=0.3) as gw:
        gw.upstream.enqueue(Script(count=10, stall_after=2))
        c = client_factory()
        await c.connect(gw.url, gw.token())
        await c.emit("chat:start", {"message": "hi"})
        error = (await c.wait_for("chat:error"))[1]
        assert error["code"] == "UPSTREAM_TIMEOUT"
        message = await gw.services.repository.get_message(error["messageId"])
        assert (message.status, message.content) == ("error", "token0 token1 ")


async def test_retries_before_first_token_then_streams(
    gateway_factory: GatewayFactory, client_factory: Any
) -> None:
    async with gateway_factory(upstream_retries=2) as gw:
        gw.upstream.enqueue(Script(status=503), Script(status=502), Script(tokens=["ok"]))
        c = client_factory()
        await c.connect(gw.url, gw.token())
        await c.emit("chat:start", {"message": "hi"})
        end = (await c.wait_for("chat:end", "chat:error", timeout=15))[1]
        assert end["content"] == "ok"
        assert len(gw.upstream.requests) == 3


async def test_no_retry_after_a_token_reached_the_client(
    gateway_factory: GatewayFactory, client_factory: Any
) -> None:
    async with gateway_factory(upstream_retries=2) as gw:
        gw.upstream.enqueue(Script(count=5, drop_after=2))
        c = client_factory()
        await c.connect(gw.url, gw.token())
        await c.emit("chat:start", {"message": "hi"})
        error = (await c.wait_for("chat:error"))[1]
        assert error["code"] == "UPSTREAM_ERROR"
        assert len(gw.upstream.requests) == 1


@pytest.mark.parametrize("event", ["connect", "disconnect", "message", "connect_error"])
async def test_reserved_event_names_from_a_client_change_nothing(
    gateway: Gateway, client: Client, client_factory: Any, event: str
) -> None:
    """A crafted `disconnect` event must not make the server forget who this socket is."""
    bob = client_factory()
    await bob.connect(gateway.url, gateway.token("bob"))
    await bob.emit("chat:start", {"message": "bob's"})
    end = (await bob.wait_for("chat:end"))[1]

    ack = await client.call(event, {"REMOTE_ADDR": "1.2.3.4"})
    assert ack["ok"] is False and ack["error"]["code"] == "VALIDATION_ERROR"
    assert client.sio.connected
    peek = await client.call(
        "chat:start", {"message": "peek", "userId": "bob", "conversationId": end["conversationId"]}
    )
    assert peek["error"]["code"] == "FORBIDDEN"
