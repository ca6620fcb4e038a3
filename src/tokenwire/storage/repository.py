"""Every query tokenwire makes, behind methods named for what they mean.

Ownership is enforced here: a conversation that exists but belongs to someone
else raises the same `NotFound` as one that does not exist, so ids leak nothing.
A reply costs two writes (one transaction before the first token, one at the
end) plus one checkpoint per CHECKPOINT_INTERVAL_S while it streams; never a
write per token.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from tokenwire.errors import NotFound
from tokenwire.storage.database import Database
from tokenwire.storage.models import Conversation, Message, MessageStatus, Role, new_id, utcnow

__all__ = ["FinishedReply", "Repository", "Turn"]

_TITLE_CHARS = 80


@dataclass(slots=True, frozen=True)
class Turn:
    """What `begin_turn` committed: ids, and the history to send upstream."""

    conversation_id: str
    created: bool
    user_message_id: str
    assistant_message_id: str
    history: list[dict[str, str]]


@dataclass(slots=True, frozen=True)
class FinishedReply:
    content: str
    status: MessageStatus
    finish_reason: str | None
    model: str
    prompt_tokens: int | None
    completion_tokens: int | None


def _storable(text: str) -> str:
    """Model output with NUL replaced: PostgreSQL's text type cannot hold it."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _title(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _TITLE_CHARS else line[: _TITLE_CHARS - 1] + "…"


class Repository:
    def __init__(self, database: Database) -> None:
        self.db = database

    async def begin_turn(
        self, *, user_id: str, conversation_id: str | None, text: str, model: str
    ) -> Turn:
        """Commit the user's message and an empty streaming reply, in one transaction."""
        now = utcnow()
        async with self.db.session() as session:
            created = conversation_id is None
            history: list[dict[str, str]] = []
            if conversation_id is None:
                conversation = Conversation(
                    id=new_id(),
                    user_id=user_id,
                    title=_title(text),
                    model=model,
                    created_at=now,
                    updated_at=now,
                )
                session.add(conversation)
            else:
                conversation = await self._owned(session, user_id, conversation_id)
                conversation.updated_at = now
                conversation.model = model
                rows = await session.execute(
                    select(Message.role, Message.content)
                    .where(Message.conversation_id == conversation.id, Message.content != "")
                    .order_by(Message.created_at, Message.id)
                )
                history = [{"role": role, "content": content} for role, content in rows]
            user_message = Message(
                id=new_id(),
                conversation_id=conversation.id,
                role=Role.USER.value,
                content=text,
                status=MessageStatus.COMPLETE.value,
                created_at=now,
                updated_at=now,
            )
            # One microsecond later, so ordering by time never puts the reply first.
            later = now + timedelta(microseconds=1)
            reply = Message(
                id=new_id(),
                conversation_id=conversation.id,
                role=Role.ASSISTANT.value,
                content="",
                status=MessageStatus.STREAMING.value,
                model=model,
                created_at=later,
                updated_at=later,
            )
            session.add_all([user_message, reply])
        return Turn(conversation.id, created, user_message.id, reply.id, history)

    async def checkpoint(self, message_id: str, content: str) -> None:
        """Save what a streaming reply has so far (crash recovery; see `sweep_stale`)."""
        async with self.db.session() as session:
            await session.execute(
                update(Message)
                .where(Message.id == message_id, Message.status == MessageStatus.STREAMING.value)
                .values(content=_storable(content), updated_at=utcnow())
            )

    async def finish_reply(self, message_id: str, reply: FinishedReply) -> None:
        now = utcnow()
        content = _storable(reply.content)
        async with self.db.session() as session:
            await session.execute(
                update(Message)
                .where(Message.id == message_id)
                .values(
                    content=content,
                    status=reply.status.value,
                    finish_reason=reply.finish_reason,
                    model=reply.model,
                    prompt_tokens=reply.prompt_tokens,
                    completion_tokens=reply.completion_tokens,
                    updated_at=now,
                )
            )

    async def sweep_stale(self, older_than: datetime) -> int:
        """Mark replies left `streaming` by a dead process as `interrupted`; returns how many."""
        async with self.db.session() as session:
            result = await session.execute(
                update(Message)
                .where(
                    Message.status == MessageStatus.STREAMING.value, Message.updated_at < older_than
                )
                .values(
                    status=MessageStatus.INTERRUPTED.value,
                    finish_reason="interrupted",
                    updated_at=utcnow(),
                )
            )
        return int(getattr(result, "rowcount", 0) or 0)

    async def list_conversations(
        self, user_id: str, *, limit: int, offset: int
    ) -> tuple[list[Conversation], int]:
        async with self.db.session() as session:
            total = await session.scalar(
                select(func.count())
                .select_from(Conversation)
                .where(Conversation.user_id == user_id)
            )
            rows = await session.scalars(
                select(Conversation)
                .where(Conversation.user_id == user_id)
                .order_by(Conversation.updated_at.desc(), Conversation.id.desc())
                .limit(limit)
                .offset(offset)
            )
            return list(rows), int(total or 0)

    async def list_messages(self, user_id: str, conversation_id: str) -> list[Message]:
        async with self.db.session() as session:
            await self._owned(session, user_id, conversation_id)
            rows = await session.scalars(
                select(Message)
                .where(Message.conversation_id == conversation_id)
                .order_by(Message.created_at, Message.id)
            )
            return list(rows)

    async def delete_conversation(self, user_id: str, conversation_id: str) -> None:
        async with self.db.session() as session:
            await self._owned(session, user_id, conversation_id)
            # Explicit, so it does not depend on the backend enforcing ON DELETE CASCADE.
            await session.execute(delete(Message).where(Message.conversation_id == conversation_id))
            await session.execute(delete(Conversation).where(Conversation.id == conversation_id))

    async def get_message(self, message_id: str) -> Message | None:
        async with self.db.session() as session:
            return await session.get(Message, message_id)

    @staticmethod
    async def _owned(session: AsyncSession, user_id: str, conversation_id: str) -> Conversation:
        conversation = await session.get(Conversation, conversation_id)
        if conversation is None or conversation.user_id != user_id:
            raise NotFound()
        return conversation
