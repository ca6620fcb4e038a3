"""The client events' payloads as pydantic models: what `chat:start` may carry, checked strictly.

Strict types: `"5"` is not a number and `true` is not an integer. Unknown
fields are ignored, so newer clients can send more. Limits that depend on
configuration (MAX_MESSAGE_CHARS, the maxTokens ceiling) come in through the
validation context.
"""

from __future__ import annotations

import math
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic.types import StrictFloat

from tokenwire.chat import StartChat
from tokenwire.config import Settings
from tokenwire.errors import ValidationFailed

__all__ = [
    "ChatStartPayload",
    "ConversationPayload",
    "ResumePayload",
    "StopPayload",
    "parse_conversation",
    "parse_resume",
    "parse_start",
    "parse_stop",
]

_Id = Annotated[StrictStr, Field(min_length=1, max_length=255)]


class ChatStartPayload(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    user_id: _Id | StrictInt | None = Field(None, alias="userId")
    message: StrictStr
    conversation_id: _Id | None = Field(None, alias="conversationId")
    model: Annotated[StrictStr, Field(min_length=1, max_length=200)] | None = None
    max_tokens: StrictInt | None = Field(None, alias="maxTokens")
    temperature: StrictFloat | StrictInt | None = None

    @field_validator("user_id", "conversation_id", "model", mode="before")
    @classmethod
    def _plain_text(cls, value: Any) -> Any:
        if isinstance(value, str) and not _storable_text(value):
            raise ValueError("must be plain text")
        return value

    @field_validator("message")
    @classmethod
    def _message(cls, value: str, info: ValidationInfo) -> str:
        limit = _settings(info).max_message_chars
        if not value.strip():
            raise ValueError("must not be empty")
        if not _storable_text(value):
            raise ValueError("must be valid text without NUL characters")
        if len(value) > limit:
            raise ValueError(f"must be at most {limit} characters")
        return value

    @field_validator("max_tokens")
    @classmethod
    def _max_tokens(cls, value: int | None, info: ValidationInfo) -> int | None:
        ceiling = _settings(info).max_tokens_limit
        if value is not None and not 1 <= value <= (ceiling or value):
            raise ValueError(f"must be an integer from 1 to {ceiling}")
        return value

    @field_validator("temperature")
    @classmethod
    def _temperature(cls, value: float | None) -> float | None:
        if value is not None and (not math.isfinite(value) or not 0 <= value <= 2):
            raise ValueError("must be a number from 0 to 2")
        return value


def _storable_text(value: str) -> bool:
    """No NUL (PostgreSQL's text cannot hold it) and no lone surrogate (not encodable as UTF-8)."""
    if "\x00" in value:
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _settings(info: ValidationInfo) -> Settings:
    context = info.context or {}
    settings = context.get("settings")
    assert isinstance(settings, Settings)
    return settings


def _describe(exc: ValidationError) -> str:
    err = exc.errors(include_url=False, include_input=False)[0]
    field = ".".join(str(p) for p in err["loc"] if not isinstance(p, int) or len(err["loc"]) == 1)
    by_alias = {
        "user_id": "userId",
        "conversation_id": "conversationId",
        "max_tokens": "maxTokens",
        "message_id": "messageId",
    }
    field = by_alias.get(field, field)
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "missing":
        message = "is required"
    elif err["type"] in ("string_type", "int_type", "float_type") or "type" in err["type"]:
        message = "has the wrong type"
    return f"'{field}' {message}." if field else f"The payload {message}."


def parse_start(data: Any, settings: Settings) -> tuple[StartChat, str | None]:
    """Validate a `chat:start` payload; returns the request and the userId it named, if any."""
    if not isinstance(data, dict):
        raise ValidationFailed(
            "chat:start takes an object: {message, conversationId?, model?, ...}."
        )
    try:
        payload = ChatStartPayload.model_validate(data, context={"settings": settings})
    except ValidationError as exc:
        raise ValidationFailed(_describe(exc)) from None
    user_id = None if payload.user_id is None else str(payload.user_id)
    chat = StartChat(
        message=payload.message,
        conversation_id=payload.conversation_id,
        model=payload.model,
        max_tokens=payload.max_tokens,
        temperature=None if payload.temperature is None else float(payload.temperature),
    )
    return chat, user_id


class ConversationPayload(BaseModel):
    """`chat:join` / `chat:leave`: `{conversationId}`."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    conversation_id: _Id = Field(alias="conversationId")
    user_id: _Id | StrictInt | None = Field(None, alias="userId")


class ResumePayload(BaseModel):
    """`chat:resume`: `{messageId, offset}`, offset in UTF-16 units the client holds."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    message_id: _Id = Field(alias="messageId")
    offset: Annotated[StrictInt, Field(ge=0)]
    user_id: _Id | StrictInt | None = Field(None, alias="userId")


class StopPayload(BaseModel):
    """`chat:stop {messageId}` or `{conversationId}`; without a payload, this socket's reply."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    message_id: _Id | None = Field(None, alias="messageId")
    conversation_id: _Id | None = Field(None, alias="conversationId")
    user_id: _Id | StrictInt | None = Field(None, alias="userId")


_M = TypeVar("_M", bound=BaseModel)


def _parse(model: type[_M], data: Any, what: str) -> _M:
    if not isinstance(data, dict):
        raise ValidationFailed(f"{what}.")
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ValidationFailed(_describe(exc)) from None


def parse_conversation(data: Any, event: str) -> ConversationPayload:
    return _parse(ConversationPayload, data, f"{event} takes an object: {{conversationId}}")


def parse_resume(data: Any) -> ResumePayload:
    return _parse(ResumePayload, data, "chat:resume takes an object: {messageId, offset}")


def parse_stop(data: Any) -> StopPayload | None:
    """None for a `chat:stop` without a payload: the reply this socket started.

    Anything but an object also means that, as it did before chat:stop took
    ids (its payload was ignored then); an object is checked strictly.
    """
    if not isinstance(data, dict):
        return None
    payload = _parse(StopPayload, data, "chat:stop takes nothing, {messageId} or {conversationId}")
    if payload.message_id is None and payload.conversation_id is None:
        return None
    return payload
