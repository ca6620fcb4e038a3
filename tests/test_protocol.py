"""wire.protocol writes every server event byte for byte as tokenwire wrote them before it existed.

The expected packets are the ones the service, the writer and the errors
module built by hand (key order included): clients that compare raw frames,
and the bench's byte counts, see no change.
"""

from __future__ import annotations

import pytest

from tokenwire.chat.events import (
    ConversationCreated,
    Event,
    Finished,
    Queued,
    ReasoningAppended,
    TextAppended,
    TurnAccepted,
)
from tokenwire.errors import RateLimited, UpstreamTimeout, ValidationFailed
from tokenwire.wire import protocol
from tokenwire.wire.codec import event_packet

CASES: list[tuple[Event, str]] = [
    (ConversationCreated("c"), '2/ai,["chat:conversation",{"conversationId":"c"}]'),
    (
        TurnAccepted("c", "u", "hi 👋"),
        '2/ai,["chat:user-message",{"messageId":"u","content":"hi 👋","conversationId":"c"}]',
    ),
    (
        Queued("m", "c", 2),
        '2/ai,["chat:queued",{"messageId":"m","conversationId":"c","position":2}]',
    ),
    (
        TextAppended("m", "c", 7, " tok"),
        '2/ai,["chat:message",{"content":" tok","isComplete":false,"messageId":"m",'
        '"conversationId":"c","offset":7}]',
    ),
    (
        ReasoningAppended("m", "c", 3, "hmm"),
        '2/ai,["chat:reasoning",{"messageId":"m","conversationId":"c","content":"hmm","offset":3}]',
    ),
    (
        Finished("m", "c", "complete", "all", model="x", finish_reason="stop", prompt_tokens=3,
                 completion_tokens=4, usage_source="upstream"),
        '2/ai,["chat:end",{"conversationId":"c","messageId":"m","totalTokens":7,"model":"x",'
        '"finishReason":"stop","promptTokens":3,"completionTokens":4,"usageSource":"upstream",'
        '"content":"all"}]',
    ),
    (
        Finished("m", "c", "stopped", "part"),
        '2/ai,["chat:stopped",{"conversationId":"c","messageId":"m","content":"part"}]',
    ),
    (
        Finished("m", "c", "error", "part", error=UpstreamTimeout()),
        '2/ai,["chat:error",{"message":"The AI model took too long to answer. Please try again.",'
        '"code":"UPSTREAM_TIMEOUT","conversationId":"c","messageId":"m"}]',
    ),
]  # fmt: skip


@pytest.mark.parametrize(("event", "packet"), CASES)
def test_each_event_encodes_to_the_bytes_it_always_had(event: Event, packet: str) -> None:
    assert event_packet("/ai", *protocol.encode(event)) == packet


def test_an_error_answered_from_the_database_carries_the_whole_content() -> None:
    name, payload = protocol.encode(Finished("m", "c", "interrupted", "saved part", replayed=True))
    assert name == "chat:error"
    assert payload["code"] == "INTERNAL" and payload["content"] == "saved part"


def test_acks_keep_their_shape() -> None:
    assert protocol.ack(stopped=False) == {"ok": True, "stopped": False}
    assert protocol.ack_error(ValidationFailed("no")) == {
        "ok": False,
        "error": {"code": "VALIDATION_ERROR", "message": "no"},
    }
    limited = protocol.ack_error(RateLimited(retry_after=2.5))
    assert limited["error"]["retryAfter"] == 2.5
