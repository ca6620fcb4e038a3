"""A bounded soak: forty users chatting at once for most of a minute, then an audit.

Each user keeps one conversation going over a dozen turns, one after another,
on its own python-socketio client. Replies vary in length and pace; some are
stopped with `chat:stop`, some clients vanish mid-reply (and come back for the
next turn), and a few upstream requests fail (HTTP 500, or the connection
dropped after five tokens). The upstream double derives each reply from a tag
at the start of the question, so every reply is matched to the one upstream
request that produced it, however the requests interleave.

The audit, for every reply:

- complete: what the client received == what was saved == what the upstream sent;
- stopped: what was saved == what the client received before `chat:stopped`,
  and is a prefix of what the upstream sent, which was cut off;
- its client gone: the reply was saved whole, equal to what the upstream sent;
- upstream failure: `chat:error`, and what was saved (status error) == what was received;
- chunk offsets contiguous: nothing missing, repeated or out of order, and
  nothing after the final event; the upstream saw the whole conversation so far.

Then nothing is left behind: no reply registered, asyncio tasks back to their
baseline, RSS back near its baseline. The plan comes from a fixed seed; only
the interleaving varies from run to run.
"""

from __future__ import annotations

import asyncio
import gc
import random
import sqlite3
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from typing import Any

import pytest
import socketio

from tests.conftest import Client, Gateway, GatewayFactory, close_client
from tokenwire.chat.events import Event
from tokenwire.chat.writer import ChunkWriter, Sink, utf16_len
from tokenwire.testing import Script, UpstreamDouble, UpstreamRequest, serve
from tokenwire.wire.protocol import encode

SEED = 20240603
USERS = 40
TURNS = 12
BUDGET_S = 75  # past this, users start no new turns (a loaded machine): the audit still runs
FINAL = ("chat:end", "chat:stopped", "chat:error")
KINDS = ["complete", "stop", "disconnect", "fault-500", "fault-drop"]
WEIGHTS = [64, 15, 13, 4, 4]
SPICE = [" ", " ", " ", "é ", "😀 ", "\n", "—"]  # non-ASCII and astral: offsets are UTF-16
MIB = 1024 * 1024


# --- the upstream: each reply planned per question


class PlannedUpstream(UpstreamDouble):
    """Answers each request with the script planned for the tag its last message starts with."""

    def __init__(self) -> None:
        super().__init__(Script(tokens=["unplanned"]))
        self.plans: dict[str, Script] = {}
        self.by_tag: dict[str, list[UpstreamRequest]] = defaultdict(list)

    async def _respond(self, script: Script, request: UpstreamRequest, *args: Any) -> None:
        tag = str(request.messages[-1].get("content", "")).split(" ", 1)[0]
        self.by_tag[tag].append(request)
        await super()._respond(self.plans.get(tag, script), request, *args)


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[UpstreamDouble, str]]:
    double = PlannedUpstream()
    async with serve(double) as url:
        yield double, url


# --- the plan


@dataclass
class Plan:
    tag: str
    kind: str
    script: Script
    question: str
    act_after_chunks: int  # for stop / disconnect
    think_s: float

    @property
    def full(self) -> str:
        return "" if self.script.status != 200 else "".join(self.script.token_list())


def make_plans(seed: int) -> list[list[Plan]]:
    plans: list[list[Plan]] = []
    for user in range(USERS):
        rng = random.Random(seed * 1000 + user)
        turns: list[Plan] = []
        for turn in range(TURNS):
            tag = f"u{user}t{turn}"
            kind = rng.choices(KINDS, WEIGHTS)[0]
            count = {
                "complete": rng.randint(1, 40),
                "stop": rng.randint(40, 80),
                "disconnect": rng.randint(15, 40),
            }.get(kind, 20)
            tokens = [f"{tag}.{i}{rng.choice(SPICE)}" for i in range(count)]
            if kind == "fault-500":
                script = Script(status=500)
            elif kind == "fault-drop":
                script = Script(tokens=tokens, drop_after=5, delay_s=0.01)
            else:
                slow = kind in ("stop", "disconnect")
                script = Script(
                    tokens=tokens,
                    delay_s=rng.choice([0.02, 0.03, 0.05] if slow else [0, 0.005, 0.02, 0.05]),
                    first_delay_s=rng.uniform(0, 0.1),
                )
            turns.append(
                Plan(
                    tag=tag,
                    kind=kind,
                    script=script,
                    question=f"{tag} {rng.choice(['why?', 'and then?', 'tell me more', 'ok'])}",
                    act_after_chunks=rng.randint(1, 4),
                    think_s=rng.uniform(0.5, 3.5),
                )
            )
        plans.append(turns)
    return plans


# --- a lean client: per-reply records, no scanning of long event lists


class Participant:
    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.chunks: dict[str, list[dict[str, Any]]] = defaultdict(list)
        self.finals: dict[str, list[tuple[str, dict[str, Any]]]] = defaultdict(list)
        self.after_final: list[dict[str, Any]] = []
        self.unattached_errors: list[Any] = []
        self._changed = asyncio.Event()
        for name in ("chat:message", *FINAL):
            self.sio.on(name, self._recorder(name), namespace="/ai")

    def _recorder(self, name: str) -> Callable[[Any], Any]:
        async def record(data: Any = None, *_offset: Any) -> None:
            message_id = data.get("messageId") if isinstance(data, dict) else None
            if message_id is None:
                self.unattached_errors.append((name, data))
            elif name == "chat:message":
                if self.finals.get(message_id):
                    self.after_final.append(data)
                self.chunks[message_id].append(data)
            else:
                self.finals[message_id].append((name, data))
            self._changed.set()

        return record

    async def connect(self, gateway: Gateway, user: str) -> None:
        await self.sio.connect(
            gateway.url,
            namespaces=["/ai"],
            auth={"token": gateway.token(user)},
            transports=["websocket"],
            wait_timeout=30,
        )

    async def call(self, event: str, data: Any = None) -> Any:
        args = () if data is None else (data,)
        return await self.sio.call(event, args, namespace="/ai", timeout=30)

    async def until(self, predicate: Callable[[], bool], timeout: float = 30) -> None:
        async with asyncio.timeout(timeout):
            while True:
                self._changed.clear()
                if predicate():
                    return
                await self._changed.wait()

    async def close(self) -> None:
        await close_client(self.sio)


# --- running a user


@dataclass
class Outcome:
    plan: Plan
    user: str
    message_id: str
    conversation_id: str
    chunks: list[dict[str, Any]]
    finals: list[tuple[str, dict[str, Any]]]
    left: bool = False  # the client disconnected mid-reply
    stop_ack: Any = None


@dataclass
class Soak:
    gateway: Gateway
    upstream: PlannedUpstream
    deadline: float
    outcomes: list[Outcome] = field(default_factory=list)
    participants: list[Participant] = field(default_factory=list)

    async def participant(self, user: str) -> Participant:
        client = Participant()
        self.participants.append(client)
        await client.connect(self.gateway, user)
        return client

    async def run_user(self, index: int, plans: list[Plan]) -> None:
        user = f"soak-{index}"
        client = await self.participant(user)
        conversation_id: str | None = None
        for plan in plans:
            if time.monotonic() > self.deadline:
                break
            self.upstream.plans[plan.tag] = plan.script
            payload: dict[str, Any] = {"message": plan.question}
            if conversation_id is not None:
                payload["conversationId"] = conversation_id
            ack = await client.call("chat:start", payload)
            assert ack["ok"] is True, (plan.tag, ack)
            conversation_id = ack["conversationId"]
            message_id = ack["messageId"]
            outcome = Outcome(plan, user, message_id, ack["conversationId"], [], [])
            self.outcomes.append(outcome)

            def progressed(
                message_id: str = message_id,
                c: Participant = client,
                n: int = plan.act_after_chunks,
            ) -> bool:
                return len(c.chunks[message_id]) >= n or bool(c.finals[message_id])

            def ended(message_id: str = message_id, c: Participant = client) -> bool:
                return bool(c.finals[message_id])

            if plan.kind == "stop":
                await client.until(progressed)
                outcome.stop_ack = await client.call("chat:stop")
                await client.until(ended)
            elif plan.kind == "disconnect":
                await client.until(progressed)
                outcome.left = not ended()
                await client.close()
            else:
                await client.until(ended)
            outcome.chunks = list(client.chunks[message_id])
            outcome.finals = list(client.finals[message_id])
            if plan.kind == "disconnect":
                # Back for the next turn once the abandoned reply is saved.
                await saved(self.gateway, message_id)
                client = await self.participant(user)
            await asyncio.sleep(plan.think_s)
        await client.close()


async def saved(gateway: Gateway, message_id: str, timeout: float = 30) -> Any:
    """The saved message, once it is no longer streaming."""
    async with asyncio.timeout(timeout):
        while True:
            message = await gateway.services.repository.get_message(message_id)
            if message is not None and message.status != "streaming":
                return message
            await asyncio.sleep(0.05)


# --- the audit


def contiguous_text(chunks: list[dict[str, Any]], tag: str) -> str:
    text = ""
    for chunk in chunks:
        assert chunk["offset"] == utf16_len(text), (tag, chunk["offset"], utf16_len(text))
        text += chunk["content"]
    return text


async def audit(soak: Soak) -> dict[str, int]:
    upstream = soak.upstream
    tally: dict[str, int] = defaultdict(int)
    history: dict[str, list[dict[str, str]]] = defaultdict(list)
    for outcome in soak.outcomes:  # each user's turns are in order within the list
        plan, tag = outcome.plan, outcome.plan.tag
        requests = upstream.by_tag[tag]
        assert len(requests) == 1, (tag, len(requests))
        request = requests[0]
        await asyncio.wait_for(request.finished.wait(), 30)
        sent = "".join(request.sent)
        message = await saved(soak.gateway, outcome.message_id)
        received = contiguous_text(outcome.chunks, tag)
        assert len(outcome.finals) <= 1, (tag, outcome.finals)
        final = outcome.finals[0] if outcome.finals else None

        # The upstream saw the conversation so far, then this question.
        question = {"role": "user", "content": plan.question}
        assert request.messages == [*history[outcome.conversation_id], question], tag
        history[outcome.conversation_id].append(question)
        if message.content:
            history[outcome.conversation_id].append(
                {"role": "assistant", "content": message.content}
            )

        if outcome.left:
            kind = "left mid-reply"
            assert (message.status, message.content) == ("complete", plan.full), tag
            assert sent == plan.full and not request.closed_by_client, tag
            assert plan.full.startswith(received), tag
        elif plan.kind.startswith("fault"):
            kind = plan.kind
            assert final is not None and final[0] == "chat:error", (tag, final)
            assert final[1]["code"] == "UPSTREAM_ERROR", (tag, final)
            assert (message.status, message.content) == ("error", received), tag
            assert sent.startswith(received), tag
        elif final is not None and final[0] == "chat:stopped":
            kind = "stopped"
            assert outcome.stop_ack == {
                "ok": True,
                "stopped": True,
                "conversationId": outcome.conversation_id,
                "messageId": outcome.message_id,
            }, (tag, outcome.stop_ack)
            assert (message.status, message.content) == ("stopped", received), tag
            assert final[1]["content"] == received, tag
            assert sent.startswith(received) and len(sent) < len(plan.full), tag
            assert request.closed_by_client, tag
        else:
            kind = "complete" if plan.kind != "stop" else "finished before its stop"
            assert final is not None and final[0] == "chat:end", (tag, final)
            assert sent == plan.full, (tag, plan.kind, "upstream", sent)
            assert message.content == plan.full, (tag, plan.kind, "saved", message.content)
            assert final[1]["content"] == plan.full, (tag, plan.kind, "chat:end", final[1])
            assert received == plan.full, (tag, plan.kind, "received", outcome.chunks)
            assert message.status == "complete", tag
            if plan.kind == "stop":
                assert outcome.stop_ack == {"ok": True, "stopped": False}, (tag, outcome.stop_ack)
        tally[kind] += 1
    return dict(tally)


# --- leftovers


def rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS in /proc/self/status")


def task_names() -> list[str]:
    return sorted(
        t.get_name() + ":" + getattr(t.get_coro(), "__qualname__", "?") for t in asyncio.all_tasks()
    )


async def settle_tasks(target: int, timeout: float) -> int:
    """Wait (at most `timeout`) for the number of asyncio tasks to fall to `target`."""
    with suppress(TimeoutError):
        async with asyncio.timeout(timeout):
            while True:
                if len(asyncio.all_tasks()) <= target:
                    break
                await asyncio.sleep(0.1)
    return len(asyncio.all_tasks())


async def assert_tasks_back(before: int, names_before: list[str]) -> None:
    """Asyncio tasks fall back to `before` within 15 s, or the new ones are named."""
    after = await settle_tasks(before, timeout=15)
    assert after <= before, (
        f"{after} tasks, {before} before",
        sorted(set(task_names()) - set(names_before)),
    )


@asynccontextmanager
async def soak_gateway(gateway_factory: GatewayFactory) -> AsyncIterator[Gateway]:
    # Pings every 2 s, so a closed socket's ping timer (a sleeping task) is gone
    # within seconds; history never trimmed, so the audit can check all of it;
    # tokens coalesced as in production (the suite's default sends each alone;
    # see the writer test below for what that mode gets wrong under load).
    async with gateway_factory(
        ping_interval=2, ping_timeout=30, history_max_tokens=1_000_000, stream_flush_ms=50
    ) as gateway:
        yield gateway


async def test_forty_users_chatting_for_a_minute_lose_nothing_and_leave_nothing_behind(
    gateway_factory: GatewayFactory,
) -> None:
    plans = make_plans(SEED)
    kinds = [plan.kind for turns in plans for plan in turns]
    assert all(kinds.count(kind) >= 5 for kind in KINDS), {k: kinds.count(k) for k in KINDS}

    async with soak_gateway(gateway_factory) as gateway:
        upstream = gateway.upstream
        assert isinstance(upstream, PlannedUpstream)

        # Warm up (engine.io's housekeeping task starts with the first client),
        # then take the baselines.
        warm = Soak(gateway, upstream, deadline=time.monotonic() + 60)
        warm_plan = Plan("warmup", "complete", Script(tokens=["warm "] * 3), "warmup hi", 1, 0)
        await warm.run_user(999, [warm_plan])
        await settle_tasks(0, timeout=3)  # > ping_interval: closed sockets' ping timers end
        gc.collect()
        tasks_before, rss_before = len(asyncio.all_tasks()), rss_bytes()
        names_before = task_names()

        started = time.monotonic()
        soak = Soak(gateway, upstream, deadline=started + BUDGET_S)
        try:
            await asyncio.wait_for(
                asyncio.gather(*(soak.run_user(i, turns) for i, turns in enumerate(plans))),
                BUDGET_S + 60,
            )
        finally:
            for participant in soak.participants:
                await participant.close()
        elapsed = time.monotonic() - started

        tally = await audit(soak)
        assert len(soak.outcomes) >= USERS * TURNS // 2, (len(soak.outcomes), elapsed)
        assert tally.get("stopped", 0) >= 5 and tally.get("left mid-reply", 0) >= 5, tally
        for participant in soak.participants:
            assert participant.after_final == [], participant.after_final[:3]
            assert participant.unattached_errors == [], participant.unattached_errors[:3]

        # Nothing left running, nothing left growing.
        async with asyncio.timeout(10):
            while True:
                if len(gateway.services.chat.replies) == 0:
                    break
                await asyncio.sleep(0.05)
        assert upstream.active == 0
        await assert_tasks_back(tasks_before, names_before)
        soak.outcomes.clear()
        soak.participants.clear()
        gc.collect()
        grown = rss_bytes() - rss_before
        assert grown < 50 * MIB, f"RSS grew by {grown / MIB:.1f} MiB over the soak"


async def test_stop_while_a_finished_reply_is_being_saved_still_ends_it_once(
    gateway: Gateway, client_factory: Callable[[], Client]
) -> None:
    """Stop pressed just as the reply finishes: one final event, an ack, the reply saved.

    The database is made slow by holding SQLite's write lock from outside
    while the reply finishes, so the stop lands during the save.
    """
    client = client_factory()
    await client.connect(gateway.url, gateway.token("alice"))
    plans = gateway.upstream
    assert isinstance(plans, PlannedUpstream)
    plans.plans["late"] = Script(tokens=["a", "b"], delay_s=0.3)
    ack = await client.call("chat:start", {"message": "late stop"})
    assert ack["ok"] is True, ack
    await client.wait_for("chat:message")
    path = gateway.settings.database_url.split("///", 1)[1]
    blocker = sqlite3.connect(path, isolation_level=None, timeout=10)
    blocker.execute("BEGIN IMMEDIATE")

    async def release() -> None:
        await asyncio.sleep(1)
        blocker.execute("COMMIT")
        blocker.close()

    releasing = asyncio.create_task(release())
    try:
        await asyncio.wait_for(plans.by_tag["late"][0].finished.wait(), 5)
        await asyncio.sleep(0.2)  # the reply is now saving, behind the lock
        try:
            stop = await client.call("chat:stop", timeout=5)
        except socketio.exceptions.TimeoutError:
            stop = "no acknowledgement"
    finally:
        await releasing
    assert isinstance(stop, dict) and stop["ok"] is True, stop
    try:
        name, final = await client.wait_for(*FINAL, timeout=5)
    except TimeoutError:
        raise AssertionError(f"no final event; events: {client.order()}") from None
    message = await gateway.services.repository.get_message(ack["messageId"])
    expected = {"chat:end": "complete", "chat:stopped": "stopped"}.get(name)
    assert (message.status, message.content) == (expected, final["content"]), (name, message)
    await asyncio.sleep(0.3)
    assert [n for n in client.order() if n in FINAL] == [name]


async def test_tokens_held_back_while_the_socket_lags_keep_their_place() -> None:
    """Found by the soak with STREAM_FLUSH_MS=0 (about one run in three): a reply's
    chunks arrived as 0-4, 8-28, 5-7, with contiguous offsets, so the browser's
    `offset === text.length` check cannot notice the scrambled text."""
    frames: list[dict[str, Any]] = []
    depth = [0]  # frames waiting in the socket's send queue

    async def emit(event: Event) -> None:
        payload = encode(event)[1]
        frames.append(payload)

    writer = ChunkWriter(
        Sink(emit, backlog=lambda: depth[0]), message_id="m", conversation_id="c", flush_s=0
    )
    await writer.release()
    await writer.write("one ")
    depth[0] = 2  # the client lags: tokens are coalesced
    await writer.write("two ")
    await writer.write("three ")
    depth[0] = 0  # it caught up
    await writer.write("four ")
    await writer.flush()
    assert contiguous_text(frames, "m") == "one two three four "
