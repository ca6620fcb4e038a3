"""`/api/conversations`: a user's own conversations and messages; someone else's answer 404."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel

from tokenwire.api.deps import CurrentUser, ServicesDep

__all__ = ["router"]

router = APIRouter(prefix="/api", tags=["conversations"])


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, from_attributes=True)


class ConversationOut(_Camel):
    id: str
    title: str
    model: str
    created_at: datetime
    updated_at: datetime


class ConversationPage(_Camel):
    items: list[ConversationOut]
    total: int
    limit: int
    offset: int


class MessageOut(_Camel):
    id: str
    role: str
    content: str
    status: str
    finish_reason: str | None
    model: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    usage_source: str | None  # "upstream" | "estimated"; null before it was recorded
    reasoning: str | None  # a reasoning model's thinking, when it streamed any
    reasoning_ms: int | None  # how long it thought
    created_at: datetime


@router.get("/conversations", response_model=ConversationPage, response_model_by_alias=True)
async def list_conversations(
    user: CurrentUser,
    services: ServicesDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0)] = 0,
) -> ConversationPage:
    """The caller's conversations, most recently active first."""
    rows, total = await services.repository.list_conversations(
        user.user_id, limit=limit, offset=offset
    )
    items = [ConversationOut.model_validate(row) for row in rows]
    return ConversationPage(items=items, total=total, limit=limit, offset=offset)


@router.get(
    "/conversations/{conversation_id}/messages",
    response_model=list[MessageOut],
    response_model_by_alias=True,
)
async def list_messages(
    conversation_id: str, user: CurrentUser, services: ServicesDep
) -> list[MessageOut]:
    """A conversation's messages, oldest first."""
    rows = await services.repository.list_messages(user.user_id, conversation_id)
    return [MessageOut.model_validate(row) for row in rows]


@router.delete("/conversations/{conversation_id}", status_code=204)
async def delete_conversation(
    conversation_id: str, user: CurrentUser, services: ServicesDep
) -> Response:
    """Delete a conversation and its messages; a reply still streaming in it is stopped first."""
    await services.chat.delete_conversation(user.user_id, conversation_id)
    return Response(status_code=204)


@router.get("/models", tags=["models"])
async def list_models(services: ServicesDep) -> dict[str, object]:
    """The models a client may ask for, and the one used when it names none."""
    settings = services.settings
    return {"default": settings.default_model, "models": settings.allowed_models}
