"""The writer's order for what is not text: held notices and reasoning, a lagging client."""

from __future__ import annotations

from typing import Any

from tokenwire.chat.events import Event, Queued
from tokenwire.chat.writer import ChunkWriter, Sink
from tokenwire.wire.protocol import encode


def _writer(sent: list[tuple[str, dict[str, Any]]], backlog: list[int]) -> ChunkWriter:
    async def emit(event: Event) -> None:
        sent.append(encode(event))

    sink = Sink(emit, backlog=lambda: backlog[0], max_backlog=10)
    return ChunkWriter(sink, message_id="m", conversation_id="c", flush_s=0)


async def test_before_the_turn_is_announced_notices_reasoning_and_text_wait_in_order() -> None:
    sent: list[tuple[str, dict[str, Any]]] = []
    writer = _writer(sent, [0])
    await writer.notice(Queued("m", "c", 1))
    await writer.think("hmm ")
    await writer.think("yes")
    await writer.write("Answer")
    assert sent == []  # chat:user-message has not gone out yet
    await writer.release()
    assert [(e, p.get("content", p.get("position"))) for e, p in sent] == [
        ("chat:queued", 1),
        ("chat:reasoning", "hmm yes"),
        ("chat:message", "Answer"),
    ]
    await writer.notice(Queued("m", "c", 0))  # released: at once
    assert sent[-1] == ("chat:queued", {"messageId": "m", "conversationId": "c", "position": 0})


async def test_reasoning_for_a_lagging_client_is_joined_and_sent_before_the_next_text() -> None:
    sent: list[tuple[str, dict[str, Any]]] = []
    backlog = [0]
    writer = _writer(sent, backlog)
    await writer.release()
    await writer.think("a")  # goes at once
    backlog[0] = 3  # the client lags
    await writer.think("b")
    await writer.think("c")
    assert [p["content"] for _, p in sent] == ["a"]
    backlog[0] = 0
    await writer.write("text")
    assert [(e, p["content"], p["offset"]) for e, p in sent] == [
        ("chat:reasoning", "a", 0),
        ("chat:reasoning", "bc", 1),
        ("chat:message", "text", 0),
    ]
    backlog[0] = 3
    await writer.think("d")
    await writer.flush()  # before the final event: nothing is left behind
    assert sent[-1] == (
        "chat:reasoning",
        {"messageId": "m", "conversationId": "c", "content": "d", "offset": 3},
    )
