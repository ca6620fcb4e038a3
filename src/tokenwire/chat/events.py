"""What the chat service tells the followers of a turn, in its own words.

The service knows nothing of Socket.IO: it hands these events to each
subscriber's `Sink`, and the wire layer (`tokenwire.wire.protocol`) turns
each into the event name and payload a client receives. For one turn they
come in this order:

    ConversationCreated   (only when the turn created the conversation)
    TurnAccepted          (the user's message, as stored)
    Queued x N            (only while waiting for the model server)
    ReasoningAppended x N / TextAppended x N
    Finished              (exactly one: complete, stopped, error or interrupted)

Offsets count UTF-16 code units, the unit of JavaScript's `String.length`.
"""

from __future__ import annotations

from dataclasses import dataclass

from tokenwire.errors import TokenwireError

__all__ = [
    "ConversationCreated",
    "Event",
    "Finished",
    "Queued",
    "ReasoningAppended",
    "TextAppended",
    "TurnAccepted",
]


@dataclass(slots=True, frozen=True)
class ConversationCreated:
    conversation_id: str


@dataclass(slots=True, frozen=True)
class TurnAccepted:
    conversation_id: str
    user_message_id: str
    content: str


@dataclass(slots=True, frozen=True)
class Queued:
    message_id: str
    conversation_id: str
    position: int  # 1 = next; 0 = the request goes out now


@dataclass(slots=True, frozen=True)
class TextAppended:
    message_id: str
    conversation_id: str
    offset: int  # UTF-16 units of the reply before `content`
    content: str


@dataclass(slots=True, frozen=True)
class ReasoningAppended:
    message_id: str
    conversation_id: str
    offset: int  # UTF-16 units of the reasoning before `content`
    content: str


@dataclass(slots=True, frozen=True)
class Finished:
    """The reply's end, as saved. `status` is a `MessageStatus` value."""

    message_id: str
    conversation_id: str
    status: str
    content: str
    model: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    usage_source: str | None = None
    error: TokenwireError | None = None
    replayed: bool = False  # answered from the database, after the reply had ended


Event = ConversationCreated | TurnAccepted | Queued | TextAppended | ReasoningAppended | Finished
