"""A soak through a failing network: users chatting while their connections are cut,
their pages reloaded, second tabs opened and replies stopped from elsewhere.

Each user has its own `CuttingProxy` (its own network), over WebSocket or
long-polling, and keeps one conversation going, turn after turn. While a
reply streams, a seeded plan acts at random moments:

- cut: every connection of the user drops at once. Each tab reconnects, most
  with its `pid` and `offset` (connection state recovery: the same session,
  every missed event replayed), some as a new socket that `chat:resume`s at
  the offset it holds (the tab that started it) or `chat:join`s again (a
  second tab);
- reload: the tab that chats closes; a new socket resumes at a random place
  of the text it held (the page kept that much) or joins the conversation;
- tab: a second socket of the user joins the conversation mid-reply and stays
  for the next turns (they reach it through the room);
- stop: another socket sends `chat:stop {messageId}`.

The audit, per subscriber (one tab's view of one reply, across the
reconnects that keep it): every chunk starts where the text it holds ends;
at the final event its text == what was saved == the final event's
content; == what the upstream sent when complete; when stopped, a stop was
acknowledged and the upstream was cut off after what was saved. Nothing
arrives after the final event. A subscriber whose tab went away holds a
prefix of what was saved. Then nothing is left behind: no reply, follower,
room, recovery session or reply log, and asyncio tasks back to baseline.
It fails if the log's catch-up drops a piece of text, or recovery's replay
a packet (both tried once, by breaking chat/log.py and wire/recovery.py).
"""

from __future__ import annotations

import asyncio
import gc
import logging
import random
import time
from collections import Counter
from collections.abc import Callable
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import socketio

from tests.conftest import Gateway, GatewayFactory, close_client
from tests.proxy import CuttingProxy, cutting_proxy
from tests.test_fuzz import eventually
from tests.test_soak import PlannedUpstream, assert_tasks_back, saved, settle_tasks, task_names
from tests.test_soak import upstream as upstream  # the planned upstream, as a fixture
from tokenwire.chat.log import MemoryReplyLog
from tokenwire.chat.writer import ChunkWriter, utf16_len
from tokenwire.testing import Script

log = logging.getLogger(__name__)

SEED = 20261201
USERS = 24
BUDGET_S = 20  # past this, users start no new turns
RECOVERY_S = 1.5  # CONNECTION_RECOVERY_S: short, so released sessions are seen released
RECOVER_SHARE = 0.75  # of reconnects after a cut: with pid and offset
ACTIONS = ["cut", "cut", "reload", "tab", "stop"]
FINAL = ("chat:end", "chat:stopped", "chat:error")
SPICE = [" ", " ", "é ", "😀 ", "\n"]  # offsets count UTF-16 units


class _Socket(socketio.AsyncClient):  # type: ignore[misc]
    """python-socketio's client, keeping the `pid` of its CONNECT reply (it has no recovery)."""

    pid: str | None = None

    async def _handle_connect(self, namespace: str, data: Any) -> None:
        if isinstance(data, dict) and isinstance(data.get("pid"), str):
            self.pid = data["pid"]
        await super()._handle_connect(namespace, data)


def _no_retries() -> aiohttp.ClientSession:
    """An HTTP client that lets a long-poll cut off under it fail.

    aiohttp sends an idempotent request (a long-poll GET) again, once, when
    a reused connection closes before the response (RFC 9112 9.3.1.1);
    browsers do the same. Engine.IO counts a packet delivered once it is
    written into a GET's response, so the packets of a response that a cut
    lost are lost silently, and the session goes on: nothing tells the
    client to recover. The soak found it: a chunk missing mid-reply on
    polling, and no reconnect. Here the cut fails the GET, the client
    notices, and recovery replays what the lost response carried.
    """
    session = aiohttp.ClientSession()
    session._retry_connection = False
    return session


@dataclass
class Subscription:
    """One tab's view of one reply: the text it holds, chunk by chunk at each chunk's offset."""

    message_id: str
    how: str  # start, room, resume, reload-resume, ...
    text: str = ""
    problems: list[Any] = field(default_factory=list)
    final: tuple[str, dict[str, Any]] | None = None
    at_final: str | None = None
    after_final: list[Any] = field(default_factory=list)
    abandoned: bool = False  # its tab went away before the end
    history: list[Any] = field(default_factory=list)  # its tab's connections, for a failure

    def chunk(self, data: dict[str, Any], packet: str | None) -> None:
        if self.final is not None:
            self.after_final.append(("chat:message", data))
        elif data.get("offset") != utf16_len(self.text):
            held = utf16_len(self.text)
            self.problems.append((data.get("offset"), held, data["content"], f"packet {packet}"))
        else:
            self.text += data["content"]

    def end(self, name: str, data: dict[str, Any]) -> None:
        if self.final is not None:
            self.after_final.append((name, data))
        else:
            self.final, self.at_final = (name, data), self.text


class Tab:
    """One browser tab of a user: a socket through the user's proxy, replaced when it drops."""

    def __init__(self, user: User, role: str) -> None:
        self.user = user
        self.role = role  # "main" starts the turns; "room" follows the conversation
        self.rng = random.Random(user.rng.random())
        self.subs: dict[str, Subscription] = {}
        self.sio: _Socket | None = None
        self.pid: str | None = None
        self.sid: str | None = None
        self.offset: str | None = None  # the last event offset received
        self.connects = 0
        self.ready = False  # connected, and caught up after a reconnect
        self.closed = False
        # Replies that ended while it was away, as its join's messages hold them.
        self.ended_while_away: dict[str, dict[str, Any]] = {}
        self._label = "start" if role == "main" else "room"  # how a reply it gets began
        self.history: list[Any] = []
        self._changed = asyncio.Event()
        self._reconnecting: asyncio.Task[None] | None = None

    # --- events

    def _socket(self) -> _Socket:
        sio = _Socket(reconnection=False, http_session=_no_retries)
        sio.on("*", self._event, namespace="/ai")
        sio.on("disconnect", lambda *_: self._dropped(sio), namespace="/ai")
        return sio

    async def _event(self, name: str, data: Any = None, *offset: Any) -> None:
        if offset:
            self.offset = offset[-1]
        message_id = data.get("messageId") if isinstance(data, dict) else None
        if message_id is not None and (name == "chat:message" or name in FINAL):
            sub = self.subs.get(message_id)
            if sub is None:  # the turn it started, or one of its conversation's
                sub = self.subs[message_id] = Subscription(message_id, self._label)
                sub.history = self.history
            if name == "chat:message":
                sub.chunk(data, self.offset)
            else:
                sub.end(name, data)
        elif name == "chat:error":
            self.user.soak.unattached.append((self.user.name, data))
        self._changed.set()

    def _dropped(self, sio: _Socket) -> None:
        if self.closed or sio is not self.sio:
            return
        self.ready = False
        self.history.append(("dropped", self.offset, time.monotonic()))
        self._reconnecting = asyncio.ensure_future(self._reconnect())
        self._changed.set()

    async def until(self, predicate: Callable[[], bool], timeout: float = 20) -> None:
        async with asyncio.timeout(timeout):
            while True:
                self._changed.clear()
                if predicate():
                    return
                await self._changed.wait()

    # --- connecting

    async def connect(self, *, recover: bool = False) -> bool:
        """Connect (retrying through cuts); True if the server gave the old session back."""
        auth: dict[str, Any] = {"token": self.user.token}
        if recover and self.pid is not None:
            auth.update(pid=self.pid, offset=self.offset)
        for _ in range(50):
            sio = self._socket()
            self.sio = sio
            try:
                await sio.connect(
                    self.user.proxy.url,
                    namespaces=["/ai"],
                    auth=auth,
                    transports=[self.user.transport],
                    wait_timeout=10,
                )
                break
            except socketio.exceptions.ConnectionError:
                await close_client(sio)
                await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"{self.user.name} could not reconnect")
        self.connects += 1
        recovered = sio.get_sid("/ai") == self.sid
        self.sid, self.pid = sio.get_sid("/ai"), sio.pid
        self.history.append(("connect", auth.get("offset"), recovered, self.sid, time.monotonic()))
        if not recovered:
            self.offset = None
        return recovered

    async def _reconnect(self) -> None:
        soak = self.user.soak
        recovered = await self.connect(recover=self.rng.random() < RECOVER_SHARE)
        if recovered:
            soak.tally["recovered"] += 1
        elif self.role == "main":
            # A new socket: follow what it was following from where its text ends.
            for sub in [s for s in self.subs.values() if s.final is None]:
                self.history.append(("resume", utf16_len(sub.text)))
                answer = await self.call(
                    "chat:resume", {"messageId": sub.message_id, "offset": utf16_len(sub.text)}
                )
                assert answer["ok"] is True, answer
                soak.tally["new socket, resumed"] += 1
        else:
            await self.join("new socket, joined")
        self.ready = True
        self._changed.set()

    def describe(self) -> dict[str, Any]:
        task = self._reconnecting
        return {
            "user": self.user.name,
            "transport": self.user.transport,
            "role": self.role,
            "connects": self.connects,
            "ready": self.ready,
            "connected": self.sio is not None and self.sio.connected,
            "reconnecting": task if task is None or not task.done() else task.exception(),
        }

    async def call(self, event: str, data: Any) -> Any:
        assert self.sio is not None
        return await self.sio.call(event, data, namespace="/ai", timeout=20)

    async def join(self, how: str) -> None:
        """chat:join the conversation: a running reply comes again, from offset 0.

        What it held is set aside first: the catch-up may be handled before
        the acknowledgement is.
        """
        self._set_aside()
        assert self.user.conversation_id is not None
        joined = await self.call("chat:join", {"conversationId": self.user.conversation_id})
        assert joined["ok"] is True, joined
        if joined["streaming"] is not None:
            message_id = joined["streaming"]["messageId"]
            sub = self.subs.setdefault(message_id, Subscription(message_id, how))
            sub.how, sub.history = how, self.history
        elif joined["messages"][-1]["role"] == "assistant":
            last = joined["messages"][-1]
            self.ended_while_away[last["id"]] = last
        self.user.soak.tally[how] += 1

    def _set_aside(self) -> None:
        for sub in self.subs.values():
            sub.abandoned = sub.final is None
        self.user.soak.subs.extend(self.subs.values())
        self.subs.clear()

    async def close(self) -> None:
        self.closed = True
        if self._reconnecting is not None:
            with suppress(Exception):
                await self._reconnecting
        if self.sio is not None:
            await close_client(self.sio)
        self._set_aside()
        self.user.soak.away.extend(self.ended_while_away.items())


@dataclass
class Turn:
    tag: str
    script: Script
    actions: list[tuple[float, str]]
    think_s: float

    @property
    def full(self) -> str:
        return "".join(self.script.token_list())


def make_turns(rng: random.Random, user: int) -> list[Turn]:
    turns = []
    for turn in range(12):
        tag = f"u{user}t{turn}"
        tokens = [f"{tag}.{i}{rng.choice(SPICE)}" for i in range(rng.randint(20, 60))]
        script = Script(
            tokens=tokens, delay_s=rng.choice([0.02, 0.03, 0.05]), first_delay_s=rng.uniform(0, 0.1)
        )
        count = rng.choice([0, 1, 1, 2, 3])
        actions = [(rng.uniform(0, 1.0), rng.choice(ACTIONS)) for _ in range(count)]
        turns.append(Turn(tag, script, actions, think_s=rng.uniform(0.1, 1.0)))
    return turns


@dataclass
class Outcome:
    turn: Turn
    message_id: str
    stop_ack: Any = None


class User:
    def __init__(self, soak: Soak, index: int, proxy: CuttingProxy) -> None:
        self.soak = soak
        self.name = f"follow-{index}"
        self.rng = random.Random(SEED * 1000 + index)
        self.turns = make_turns(self.rng, index)
        self.proxy = proxy
        self.transport = "websocket" if index % 2 == 0 else "polling"
        self.token = soak.gateway.token(self.name)
        self.conversation_id: str | None = None
        self.main = Tab(self, "main")
        self.rooms: list[Tab] = []

    def tabs(self) -> list[Tab]:
        return [self.main, *self.rooms]

    async def run(self) -> None:
        await self.main.connect()
        self.main.ready = True
        try:
            for turn in self.turns:
                if time.monotonic() > self.soak.deadline:
                    break
                await self._turn(turn)
                await asyncio.sleep(turn.think_s)
                if self.rooms and self.rng.random() < 0.3:
                    await self.rooms.pop(0).close()
        finally:
            for tab in self.tabs():
                await tab.close()

    async def _turn(self, turn: Turn) -> None:
        soak = self.soak
        soak.upstream.plans[turn.tag] = turn.script
        payload: dict[str, Any] = {"message": f"{turn.tag} go on"}
        if self.conversation_id is not None:
            payload["conversationId"] = self.conversation_id
        await self.main.until(lambda: self.main.ready)  # a late-noticed cut, reconnecting
        ack = await self.main.call("chat:start", payload)
        assert ack["ok"] is True, (turn.tag, ack)
        self.conversation_id = ack["conversationId"]
        message_id = ack["messageId"]
        outcome = Outcome(turn, message_id)
        soak.outcomes.append(outcome)
        members = list(self.rooms)  # joined before it started: the room brings it to them
        main = self.main
        await main.until(lambda: message_id in main.subs)
        for delay, action in turn.actions:
            await asyncio.sleep(delay)
            if action == "cut":
                await self._cut()
            elif action == "reload":
                await self._reload(outcome)
            elif action == "tab":
                await self._tab()
            else:
                await self._stop(outcome)
            soak.tally[action] += 1
        # Everyone still here ends holding the reply.
        await saved(soak.gateway, message_id)
        for tab in [self.main, *members]:
            try:
                await tab.until(lambda t=tab: t.ready and _ended(t, message_id))
            except TimeoutError:
                sub = tab.subs.get(message_id)
                raise AssertionError((turn.tag, tab.role, tab.ready, sub)) from None
        for tab in self.rooms:
            if message_id in tab.subs:
                await tab.until(lambda t=tab: _ended(t, message_id))

    async def _cut(self) -> None:
        before = {tab: tab.connects for tab in self.tabs()}
        assert self.proxy.cut() > 0
        # A WebSocket notices at once. python-engineio's polling client only once
        # its write loop ends (seconds: up to PING_INTERVAL + PING_TIMEOUT), and
        # not at all if no request was in flight (then nothing sent was lost).
        # Either way it must end ready, holding everything so far.
        for tab, count in before.items():
            with suppress(TimeoutError):
                await tab.until(lambda t=tab, c=count: t.connects > c and t.ready, timeout=10)
            if tab.connects == count and tab.ready:
                self.soak.tally[f"cut unnoticed ({self.transport})"] += 1
                continue
            try:
                await tab.until(lambda t=tab: t.ready)
            except TimeoutError:
                raise AssertionError(("no reconnect after a cut", tab.describe())) from None

    async def _reload(self, outcome: Outcome) -> None:
        old = self.main
        held = old.subs.get(outcome.message_id)
        await old.close()
        new = self.main = Tab(self, "main")
        await new.connect()
        if held is not None and self.rng.random() < 0.5:
            # The page kept some of the text: resume at a character boundary of it.
            prefix = held.text[: self.rng.randint(0, len(held.text))]
            new.subs[outcome.message_id] = Subscription(
                outcome.message_id, "reload-resume", prefix, history=new.history
            )
            answer = await new.call(
                "chat:resume", {"messageId": outcome.message_id, "offset": utf16_len(prefix)}
            )
            assert answer["ok"] is True, answer
        else:
            await new.join("reload, joined")
        new.ready = True

    async def _tab(self) -> None:
        if len(self.rooms) >= 2:
            return
        tab = Tab(self, "room")
        await tab.connect()
        self.rooms.append(tab)
        await tab.join("second tab joined")
        tab.ready = True

    async def _stop(self, outcome: Outcome) -> None:
        if outcome.stop_ack is not None:
            return
        other = socketio.AsyncClient(reconnection=False)  # not through the proxy
        try:
            await other.connect(
                self.soak.gateway.url,
                namespaces=["/ai"],
                auth={"token": self.token},
                transports=["websocket"],
                wait_timeout=10,
            )
            outcome.stop_ack = await other.call(
                "chat:stop", {"messageId": outcome.message_id}, namespace="/ai", timeout=20
            )
        finally:
            await close_client(other)


def _ended(tab: Tab, message_id: str) -> bool:
    sub = tab.subs.get(message_id)
    return (sub is not None and sub.final is not None) or message_id in tab.ended_while_away


@dataclass
class Soak:
    gateway: Gateway
    upstream: PlannedUpstream
    deadline: float
    outcomes: list[Outcome] = field(default_factory=list)
    subs: list[Subscription] = field(default_factory=list)  # of tabs that closed
    away: list[tuple[str, dict[str, Any]]] = field(default_factory=list)  # ended_while_away
    unattached: list[Any] = field(default_factory=list)
    tally: Counter[str] = field(default_factory=Counter)


async def audit(soak: Soak) -> Counter[str]:
    by_message: dict[str, list[Subscription]] = {}
    for sub in soak.subs:
        by_message.setdefault(sub.message_id, []).append(sub)
    tally: Counter[str] = Counter()
    for outcome in soak.outcomes:
        tag = outcome.turn.tag
        requests = soak.upstream.by_tag[tag]
        assert len(requests) == 1, (tag, len(requests))
        await asyncio.wait_for(requests[0].finished.wait(), 30)
        sent = "".join(requests[0].sent)
        message = await saved(soak.gateway, outcome.message_id)
        subs = by_message.get(outcome.message_id, [])
        # Someone saw it end: a subscriber, or a tab that joined after it ended.
        ended_away = any(message_id == outcome.message_id for message_id, _ in soak.away)
        assert ended_away or any(s.final is not None for s in subs), (tag, subs)
        stopped = message.status == "stopped"
        if stopped:
            assert outcome.stop_ack is not None and outcome.stop_ack["stopped"] is True, tag
            assert sent.startswith(message.content), tag
            # Cut off, unless the stop came as its last token was on the way.
            assert requests[0].closed_by_client or sent == outcome.turn.full, tag
        else:
            assert message.status == "complete", (tag, message.status)
            assert message.content == sent == outcome.turn.full, tag
            # A stop that came as it was being saved changes nothing, but is acknowledged.
        tally["stopped" if stopped else "complete"] += 1
        for sub in subs:
            where = (tag, sub.how, sub.abandoned)
            assert sub.problems == [], (*where, "gap or duplicate", sub.problems[:3], sub.history)
            assert sub.after_final == [], (*where, "after the final event", sub.after_final[:3])
            if sub.final is None:
                assert sub.abandoned, where
                assert message.content.startswith(sub.text), where
                tally["subscribers gone before the end"] += 1
                continue
            name, final = sub.final
            assert name == ("chat:stopped" if stopped else "chat:end"), (*where, name, final)
            assert sub.at_final == message.content == final["content"], where
            tally[f"subscribers at the end ({sub.how})"] += 1
    for message_id, message in soak.away:
        assert message["content"] == (await saved(soak.gateway, message_id)).content
        tally["ended while away, joined after"] += 1
    return tally


def live_objects(kind: type) -> list[Any]:
    return [o for o in gc.get_objects() if type(o) is kind]


def referrers(kind: type) -> list[str]:
    """What holds the objects of `kind` still alive, for a failure's message."""
    return [type(r).__qualname__ for o in live_objects(kind) for r in gc.get_referrers(o)]


async def warm_up(gateway: Gateway) -> None:
    """engine.io's housekeeping task starts with the first client: start it before the baseline."""
    sio = socketio.AsyncClient(reconnection=False)
    await sio.connect(
        gateway.url, namespaces=["/ai"], auth={"token": gateway.token("warm")}, wait_timeout=10
    )
    done = asyncio.Event()
    sio.on("chat:end", lambda *_: done.set(), namespace="/ai")
    gateway.upstream.enqueue(Script(tokens=["warm"]))
    await sio.call("chat:start", {"message": "warm up"}, namespace="/ai", timeout=10)
    await asyncio.wait_for(done.wait(), 10)
    await close_client(sio)


async def _proxies(stack: AsyncExitStack, port: int, count: int) -> list[CuttingProxy]:
    return [await stack.enter_async_context(cutting_proxy(port)) for _ in range(count)]


async def test_users_behind_a_failing_network_hold_exactly_the_saved_text(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory(
        # A dead polling connection is noticed after PING_INTERVAL + PING_TIMEOUT:
        # short, so its session is seen released within the test.
        ping_interval=2,
        ping_timeout=5,
        connection_recovery_s=RECOVERY_S,
        stream_flush_ms=50,  # coalesced, as in production
        history_max_tokens=1_000_000,
        max_connections_per_user=50,  # cut sockets count until they are noticed
        connect_rate_per_ip="100000/minute",
    ) as gateway:
        upstream = gateway.upstream
        assert isinstance(upstream, PlannedUpstream)
        await warm_up(gateway)
        await settle_tasks(0, timeout=3)
        tasks_before, names_before = len(asyncio.all_tasks()), task_names()

        port = int(gateway.url.rsplit(":", 1)[1])
        soak = Soak(gateway, upstream, deadline=time.monotonic() + BUDGET_S)
        started = time.monotonic()
        async with AsyncExitStack() as stack:
            proxies = await _proxies(stack, port, USERS)
            users = [User(soak, i, proxy) for i, proxy in enumerate(proxies)]
            await asyncio.wait_for(asyncio.gather(*(user.run() for user in users)), BUDGET_S + 60)
            cuts = sum(proxy.cuts for proxy in proxies)
        elapsed = time.monotonic() - started

        tally = await audit(soak)
        log.info("%d replies in %.1f s, %d cuts: %s", len(soak.outcomes), elapsed, cuts, {
            **soak.tally, **tally})  # fmt: skip
        assert soak.unattached == [], soak.unattached[:3]
        # The plan did what it is about.
        assert len(soak.outcomes) >= USERS * 4, (len(soak.outcomes), elapsed)
        for what in ("recovered", "new socket, resumed", "reload, joined", "second tab joined"):
            assert soak.tally[what] >= 5, (what, soak.tally)
        assert tally["stopped"] >= 5 and tally["subscribers at the end (reload-resume)"] >= 5, tally

        # Nothing left behind.
        chat = gateway.services.chat
        recovery = gateway.app.sio.recovery
        await eventually(lambda: len(chat.replies) == 0, what="replies to be dropped")
        assert chat.replies._following == {}
        await eventually(
            lambda: len(recovery) == 0 and len(chat.rooms) == 0,
            timeout=2 * (2 + 5) + RECOVERY_S + 5,
            what="recovery sessions and rooms to be released",
        )
        assert upstream.active == 0
        await assert_tasks_back(tasks_before, names_before)
        soak.outcomes.clear()
        soak.subs.clear()
        del users, proxies
        gc.collect()
        assert live_objects(MemoryReplyLog) == [], referrers(MemoryReplyLog)
        assert live_objects(ChunkWriter) == [], referrers(ChunkWriter)
