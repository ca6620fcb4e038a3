"""Every query tokenwire makes, behind methods named for what they mean.

Ownership is enforced here: a conversation that exists but belongs to someone
else raises the same `NotFound` as one that does not exist, so ids leak nothing.
A reply costs two writes (one transaction before the first token, one at the
end) plus one checkpoint per CHECKPOINT_INTERVAL_S while it streams; never a
write per token.

Each method is one transaction: its body is synchronous SQLAlchemy code handed
to `Database.run`, which runs it whole in a database thread (SQLite) or on the
event loop through the async driver (PostgreSQL); see `storage.database`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import (
    Connection,
    Table,
    and_,
    bindparam,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from tokenwire.errors import NotFound
from tokenwire.storage.database import Database
from tokenwire.storage.models import (
    Conversation,
    Message,
    MessageStatus,
    Node,
    Role,
    new_id,
    utcnow,
)

__all__ = ["FinishedReply", "Repository", "Turn"]

_TITLE_CHARS = 80


@dataclass(slots=True, frozen=True)
class Turn:
    """The ids of one question and its reply, chosen before anything is written."""

    conversation_id: str
    created: bool
    user_message_id: str
    assistant_message_id: str

    @classmethod
    def new(cls, conversation_id: str | None) -> Turn:
        created = conversation_id is None
        return cls(conversation_id or new_id(), created, new_id(), new_id())


@dataclass(slots=True, frozen=True)
class FinishedReply:
    content: str
    status: MessageStatus
    finish_reason: str | None
    model: str
    prompt_tokens: int | None
    completion_tokens: int | None
    usage_source: str | None = None
    reasoning: str | None = None
    reasoning_ms: int | None = None


def _storable(text: str) -> str:
    """Model output with NUL replaced: PostgreSQL's text type cannot hold it."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def _title(text: str) -> str:
    line = " ".join(text.split())
    return line if len(line) <= _TITLE_CHARS else line[: _TITLE_CHARS - 1] + "…"


_C = cast(Table, Conversation.__table__)
_M = cast(Table, Message.__table__)
_N = cast(Table, Node.__table__)
_STREAMING = MessageStatus.STREAMING.value
_INTERRUPTED = MessageStatus.INTERRUPTED.value

_OWNER = select(_C.c.user_id).where(_C.c.id == bindparam("b_id"))
_HISTORY = (
    select(_M.c.role, _M.c.content)
    .where(_M.c.conversation_id == bindparam("b_id"), _M.c.content != "")
    .order_by(_M.c.created_at, _M.c.id)
)
_NEW_CONVERSATION = insert(_C)
_TOUCH_CONVERSATION = (
    update(_C)
    .where(_C.c.id == bindparam("b_id"), _C.c.user_id == bindparam("b_user"))
    .values(updated_at=bindparam("b_now"), model=bindparam("b_model"))
)
_NEW_MESSAGE = insert(_M)
# A node's own reply is never anyone else's to end: if another node swept
# it (this one missed its leases, a long pause or a database outage), its
# next checkpoint takes it back, so it keeps its crash recovery. Finished
# replies (complete, stopped, error) are never touched.
_CHECKPOINT = (
    update(_M)
    .where(
        _M.c.id == bindparam("b_id"),
        _M.c.node_id == bindparam("b_node"),
        # Not `in_(...)`: an IN list is an "expanding" parameter, which
        # SQLAlchemy refuses in executemany, and checkpoints run one
        # statement for every reply that grew.
        or_(_M.c.status == _STREAMING, _M.c.status == _INTERRUPTED),
    )
    .values(
        content=bindparam("b_content"),
        status=_STREAMING,
        finish_reason=None,
        updated_at=bindparam("b_now"),
    )
)
# When a node finds its lease gone (another node found it lapsed), it takes
# back its live replies that were swept, grown or not.
_RECLAIM = (
    update(_M)
    .where(
        _M.c.id == bindparam("b_id"),
        _M.c.node_id == bindparam("b_node"),
        _M.c.status == _INTERRUPTED,
    )
    .values(status=_STREAMING, finish_reason=None)
)
_RENEW_LEASE = (
    update(_N).where(_N.c.id == bindparam("b_node")).values(heartbeat_at=bindparam("b_now"))
)
_TAKE_LEASE = insert(_N)
_DROP_LEASE = delete(_N).where(_N.c.id == bindparam("b_node"))
_LAPSED_LEASES = delete(_N).where(_N.c.heartbeat_at < bindparam("b_before"))
_FINISH = (
    update(_M)
    .where(_M.c.id == bindparam("b_id"))
    .values(
        content=bindparam("b_content"),
        status=bindparam("b_status"),
        finish_reason=bindparam("b_finish"),
        model=bindparam("b_model"),
        prompt_tokens=bindparam("b_prompt"),
        completion_tokens=bindparam("b_completion"),
        usage_source=bindparam("b_usage_source"),
        reasoning=bindparam("b_reasoning"),
        reasoning_ms=bindparam("b_reasoning_ms"),
        updated_at=bindparam("b_now"),
    )
)
_LIVE_NODES = select(_N.c.id).where(_N.c.heartbeat_at >= bindparam("b_before"))
_SWEEP = (
    update(_M)
    .where(
        _M.c.status == _STREAMING,
        or_(
            # Written before node leases existed: judged by its last checkpoint.
            and_(_M.c.node_id.is_(None), _M.c.updated_at < bindparam("b_before")),
            # Never this node's own, and only when its node's lease lapsed.
            and_(_M.c.node_id != bindparam("b_node"), _M.c.node_id.not_in(_LIVE_NODES)),
        ),
    )
    .values(
        status=MessageStatus.INTERRUPTED.value,
        finish_reason="interrupted",
        updated_at=bindparam("b_now"),
    )
)


class Repository:
    def __init__(self, database: Database) -> None:
        self.db = database

    # The per-turn statements are SQLAlchemy Core, built once with bind
    # parameters: the ORM's unit of work, and compiling a cache key for
    # statements with inline values, cost a large share of the gateway's CPU
    # under bench/'s B2 load (py-spy).

    async def load_history(self, user_id: str, conversation_id: str) -> list[dict[str, str]]:
        """The conversation's messages as the model sees them; NotFound unless it is the user's."""

        def load(conn: Connection) -> list[dict[str, str]]:
            _check_owner(conn, user_id, conversation_id)
            rows = conn.execute(_HISTORY, {"b_id": conversation_id})
            return [{"role": role, "content": content} for role, content in rows]

        return await self.db.run(load, write=False)

    async def begin_turn(
        self, turn: Turn, *, user_id: str, text: str, model: str, node_id: str | None = None
    ) -> None:
        """Commit the user's message and an empty streaming reply (and a new conversation), in one transaction."""
        now = utcnow()
        # The reply is one microsecond younger, so ordering by time never
        # puts it before the question.
        later = now + timedelta(microseconds=1)
        messages: list[dict[str, object]] = [
            {
                "id": turn.user_message_id,
                "conversation_id": turn.conversation_id,
                "role": Role.USER.value,
                "content": text,
                "status": MessageStatus.COMPLETE.value,
                "model": None,
                "created_at": now,
                "updated_at": now,
                "node_id": None,
            },
            {
                "id": turn.assistant_message_id,
                "conversation_id": turn.conversation_id,
                "role": Role.ASSISTANT.value,
                "content": "",
                "status": MessageStatus.STREAMING.value,
                "model": model,
                "created_at": later,
                "updated_at": later,
                "node_id": node_id,
            },
        ]

        def begin(conn: Connection) -> None:
            if turn.created:
                conversation = {
                    "id": turn.conversation_id,
                    "user_id": user_id,
                    "title": _title(text),
                    "model": model,
                    "created_at": now,
                    "updated_at": now,
                }
                conn.execute(_NEW_CONVERSATION, conversation)
            else:
                touched = conn.execute(
                    _TOUCH_CONVERSATION,
                    {
                        "b_id": turn.conversation_id,
                        "b_user": user_id,
                        "b_now": now,
                        "b_model": model,
                    },
                )
                if touched.rowcount != 1:
                    raise NotFound()
            conn.execute(_NEW_MESSAGE, messages)

        try:
            await self.db.run(begin)
        except IntegrityError as exc:
            # The conversation was deleted between reading its history and now.
            raise NotFound() from exc

    async def heartbeat(
        self, node_id: str, contents: dict[str, str], live: list[str] | None = None
    ) -> None:
        """Renew the node's lease and save what its streaming replies have so far, in one transaction.

        The lease is what keeps every reply of this node alive for the sweep,
        text or no text; `contents` (the replies that grew) is crash recovery.
        If the lease was gone, the node's `live` replies that were swept
        meanwhile are taken back.
        """
        now = utcnow()
        rows = [
            {"b_id": mid, "b_content": _storable(text), "b_now": now, "b_node": node_id}
            for mid, text in contents.items()
        ]

        def beat(conn: Connection) -> None:
            if not conn.execute(_RENEW_LEASE, {"b_node": node_id, "b_now": now}).rowcount:
                conn.execute(_TAKE_LEASE, {"id": node_id, "started_at": now, "heartbeat_at": now})
                if live:
                    conn.execute(_RECLAIM, [{"b_id": mid, "b_node": node_id} for mid in live])
            if rows:
                conn.execute(_CHECKPOINT, rows)

        await self.db.run(beat)

    async def leave(self, node_id: str) -> None:
        """Give up the node's lease (clean shutdown): whatever it left `streaming` is abandoned."""
        await self.db.run(lambda conn: conn.execute(_DROP_LEASE, {"b_node": node_id}))

    async def finish_reply(self, message_id: str, reply: FinishedReply) -> None:
        values = {
            "b_id": message_id,
            "b_content": _storable(reply.content),
            "b_status": reply.status.value,
            "b_finish": reply.finish_reason,
            "b_model": reply.model,
            "b_prompt": reply.prompt_tokens,
            "b_completion": reply.completion_tokens,
            "b_usage_source": reply.usage_source,
            "b_reasoning": None if reply.reasoning is None else _storable(reply.reasoning),
            "b_reasoning_ms": reply.reasoning_ms,
            "b_now": utcnow(),
        }
        await self.db.run(lambda conn: conn.execute(_FINISH, values))

    async def sweep_stale(self, node_id: str, older_than: datetime) -> int:
        """Mark replies of nodes whose lease lapsed before `older_than` `interrupted`; how many.

        `node_id` is the sweeping node's own: its replies are never swept.
        """
        values = {"b_before": older_than, "b_now": utcnow(), "b_node": node_id}

        def sweep(conn: Connection) -> int:
            count = int(conn.execute(_SWEEP, values).rowcount or 0)
            conn.execute(_LAPSED_LEASES, values)  # their replies are ended now
            return count

        return await self.db.run(sweep)

    async def list_conversations(
        self, user_id: str, *, limit: int, offset: int
    ) -> tuple[list[Conversation], int]:
        def page(conn: Connection) -> tuple[list[Conversation], int]:
            with Session(conn) as session:
                total = session.scalar(
                    select(func.count())
                    .select_from(Conversation)
                    .where(Conversation.user_id == user_id)
                )
                rows = session.scalars(
                    select(Conversation)
                    .where(Conversation.user_id == user_id)
                    .order_by(Conversation.updated_at.desc(), Conversation.id.desc())
                    .limit(limit)
                    .offset(offset)
                )
                return list(rows), int(total or 0)

        return await self.db.run(page, write=False)

    async def list_messages(self, user_id: str, conversation_id: str) -> list[Message]:
        def messages(conn: Connection) -> list[Message]:
            _check_owner(conn, user_id, conversation_id)
            with Session(conn) as session:
                return list(
                    session.scalars(
                        select(Message)
                        .where(Message.conversation_id == conversation_id)
                        .order_by(Message.created_at, Message.id)
                    )
                )

        return await self.db.run(messages, write=False)

    async def delete_conversation(self, user_id: str, conversation_id: str) -> None:
        def remove(conn: Connection) -> None:
            _check_owner(conn, user_id, conversation_id)
            # Explicit, so it does not depend on the backend enforcing ON DELETE CASCADE.
            conn.execute(delete(_M).where(_M.c.conversation_id == conversation_id))
            conn.execute(delete(_C).where(_C.c.id == conversation_id))

        await self.db.run(remove)

    async def get_reply(self, user_id: str, message_id: str) -> Message:
        """One of the user's assistant messages; NotFound for someone else's, like a missing one."""

        def get(conn: Connection) -> Message:
            with Session(conn) as session:
                message = session.get(Message, message_id)
                if message is None or message.role != Role.ASSISTANT.value:
                    raise NotFound("No such reply.")
                if conn.scalar(_OWNER, {"b_id": message.conversation_id}) != user_id:
                    raise NotFound("No such reply.")
                return message

        return await self.db.run(get, write=False)

    async def get_message(self, message_id: str) -> Message | None:
        def get(conn: Connection) -> Message | None:
            with Session(conn) as session:
                return session.get(Message, message_id)

        return await self.db.run(get, write=False)


def _check_owner(conn: Connection, user_id: str, conversation_id: str) -> None:
    """NotFound unless the conversation exists and is the user's."""
    if conn.scalar(_OWNER, {"b_id": conversation_id}) != user_id:
        raise NotFound()
