"""A turn over the real socket: events, their order and fields, what is saved."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

from tests.conftest import Client, Gateway
from tokenwire.testing import Script


async def test_start_streams_events_in_order_with_guide_fields(
    gateway: Gateway, client: Client
) -> None:
    gateway.upstream.enqueue(
        Script(tokens=["Hel", "lo", " wor", "ld"], first_delay_s=0.2, delay_s=0.02)
    )
    ack = await client.call("chat:start", {"userId": "alice", "message": "Say hello"})
    end = (await client.wait_for("chat:end"))[1]

    assert client.order() == ["chat:conversation", "chat:user-message", "chat:message", "chat:end"]
    conversation_id = client.named("chat:conversation")[0]["conversationId"]
    user_message = client.named("chat:user-message")[0]
    assert user_message["content"] == "Say hello"
    chunks = client.named("chat:message")
    assert [c["content"] for c in chunks] == ["Hel", "lo", " wor", "ld"]
    assert [c["offset"] for c in chunks] == [0, 3, 5, 9]
    assert all(c["isComplete"] is False and c["conversationId"] == conversation_id for c in chunks)
    assert {c["messageId"] for c in chunks} == {end["messageId"]}
    assert end["conversationId"] == conversation_id
    assert end["content"] == "Hello world"
    assert end["finishReason"] == "stop"
    assert end["model"] == "gpt-4"
    assert end["completionTokens"] == 4
    assert end["totalTokens"] == end["promptTokens"] + end["completionTokens"]
    assert ack == {
        "ok": True,
        "conversationId": conversation_id,
        "userMessageId": user_message["messageId"],
        "messageId": end["messageId"],
    }


async def test_reply_and_user_message_are_saved(gateway: Gateway, client: Client) -> None:
    gateway.upstream.enqueue(Script(tokens=["a", "b"], finish_reason="length"))
    await client.emit("chat:start", {"message": "first"})
    end = (await client.wait_for("chat:end"))[1]
    messages = await gateway.services.repository.list_messages("alice", end["conversationId"])
    assert [(m.role, m.content, m.status) for m in messages] == [
        ("user", "first", "complete"),
        ("assistant", "ab", "complete"),
    ]
    assert messages[1].finish_reason == "length"
    assert messages[1].completion_tokens == 2


async def test_continuing_sends_history_upstream(gateway: Gateway, client: Client) -> None:
    gateway.upstream.enqueue(Script(tokens=["one"]), Script(tokens=["two"]))
    await client.emit("chat:start", {"message": "first question"})
    end = (await client.wait_for("chat:end"))[1]
    await client.emit(
        "chat:start", {"message": "second question", "conversationId": end["conversationId"]}
    )
    await client.wait_for("chat:end")
    assert gateway.upstream.requests[-1].messages == [
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "one"},
        {"role": "user", "content": "second question"},
    ]
    assert client.named("chat:conversation") == [{"conversationId": end["conversationId"]}]


async def test_upstream_request_uses_streaming_with_usage(gateway: Gateway, client: Client) -> None:
    await client.emit("chat:start", {"message": "hi", "maxTokens": 12, "temperature": 0.2})
    await client.wait_for("chat:end")
    body: dict[str, Any] = gateway.upstream.requests[-1].body
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 12
    assert body["temperature"] == 0.2
    assert gateway.upstream.requests[-1].headers["authorization"] == "Bearer sk-test"


async def test_stop_closes_upstream_and_saves_partial_reply(
    gateway: Gateway, client: Client
) -> None:
    gateway.upstream.enqueue(Script(count=200, delay_s=0.02))
    await client.emit("chat:start", {"message": "long one"})
    await client.wait_for("chat:message")
    await asyncio.sleep(0.1)
    ack = await client.call("chat:stop")
    stopped = (await client.wait_for("chat:stopped"))[1]
    request = gateway.upstream.requests[-1]
    await asyncio.wait_for(request.finished.wait(), 5)
    assert request.closed_by_client
    assert len(request.sent) < 200
    assert ack["ok"] is True and ack["stopped"] is True
    assert stopped["messageId"] == ack["messageId"]
    # Everything sent before chat:stopped is the saved content; nothing follows it.
    assert client.text() == stopped["content"]
    await asyncio.sleep(0.2)
    assert client.order()[-1] == "chat:stopped"
    messages = await gateway.services.repository.list_messages("alice", stopped["conversationId"])
    assert messages[-1].status == "stopped"
    assert messages[-1].content == stopped["content"]


async def test_stop_with_nothing_running_is_harmless(client: Client) -> None:
    ack = await client.call("chat:stop")
    assert ack == {"ok": True, "stopped": False}
    assert client.events == []


async def test_disconnect_mid_reply_still_saves_whole_reply(
    gateway: Gateway, client: Client
) -> None:
    gateway.upstream.enqueue(Script(count=20, delay_s=0.01))
    ack = await client.call("chat:start", {"message": "go"})
    await client.wait_for("chat:message")
    await client.disconnect()
    request = gateway.upstream.requests[-1]
    await asyncio.wait_for(request.finished.wait(), 5)
    assert not request.closed_by_client
    for _ in range(100):
        message = await gateway.services.repository.get_message(ack["messageId"])
        if message.status != "streaming":
            break
        await asyncio.sleep(0.02)
    assert message.status == "complete"
    assert message.content == "".join(f"token{i} " for i in range(20))


async def test_tokens_before_the_turn_is_committed_wait_behind_user_message(
    gateway: Gateway, client: Client
) -> None:
    """The upstream request starts while the turn is written; its first tokens are held, not lost."""
    gateway.upstream.enqueue(Script(tokens=[f"t{i} " for i in range(30)]))
    await client.emit("chat:start", {"message": "fast upstream"})
    end = (await client.wait_for("chat:end"))[1]
    assert client.order() == ["chat:conversation", "chat:user-message", "chat:message", "chat:end"]
    chunks = client.named("chat:message")
    offsets = [c["offset"] for c in chunks]
    assert offsets == [sum(len(c["content"]) for c in chunks[:i]) for i in range(len(chunks))]
    assert client.text() == end["content"] == "".join(f"t{i} " for i in range(30))


async def test_first_tokens_do_not_wait_on_the_database_and_the_end_does(
    gateway: Gateway, client: Client
) -> None:
    """The turn is written after its first token; chat:end (and the ack) wait for that commit."""
    gateway.upstream.enqueue(Script(tokens=[f"t{i} " for i in range(5)]))
    database = gateway.services.database
    assert database.is_sqlite  # SQLite: every write queues on its one writer thread
    slow_disk = threading.Event()
    # The database is slow: a write holds the writer, so no other write can commit.
    stuck = asyncio.create_task(database.run(lambda _conn: slow_disk.wait(10)))
    try:
        await client.emit("chat:start", {"message": "slow disk"})
        await client.wait_for("chat:message")
        await asyncio.sleep(0.2)  # the whole reply has arrived from the upstream by now
        assert client.text() == "t0 t1 t2 t3 t4 "
        assert client.named("chat:end") == []
    finally:
        slow_disk.set()
        assert await stuck
    end = (await client.wait_for("chat:end"))[1]
    assert end["content"] == "t0 t1 t2 t3 t4 "
    saved = await gateway.services.repository.get_message(end["messageId"])
    assert (saved.status, saved.content) == ("complete", "t0 t1 t2 t3 t4 ")


async def test_coalescing_sends_first_token_at_once_and_fewer_exact_frames(
    gateway_factory: Any, client_factory: Any
) -> None:
    async with gateway_factory(stream_flush_ms=50) as gw:
        gw.upstream.enqueue(Script(count=60, first_delay_s=0.3, delay_s=0.005))
        c = client_factory()
        await c.connect(gw.url, gw.token())
        await c.emit("chat:start", {"message": "coalesce"})
        end = (await c.wait_for("chat:end"))[1]
        chunks = c.named("chat:message")
        assert chunks[0]["content"] == "token0 "  # the first token is never held back
        assert 2 < len(chunks) < 30  # 60 tokens over ~0.3 s in frames of up to 50 ms
        offsets = [ch["offset"] for ch in chunks]
        assert offsets == [sum(len(ch["content"]) for ch in chunks[:i]) for i in range(len(chunks))]
        assert c.text() == end["content"] == "".join(f"token{i} " for i in range(60))
