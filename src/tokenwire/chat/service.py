"""The chat service: one turn of a conversation, from the user's message to the saved reply.

`start` commits the user's message and an empty `streaming` reply in one
transaction, announces them, and hands the reply to a task it owns; that task
pumps the provider's stream into the reply's log (`chat.log`), then saves the
reply with its final status and tells every follower exactly once that it
`Finished`:

    complete     -> chat:end        (all of it reached the upstream's finish)
    stopped      -> chat:stopped    (a stop command, or the conversation was deleted)
    error        -> chat:error      (upstream failure or timeout)
    interrupted  -> chat:error      (SERVER_SHUTDOWN: the grace period ran out)

Followers: the socket that started the reply, the sockets joined to its
conversation (`join`), and any that `resume` it from an offset. A follower
that goes away only stops following: the reply keeps generating and is
saved whole. The service knows nothing of Socket.IO; it speaks domain events
(`chat.events`) to each follower's `Sink`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta

from tokenwire.chat.deadline import Deadline
from tokenwire.chat.events import (
    ConversationCreated,
    Finished,
    Queued,
    TurnAccepted,
)
from tokenwire.chat.limits import Limits
from tokenwire.chat.log import MemoryReplyLog, utf16_slice
from tokenwire.chat.queue import UpstreamQueue
from tokenwire.chat.replies import Reply, ReplyRegistry
from tokenwire.chat.rooms import Rooms
from tokenwire.chat.writer import ChunkWriter, Sink, utf16_len
from tokenwire.config import Settings
from tokenwire.errors import (
    Busy,
    InvalidModel,
    ServerShutdown,
    TokenwireError,
    Unavailable,
    UpstreamError,
    UpstreamTimeout,
    ValidationFailed,
)
from tokenwire.metrics import Metrics
from tokenwire.providers import ChatRequest, Provider, Reasoning, StreamEnd, Usage
from tokenwire.storage import FinishedReply, MessageStatus, Repository, Turn
from tokenwire.storage.models import Message, new_id, utcnow
from tokenwire.tokens import count_messages, count_text, most_tokens, trim_history

__all__ = ["INTERRUPT_SAVE_S", "CatchUp", "ChatService", "Joined", "StartChat", "Started"]

log = logging.getLogger(__name__)

_SAVE_ATTEMPTS = 5
_WRITE_AFTER_S = 0.05  # longest a turn waits for its first token before it is written
_MIN_REPLY_TOKENS = 16  # less room than this for the reply: "too long for this model"
# On shutdown, after the grace period: how long interrupted replies get to be
# saved and announced. A healthy database takes milliseconds; past this the
# reply stays `streaming` with its last checkpoint, which the next start's
# sweep marks interrupted, so nothing is lost that a crash would not lose.
INTERRUPT_SAVE_S = 3.0


@dataclass(slots=True, frozen=True)
class StartChat:
    """A validated `chat:start`."""

    message: str
    conversation_id: str | None = None
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None


@dataclass(slots=True, frozen=True)
class Started:
    conversation_id: str
    user_message_id: str
    message_id: str


@dataclass(slots=True)
class CatchUp:
    """A late follower, held until its join or resume is acknowledged; `send` lets it go."""

    message_id: str
    conversation_id: str
    writers: list[ChunkWriter]

    async def send(self) -> None:
        for writer in self.writers:
            await writer.release()


@dataclass(slots=True)
class Joined:
    conversation_id: str
    messages: list[Message]
    streaming: tuple[str, int] | None  # (messageId, UTF-16 units so far) of a running reply
    catch_up: CatchUp | None


class ChatService:
    def __init__(
        self,
        settings: Settings,
        repository: Repository,
        provider: Provider,
        limits: Limits | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.settings = settings
        self.repository = repository
        self.provider = provider
        self.limits = limits or Limits(settings)
        self.replies = ReplyRegistry()
        self.rooms = Rooms()
        self.metrics = metrics or Metrics()
        self.metrics.streaming = self.replies.__len__
        self.queue = UpstreamQueue(settings.upstream_max_concurrency)
        self.metrics.queued = lambda: self.queue.waiting
        # Running replies are counted by characters sent (about 4 per token);
        # finished ones by their exact usage.
        self.metrics.live_tokens = lambda: sum(r.log.length for r in self.replies) // 4
        self.accepting = True
        # This process's identity in the database: its replies carry it, and
        # its lease (`heartbeat`) keeps them from being swept while it lives.
        self.node_id = new_id()
        self._system = (
            [{"role": "system", "content": settings.system_prompt}]
            if settings.system_prompt
            else []
        )

    # --- turns

    async def start(
        self, user_id: str, sid: str | None, sink: Sink | None, chat: StartChat
    ) -> Started:
        if not self.accepting:
            raise ServerShutdown("The server is restarting. Please try again in a moment.")
        if sid is not None and self.replies.for_sid(sid) is not None:
            raise Busy()
        model = chat.model or self.settings.default_model
        if not self.settings.model_allowed(model):
            raise InvalidModel(f"The model '{model[:100]}' is not available here.")
        latest = {"role": "user", "content": chat.message}
        # Before the rate limit: a message refused as too long costs nothing.
        max_tokens, budget = await self._fit(model, latest, chat.max_tokens)
        await self.limits.check_start(user_id, self.replies.count_for_user(user_id))
        turn = Turn.new(chat.conversation_id)
        history = (
            []
            if turn.created
            else await self.repository.load_history(user_id, turn.conversation_id)
        )
        if sid is not None and self.replies.for_sid(sid) is not None:
            raise Busy()  # a second chat:start on this socket got here first

        request = ChatRequest(
            model=model,
            messages=trim_history(self._system, history, latest, budget),
            max_tokens=max_tokens,
            temperature=(
                self.settings.default_temperature if chat.temperature is None else chat.temperature
            ),
        )
        log_ = MemoryReplyLog(
            turn.assistant_message_id,
            turn.conversation_id,
            flush_s=self.settings.stream_flush_ms / 1000,
        )
        reply = Reply(turn.assistant_message_id, turn.conversation_id, user_id, sid, request, log_)
        self.replies.add(reply)
        # Its followers from the first event: the starting socket, and every
        # socket joined to the conversation (all held until the turn is announced).
        starter = sid if sid is not None else f"reply:{reply.message_id}"
        followers = {} if turn.created else self.rooms.members(turn.conversation_id)
        if sink is not None:
            followers[starter] = sink
        for key, follower in followers.items():
            log_.follow(key, follower, 0, reasoning=True)
            self.replies.followed(key, reply)
        # The upstream request goes out now and the turn is written while it
        # streams: neither the request nor the client's first token waits on
        # the database. The write even waits for the first token (at most
        # _WRITE_AFTER_S), so its round trips do not hold the event loop while
        # the token is on its way: on SQLite the commit took ~1 ms longer than
        # a fast upstream's first token (B1). A real model's first token takes
        # longer than that bound, so there the write happens in its wait. The
        # final event and the checkpoints do wait for the commit. If the
        # write fails, the reply is aborted: the client gets chat:error with
        # the ids it was announced, and nothing of the turn is stored.
        reply.task = asyncio.create_task(self._run(reply), name=f"reply:{reply.message_id}")
        try:
            # The request goes first: announcing writes to the client, and on
            # a small machine the client woken by those writes takes the CPU
            # the request was waiting for (B1). The turn is announced while
            # the upstream works on its answer; no chunk overtakes it, since
            # every follower is held until `release`.
            await reply.under_way.wait()
            await self._announce(turn, chat.message, log_, starter)
            await log_.release()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_WRITE_AFTER_S):
                    await reply.first_token.wait()
            await self.repository.begin_turn(
                turn, user_id=user_id, text=chat.message, model=model, node_id=self.node_id
            )
        except BaseException as exc:
            reply.stop("aborted")
            await asyncio.shield(reply.task)
            if isinstance(exc, TokenwireError):
                exc.ids = {"conversationId": turn.conversation_id, "messageId": reply.message_id}
            raise
        reply.committed.set()
        reply.written.set_result(True)
        if sid is not None and sink is not None:
            self.rooms.join(turn.conversation_id, sid, sink)  # it follows the conversation now
        self.metrics.reply_started(model)
        log.info(
            "reply started",
            extra={
                "conversation_id": turn.conversation_id,
                "message_id": reply.message_id,
                "model": model,
            },
        )
        return Started(turn.conversation_id, turn.user_message_id, turn.assistant_message_id)

    async def _fit(self, model: str, latest: dict[str, str], asked: int | None) -> tuple[int, int]:
        """The reply's max_tokens and the prompt's token budget, within the model's context.

        With the context window known (MODEL_CONTEXT, else the upstream's
        /v1/models), the reply gets at most what the system prompt and the
        new message leave; a default max_tokens at most half the window, so
        the other half can carry history. History then fills what the reply
        leaves, up to HISTORY_MAX_TOKENS. A message that leaves the reply
        fewer than _MIN_REPLY_TOKENS is refused before the upstream is asked:
        llama.cpp answers it with an empty body, others with a 400. Counts
        are cl100k_base's, an estimate for other model families.
        """
        max_tokens = asked or self.settings.default_max_tokens
        budget = self.settings.history_max_tokens
        context = self.settings.model_context.get(model) or await self.provider.context_window(
            model
        )
        if context is None:
            return max_tokens, budget
        prompt = [*self._system, latest]
        if asked is None:
            max_tokens = min(max_tokens, max(context // 2, _MIN_REPLY_TOKENS))
        # The bound gives the same answer as the count whenever it leaves
        # the reply all it asked for; only a message near the window is counted.
        room = context - most_tokens(prompt)
        if room < max(max_tokens, _MIN_REPLY_TOKENS):
            room = context - count_messages(prompt)
        if room < _MIN_REPLY_TOKENS:
            raise ValidationFailed(
                f"The message is too long for this model: it reads at most {context} tokens "
                "in all. Please shorten it."
            )
        max_tokens = min(max_tokens, room)
        return max_tokens, min(budget, context - max_tokens)

    async def _announce(self, turn: Turn, text: str, log_: MemoryReplyLog, starter: str) -> None:
        """chat:conversation (for a new one, to its starter) and chat:user-message, before any chunk."""
        if turn.created:
            await log_.announce(ConversationCreated(turn.conversation_id), only=starter)
        await log_.announce(TurnAccepted(turn.conversation_id, turn.user_message_id, text))

    # --- commands: stop, follow

    async def stop(self, sid: str) -> Reply | None:
        """Stop the reply this socket started and wait until it is saved and announced."""
        return await self._stop(self.replies.for_sid(sid))

    async def stop_message(self, message_id: str) -> Reply | None:
        """Stop any running reply by id (the admin dashboard's Stop button)."""
        return await self._stop(self.replies.get(message_id))

    async def stop_reply(
        self, user_id: str, *, message_id: str | None = None, conversation_id: str | None = None
    ) -> Reply | None:
        """Stop the user's reply, named by its id or its conversation's, from any socket.

        Someone else's reply is not found, exactly like a missing one.
        """
        if message_id is not None:
            reply = self.replies.get(message_id)
        else:
            running = self.replies.in_conversation(conversation_id or "")
            reply = next((r for r in running if r.user_id == user_id), None)
        if reply is None or reply.user_id != user_id:
            return None
        return await self._stop(reply)

    async def _stop(self, reply: Reply | None) -> Reply | None:
        if reply is None or reply.task is None:
            return None
        reply.stop("stopped")
        await asyncio.shield(reply.task)
        return reply

    async def join(self, user_id: str, key: str, sink: Sink, conversation_id: str) -> Joined:
        """Follow a conversation: its messages now, every event of it from here on.

        A reply of it that is running is followed from offset 0: its text so
        far goes out as one chunk when the caller sends the catch-up (after
        the acknowledgement), then live. Someone else's conversation is
        NotFound, like a missing one (the repository checks).
        """
        messages = await self.repository.list_messages(user_id, conversation_id)
        # No await from here on: the membership, the running reply's catch-up
        # and its live text are taken in one step.
        self.rooms.join(conversation_id, key, sink)
        streaming: tuple[str, int] | None = None
        writers: list[ChunkWriter] = []
        for reply in self.replies.in_conversation(conversation_id):
            if reply.user_id != user_id:
                continue
            writers.append(reply.log.follow(key, sink, 0, reasoning=True))
            self.replies.followed(key, reply)
            streaming = (reply.message_id, reply.log.length)
        catch_up = CatchUp(streaming[0], conversation_id, writers) if streaming else None
        return Joined(conversation_id, messages, streaming, catch_up)

    def leave(self, key: str, conversation_id: str) -> bool:
        """Stop following a conversation and its running replies; False if it was not joined."""
        for reply in self.replies.following(key):
            if reply.conversation_id == conversation_id:
                self.replies.unfollow(key, reply)
        return self.rooms.leave(conversation_id, key)

    async def resume(
        self, user_id: str, key: str, sink: Sink, message_id: str, offset: int
    ) -> CatchUp:
        """Follow one reply from `offset` (UTF-16 units): the missed text, then live, then its end.

        Its reasoning so far comes first, whole, at reasoning offset 0 (as on
        `join`): `offset` counts the text only, and a reloaded page holds no
        reasoning; a client that kept its own sees offset 0 and can skip it.
        A reply that has ended is answered from the database: its reasoning,
        the missing tail and its final event with the whole content. Someone
        else's or a missing reply is NotFound; an offset past its end (or
        inside a character) is VALIDATION_ERROR.
        """
        reply = self.replies.get(message_id)
        if reply is not None and reply.user_id == user_id:
            try:
                writer = reply.log.follow(key, sink, offset, reasoning=True)
            except ValueError:
                raise _bad_offset(offset, reply.log.length) from None
            self.replies.followed(key, reply)
            return CatchUp(message_id, reply.conversation_id, [writer])
        row = await self.repository.get_reply(user_id, message_id)
        try:
            tail = utf16_slice(row.content, offset)
        except ValueError:
            raise _bad_offset(offset, utf16_len(row.content)) from None
        writer = ChunkWriter(
            sink, message_id=row.id, conversation_id=row.conversation_id, flush_s=0, sent=offset
        )
        writer.preload(tail, row.reasoning or "", _saved_end(row))
        return CatchUp(message_id, row.conversation_id, [writer])

    def detach(self, sid: str) -> None:
        """The socket disconnected: it follows nothing now; its reply carries on and is saved."""
        self.rooms.leave_all(sid)
        if self.replies.detach(sid) is not None:
            log.info("socket left mid-reply; the reply continues")

    async def delete_conversation(self, user_id: str, conversation_id: str) -> None:
        for reply in self.replies.in_conversation(conversation_id):
            if reply.user_id == user_id and reply.task is not None:
                reply.stop("deleted")
                await asyncio.shield(reply.task)
        await self.repository.delete_conversation(user_id, conversation_id)

    # --- one reply

    async def _run(self, reply: Reply) -> None:
        status = MessageStatus.COMPLETE
        end: StreamEnd | None = None
        error: TokenwireError | None = None
        # The generation is a task of its own, so a stop cancels it and
        # nothing else: this task is never cancelled by us, and never uncancels.
        generation = asyncio.create_task(self._pump(reply), name=f"generate:{reply.message_id}")
        reply.generation = generation
        if reply.stop_reason is not None:
            generation.cancel()  # stopped before it began
        try:
            await asyncio.wait([generation])
        except asyncio.CancelledError:
            generation.cancel()  # the loop itself is going away (not a stop): let it
            raise
        finally:
            reply.under_way.set()  # stopped before its request went out, or failed
        if generation.cancelled():
            if reply.stop_reason in ("stopped", "deleted"):
                status = MessageStatus.STOPPED
            elif reply.stop_reason == "timeout":
                status, error = MessageStatus.ERROR, UpstreamTimeout()
            else:
                status, error = MessageStatus.INTERRUPTED, ServerShutdown()
        else:
            exc = generation.exception()
            if exc is None:
                end = generation.result()
            elif isinstance(exc, UpstreamError):
                status, error = MessageStatus.ERROR, exc
            elif isinstance(exc, ServerShutdown):  # shut down while waiting in line
                status, error = MessageStatus.INTERRUPTED, exc
            else:
                log.error("reply failed unexpectedly", exc_info=exc)
                status, error = MessageStatus.ERROR, TokenwireError()
                error.__cause__ = exc
        # A reply is saved, and its end announced, only once its turn is
        # committed; an aborted turn never is (`written` is then False).
        written = await reply.written
        reply.state = "saving"
        try:
            if written:
                await self._finish(reply, status, end, error)
            # else: the turn was never committed; nothing to save, nobody to tell.
        finally:
            reply.state = "done"
            self.replies.remove(reply)

    async def _pump(self, reply: Reply) -> StreamEnd:
        queued = not self.queue.try_acquire()
        if queued:
            reply.under_way.set()  # in line: the turn is announced, then chat:queued
            await self._wait_in_line(reply)
        try:
            if queued:  # out of the line: the request goes out now
                await reply.log.notice(Queued(reply.message_id, reply.conversation_id, 0))
            return await self._generate(reply)
        finally:
            self.queue.release()

    async def _wait_in_line(self, reply: Reply) -> None:
        """UPSTREAM_MAX_CONCURRENCY replies are running: wait for a slot, telling the client.

        The wait has its own limit, UPSTREAM_QUEUE_TIMEOUT_S; UPSTREAM_TIMEOUT_S
        starts when the request goes out. A client that leaves does not
        leave the line: its reply is generated and saved, as always.
        """

        async def tell(position: int) -> None:
            await reply.log.notice(Queued(reply.message_id, reply.conversation_id, position))

        try:
            async with asyncio.timeout(self.settings.upstream_queue_timeout_s):
                await self.queue.acquire(tell)
        except TimeoutError:
            raise UpstreamTimeout(
                "The AI model is busy with other requests. Please try again in a while."
            ) from None

    async def _generate(self, reply: Reply) -> StreamEnd:
        loop = asyncio.get_running_loop()
        parts, log_ = reply.parts, reply.log
        end: StreamEnd | None = None
        started = loop.time()
        deadline = Deadline(
            self.settings.upstream_timeout_s,
            self.settings.upstream_idle_timeout_s,
            lambda: reply.stop("timeout"),
        )
        try:
            async with contextlib.aclosing(self.provider.stream(reply.request)) as stream:
                # Set before the first step of the stream, which writes the
                # request: whoever waits for it runs once that step yields.
                reply.under_way.set()
                async for item in stream:
                    if type(item) is str:
                        now = loop.time()
                        first = not parts
                        deadline.touch(now)
                        await log_.append(item)
                        if first:
                            self.metrics.first_token(now - started)
                            reply.first_token.set()
                            if reply.thinking_from is not None:
                                reply.thinking_until = now
                    elif isinstance(item, Reasoning):
                        # Thinking is output: it keeps the reply within
                        # UPSTREAM_IDLE_TIMEOUT_S, and the turn may be written.
                        now = loop.time()
                        deadline.touch(now)
                        if reply.thinking_from is None:
                            reply.thinking_from = now
                        await log_.think(str(item))
                        reply.first_token.set()
                    elif isinstance(item, StreamEnd):
                        end = item
        finally:
            deadline.cancel()
            reply.first_token.set()  # no token is coming: the turn is written now
        if end is None:
            raise UpstreamError()
        return end

    async def _finish(
        self,
        reply: Reply,
        status: MessageStatus,
        end: StreamEnd | None,
        error: TokenwireError | None,
    ) -> None:
        await reply.log.flush()
        content = reply.content
        finish_reason = end.finish_reason if end is not None else status.value
        usage, usage_source = _usage(reply, end, content, finish_reason)
        reasoning = reply.reasoning
        model = (end.model if end is not None and end.model else None) or reply.request.model
        await self._save(
            reply.message_id,
            FinishedReply(
                content,
                status,
                finish_reason,
                model,
                usage.prompt_tokens,
                usage.completion_tokens,
                usage_source,
                reasoning,
                reply.thinking_ms(asyncio.get_running_loop().time()),
            ),
        )
        self.metrics.reply_finished(
            status=status.value,
            finish_reason=finish_reason,
            model=model,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            seconds=asyncio.get_running_loop().time() - reply.started_at,
            usage_source=usage_source,
        )
        if error is not None:
            self.metrics.error(error.code)
        log.info(
            "reply %s",
            status.value,
            extra={
                "conversation_id": reply.conversation_id,
                "message_id": reply.message_id,
                "finish_reason": finish_reason,
                "completion_tokens": usage.completion_tokens,
            },
        )
        await reply.log.finish(
            Finished(
                reply.message_id,
                reply.conversation_id,
                status.value,
                content,
                model=model,
                finish_reason=finish_reason,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                usage_source=usage_source,
                error=error,
            )
        )

    async def _save(self, message_id: str, finished: FinishedReply) -> None:
        """Save a finished reply, retrying through a short database outage."""
        for attempt in range(_SAVE_ATTEMPTS):
            try:
                await self.repository.finish_reply(message_id, finished)
                return
            except Unavailable:
                if attempt == _SAVE_ATTEMPTS - 1:
                    break
                await asyncio.sleep(0.2 * 2**attempt)
        # The reply stays `streaming` with its last checkpoint; the stale-reply
        # sweep marks it interrupted once the database is back.
        log.error("could not save reply %s: database unavailable", message_id)

    # --- checkpoints and recovery

    async def checkpoint_once(self) -> int:
        """Renew this node's lease and save every reply that grew since its last checkpoint.

        One transaction per interval, however many replies run. The lease is
        written even when no reply produced text: a first token may take
        minutes (a long prompt on a CPU, a reasoning model, a queued request)
        and the reply is alive all that time. Returns how many replies were saved.
        """
        live = [reply for reply in self.replies if reply.committed.is_set()]
        grown = [(r, len(r.parts)) for r in live if len(r.parts) != r.checkpointed_parts]
        try:
            await self.repository.heartbeat(
                self.node_id,
                {r.message_id: "".join(r.parts[:n]) for r, n in grown},
                [r.message_id for r in live],
            )
        except Unavailable:
            log.warning("checkpoint skipped: database unavailable")
            return 0
        for reply, count in grown:
            reply.checkpointed_parts = count
        return len(grown)

    async def sweep_stale(self) -> int:
        """Mark replies of dead nodes (no lease for 3 intervals) interrupted; never this node's."""
        cutoff = utcnow() - timedelta(seconds=3 * self.settings.checkpoint_interval_s)
        count = await self.repository.sweep_stale(self.node_id, cutoff)
        if count:
            log.warning("marked %d abandoned replies interrupted", count)
        return count

    async def run_housekeeping(self) -> None:
        """Checkpoint every interval and sweep abandoned replies; runs for the app's lifetime."""
        interval = self.settings.checkpoint_interval_s
        ticks = 0
        while True:
            await asyncio.sleep(interval)
            ticks += 1
            try:
                await self.checkpoint_once()
                if ticks % 3 == 0:
                    await self.sweep_stale()
            except Unavailable:
                log.warning("housekeeping skipped: database unavailable")
            except Exception:
                log.exception("housekeeping failed")

    # --- shutdown

    async def shutdown(self, grace_s: float) -> None:
        """Refuse new replies, let running ones finish for `grace_s`, then interrupt the rest."""
        self.accepting = False
        self.queue.close()  # replies still waiting for the upstream end now, interrupted
        tasks = [r.task for r in self.replies if r.task is not None]
        if tasks:
            log.info("waiting up to %.0fs for %d running replies", grace_s, len(tasks))
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for reply in self.replies:
                reply.stop("shutdown")
            if pending:
                _, late = await asyncio.wait(pending, timeout=INTERRUPT_SAVE_S)
                if late:
                    log.error(
                        "%d replies not saved within %.0f s of shutdown; "
                        "they stay at their last checkpoint",
                        len(late),
                        INTERRUPT_SAVE_S,
                    )


def _usage(
    reply: Reply, end: StreamEnd | None, content: str, finish_reason: str
) -> tuple[Usage, str]:
    """The reply's token usage and where it came from: "upstream" or "estimated".

    Many servers (llama-cpp-python, some gateways) ignore
    `stream_options.include_usage`; then tokens are counted with cl100k_base,
    which is only an estimate for other model families (172 counted for 150
    generated by Gemma 3). A reply that ended at `length` generated exactly
    `max_tokens`, so that count is exact even then; the prompt's stays an
    estimate, and so does the source.
    """
    if end is not None and end.usage is not None:
        return end.usage, "upstream"
    if finish_reason == "length":
        completion = reply.request.max_tokens
    else:
        # Reasoning tokens are completion tokens too (OpenAI counts them so).
        completion = count_text(content) + (count_text(reply.reasoning or ""))
    return Usage(count_messages(reply.request.messages), completion), "estimated"


def _bad_offset(offset: int, length: int) -> ValidationFailed:
    return ValidationFailed(
        f"'offset' {offset} is not a place in this reply: it holds {length} UTF-16 units so far."
    )


def _saved_end(row: Message) -> Finished:
    """A finished reply's final event, from what was saved. A reply still `streaming` in the
    database is not running here: its node died or is another one; what is saved is all
    this node can tell, so it ends as interrupted."""
    status = row.status if row.status != MessageStatus.STREAMING.value else "interrupted"
    error: TokenwireError = UpstreamError() if status == "error" else ServerShutdown()
    return Finished(
        row.id,
        row.conversation_id,
        status,
        row.content,
        model=row.model,
        finish_reason=row.finish_reason,
        prompt_tokens=row.prompt_tokens or 0,
        completion_tokens=row.completion_tokens or 0,
        usage_source=row.usage_source,
        error=error,
        replayed=True,
    )
