"""The chat service: one turn of a conversation, from the user's message to the saved reply.

`start` commits the user's message and an empty `streaming` reply in one
transaction, announces them, and hands the reply to a task it owns; that task
pumps the provider's stream into the socket, then saves the reply with its
final status and emits exactly one final event:

    complete     -> chat:end        (all of it reached the upstream's finish)
    stopped      -> chat:stopped    (chat:stop, or the conversation was deleted)
    error        -> chat:error      (upstream failure or timeout)
    interrupted  -> chat:error      (SERVER_SHUTDOWN: the grace period ran out)

A socket that goes away only detaches: the reply keeps generating and is saved
whole. The service knows nothing of Socket.IO; it is handed an `Emit`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from tokenwire.chat.deadline import Deadline
from tokenwire.chat.limits import Limits
from tokenwire.chat.queue import UpstreamQueue
from tokenwire.chat.replies import Reply, ReplyRegistry
from tokenwire.chat.writer import ChunkWriter, Sink
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
    error_payload,
)
from tokenwire.metrics import Metrics
from tokenwire.providers import ChatRequest, Provider, Reasoning, StreamEnd, Usage
from tokenwire.storage import FinishedReply, MessageStatus, Repository, Turn
from tokenwire.storage.models import new_id, utcnow
from tokenwire.tokens import count_messages, count_text, trim_history

__all__ = ["INTERRUPT_SAVE_S", "ChatService", "StartChat", "Started"]

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


def _uncancel() -> None:
    """We cancelled this task ourselves (stop, timeout, shutdown) and handle it: carry on."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


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
        self.metrics = metrics or Metrics()
        self.metrics.streaming = self.replies.__len__
        self.queue = UpstreamQueue(settings.upstream_max_concurrency)
        self.metrics.queued = lambda: self.queue.waiting
        # Running replies are counted by characters sent (about 4 per token);
        # finished ones by their exact usage.
        self.metrics.live_tokens = lambda: sum(r.writer.sent for r in self.replies) // 4
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
        writer = ChunkWriter(
            sink,
            message_id=turn.assistant_message_id,
            conversation_id=turn.conversation_id,
            flush_s=self.settings.stream_flush_ms / 1000,
        )
        reply = Reply(
            turn.assistant_message_id, turn.conversation_id, user_id, sid, request, writer
        )
        self.replies.add(reply)
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
            await self._announce(turn, chat.message, writer)
            await writer.release()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(_WRITE_AFTER_S):
                    await reply.first_token.wait()
            await self.repository.begin_turn(
                turn, user_id=user_id, text=chat.message, model=model, node_id=self.node_id
            )
        except BaseException as exc:
            reply.cancel("aborted")
            await asyncio.shield(reply.task)
            if isinstance(exc, TokenwireError):
                exc.ids = {"conversationId": turn.conversation_id, "messageId": reply.message_id}
            raise
        reply.committed.set()
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
        room = context - count_messages([*self._system, latest])
        if room < _MIN_REPLY_TOKENS:
            raise ValidationFailed(
                f"The message is too long for this model: it reads at most {context} tokens "
                "in all. Please shorten it."
            )
        if asked is None:
            max_tokens = min(max_tokens, max(context // 2, _MIN_REPLY_TOKENS))
        max_tokens = min(max_tokens, room)
        return max_tokens, min(budget, context - max_tokens)

    async def _announce(self, turn: Turn, text: str, writer: ChunkWriter) -> None:
        """chat:conversation (for a new one) and chat:user-message, before any chunk."""
        if turn.created:
            await writer.event("chat:conversation", {"conversationId": turn.conversation_id})
        await writer.event(
            "chat:user-message",
            {
                "messageId": turn.user_message_id,
                "content": text,
                "conversationId": turn.conversation_id,
            },
        )

    async def stop(self, sid: str) -> Reply | None:
        """Stop this socket's running reply and wait until it is saved and announced."""
        return await self._stop(self.replies.for_sid(sid))

    async def stop_message(self, message_id: str) -> Reply | None:
        """Stop any running reply by id (the admin dashboard's Stop button)."""
        return await self._stop(self.replies.get(message_id))

    async def _stop(self, reply: Reply | None) -> Reply | None:
        if reply is None or reply.task is None:
            return None
        reply.cancel("stopped")
        await asyncio.shield(reply.task)
        return reply

    def detach(self, sid: str) -> None:
        """The socket disconnected: its reply carries on and is saved, unseen."""
        if self.replies.detach(sid) is not None:
            log.info("socket left mid-reply; the reply continues")

    async def delete_conversation(self, user_id: str, conversation_id: str) -> None:
        for reply in self.replies.in_conversation(conversation_id):
            if reply.user_id == user_id and reply.task is not None:
                reply.cancel("deleted")
                await asyncio.shield(reply.task)
        await self.repository.delete_conversation(user_id, conversation_id)

    # --- one reply

    async def _run(self, reply: Reply) -> None:
        status = MessageStatus.COMPLETE
        end: StreamEnd | None = None
        error: TokenwireError | None = None
        try:
            end = await self._pump(reply)
        except asyncio.CancelledError:
            _uncancel()
            if reply.stop_reason in ("stopped", "deleted"):
                status = MessageStatus.STOPPED
            elif reply.stop_reason == "timeout":
                status, error = MessageStatus.ERROR, UpstreamTimeout()
            else:
                status, error = MessageStatus.INTERRUPTED, ServerShutdown()
        except UpstreamError as exc:
            status, error = MessageStatus.ERROR, exc
        except ServerShutdown as exc:  # shut down while waiting in line
            status, error = MessageStatus.INTERRUPTED, exc
        except Exception as exc:
            log.exception("reply failed unexpectedly")
            status, error = MessageStatus.ERROR, TokenwireError()
            error.__cause__ = exc
        try:
            # A reply is saved, and its end announced, only once its turn is
            # committed. (An aborted turn never is; its abort cancels this
            # wait too.)
            if reply.stop_reason != "aborted":
                await reply.committed.wait()
        except asyncio.CancelledError:
            _uncancel()
        reply.saving = True
        try:
            if reply.stop_reason != "aborted":
                await self._finish(reply, status, end, error)
            # else: the turn was never committed; nothing to save, nobody to tell.
        finally:
            self.replies.remove(reply)

    async def _pump(self, reply: Reply) -> StreamEnd:
        queued = not self.queue.try_acquire()
        if queued:
            await self._wait_in_line(reply)
        try:
            if queued:  # out of the line: the request goes out now
                await reply.writer.notice("chat:queued", {**_ids(reply), "position": 0})
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
            await reply.writer.notice("chat:queued", {**_ids(reply), "position": position})

        try:
            async with asyncio.timeout(self.settings.upstream_queue_timeout_s):
                await self.queue.acquire(tell)
        except TimeoutError:
            raise UpstreamTimeout(
                "The AI model is busy with other requests. Please try again in a while."
            ) from None

    async def _generate(self, reply: Reply) -> StreamEnd:
        loop = asyncio.get_running_loop()
        parts, writer = reply.parts, reply.writer
        end: StreamEnd | None = None
        started = loop.time()
        deadline = Deadline(
            self.settings.upstream_timeout_s,
            self.settings.upstream_idle_timeout_s,
            lambda: reply.cancel("timeout"),
        )
        try:
            async with contextlib.aclosing(self.provider.stream(reply.request)) as stream:
                async for item in stream:
                    if type(item) is str:
                        now = loop.time()
                        first = not parts
                        deadline.touch(now)
                        parts.append(item)
                        await writer.write(item)
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
                        reply.thoughts.append(item)
                        await writer.think(str(item))
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
        await reply.writer.flush()
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
        if reply.writer.emit is None:
            return
        ids = {"conversationId": reply.conversation_id, "messageId": reply.message_id}
        payload: dict[str, Any]
        if status is MessageStatus.COMPLETE:
            event = "chat:end"
            payload = {
                **ids,
                "totalTokens": usage.prompt_tokens + usage.completion_tokens,
                "model": model,
                "finishReason": finish_reason,
                "promptTokens": usage.prompt_tokens,
                "completionTokens": usage.completion_tokens,
                "usageSource": usage_source,
                "content": content,
            }
        elif status is MessageStatus.STOPPED:
            event, payload = "chat:stopped", {**ids, "content": content}
        else:
            event = "chat:error"
            payload = error_payload(
                error or TokenwireError(),
                conversationId=reply.conversation_id,
                messageId=reply.message_id,
            )
        await reply.writer.event(event, payload)

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
                reply.cancel("shutdown")
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


def _ids(reply: Reply) -> dict[str, str]:
    return {"messageId": reply.message_id, "conversationId": reply.conversation_id}
