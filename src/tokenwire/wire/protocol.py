"""tokenwire's wire protocol: every event name and payload the server sends, in one place.

This module mirrors `web/src/protocol.ts`; change them together. The chat
service speaks domain events (`tokenwire.chat.events`); `encode` turns each
into the `(event name, payload)` a client receives. Acknowledgements are
`{ok: true, ...}` or `{ok: false, error: {code, message, retryAfter?}}`.

Key order inside each payload is part of the wire format (tests pin the bytes),
so payloads are written out as literals rather than derived from dataclasses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tokenwire.chat.events import (
    ConversationCreated,
    Event,
    Finished,
    Queued,
    ReasoningAppended,
    TextAppended,
    TurnAccepted,
)
from tokenwire.errors import TokenwireError, error_payload

__all__ = [
    "ADMIN_HISTORY",
    "ADMIN_STATS",
    "CONVERSATION",
    "END",
    "ERROR",
    "MESSAGE",
    "QUEUED",
    "REASONING",
    "STOPPED",
    "USER_MESSAGE",
    "Payload",
    "ack",
    "ack_error",
    "admin_history",
    "admin_stats",
    "encode",
    "error_event",
    "running_reply",
]

Payload = dict[str, Any]

# /ai, server -> client
CONVERSATION = "chat:conversation"
USER_MESSAGE = "chat:user-message"
QUEUED = "chat:queued"
REASONING = "chat:reasoning"
MESSAGE = "chat:message"
END = "chat:end"
STOPPED = "chat:stopped"
ERROR = "chat:error"
# /admin, server -> client
ADMIN_HISTORY = "admin:history"
ADMIN_STATS = "admin:stats"


def _conversation(e: ConversationCreated) -> tuple[str, Payload]:
    return CONVERSATION, {"conversationId": e.conversation_id}


def _user_message(e: TurnAccepted) -> tuple[str, Payload]:
    return USER_MESSAGE, {
        "messageId": e.user_message_id,
        "content": e.content,
        "conversationId": e.conversation_id,
    }


def _queued(e: Queued) -> tuple[str, Payload]:
    return QUEUED, {
        "messageId": e.message_id,
        "conversationId": e.conversation_id,
        "position": e.position,
    }


def _message(e: TextAppended) -> tuple[str, Payload]:
    return MESSAGE, {
        "content": e.content,
        "isComplete": False,
        "messageId": e.message_id,
        "conversationId": e.conversation_id,
        "offset": e.offset,
    }


def _reasoning(e: ReasoningAppended) -> tuple[str, Payload]:
    return REASONING, {
        "messageId": e.message_id,
        "conversationId": e.conversation_id,
        "content": e.content,
        "offset": e.offset,
    }


def _finished(e: Finished) -> tuple[str, Payload]:
    ids = {"conversationId": e.conversation_id, "messageId": e.message_id}
    if e.status == "complete":
        return END, {
            **ids,
            "totalTokens": e.prompt_tokens + e.completion_tokens,
            "model": e.model,
            "finishReason": e.finish_reason,
            "promptTokens": e.prompt_tokens,
            "completionTokens": e.completion_tokens,
            "usageSource": e.usage_source,
            "content": e.content,
        }
    if e.status == "stopped":
        return STOPPED, {**ids, "content": e.content}
    payload = error_event(e.error or TokenwireError(), **ids)
    if e.replayed:
        # Answered from the database (chat:resume of a finished reply): the
        # client may hold none of the text, so the error carries it whole.
        payload["content"] = e.content
    return ERROR, payload


_ENCODERS: dict[type, Callable[[Any], tuple[str, Payload]]] = {
    ConversationCreated: _conversation,
    TurnAccepted: _user_message,
    Queued: _queued,
    TextAppended: _message,
    ReasoningAppended: _reasoning,
    Finished: _finished,
}


def encode(event: Event) -> tuple[str, Payload]:
    """The Socket.IO event name and payload for one domain event."""
    return _ENCODERS[type(event)](event)


def error_event(exc: BaseException, **ids: str | None) -> Payload:
    """The `chat:error` payload: `{message, code, ...ids, retryAfter?}`."""
    return error_payload(exc, **ids)


def ack(**fields: Any) -> Payload:
    """A successful acknowledgement: `{ok: true, ...fields}`."""
    return {"ok": True, **fields}


def ack_error(exc: BaseException) -> Payload:
    """A refused event's acknowledgement: `{ok: false, error: {code, message, retryAfter?}}`."""
    payload = error_payload(exc)
    error = {"code": payload["code"], "message": payload["message"]}
    if "retryAfter" in payload:
        error["retryAfter"] = payload["retryAfter"]
    return {"ok": False, "error": error}


def running_reply(
    message_id: str, conversation_id: str, user_id: str, model: str, started_at: str, chars: int
) -> Payload:
    """One row of `admin:stats.replies`."""
    return {
        "messageId": message_id,
        "conversationId": conversation_id,
        "userId": user_id,
        "model": model,
        "startedAt": started_at,
        "chars": chars,
    }


def admin_history(samples: list[Any]) -> tuple[str, Payload]:
    return ADMIN_HISTORY, {"samples": samples}


def admin_stats(snapshot: Payload, replies: list[Payload]) -> tuple[str, Payload]:
    return ADMIN_STATS, {**snapshot, "replies": replies}
