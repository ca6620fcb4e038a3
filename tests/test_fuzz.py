"""Fuzzing the /ai namespace: arbitrary payloads for every client event, and malformed frames.

The properties, whatever a connected client sends:

- every event that asks for an acknowledgement gets one: `{ok: true, ...}`, or
  `{ok: false, error: {code, message}}` with a code the client can act on
  (never INTERNAL), and the same error as a `chat:error`;
- an accepted `chat:start` streams a reply that ends with `chat:end` (or
  `chat:stopped`, after a `chat:stop`), its chunks contiguous, what was saved
  equal to what was sent;
- no message carries a stack trace, a source location or an exception class;
- the sender stays connected, and another user's reply, streaming meanwhile,
  completes intact.

Malformed Socket.IO frames (bad JSON, binary garbage, oversized frames, ...)
may close the connection that sent them, and nothing else.

Hypothesis draws the examples inside one running server per test
(pytest-asyncio runs each example in the test's event loop); `derandomize`
and no example database keep runs reproducible.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from typing import Any

import httpx
import hypothesis
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import Client, Gateway, GatewayFactory
from tokenwire.chat.writer import utf16_len
from tokenwire.testing import Script

REPLY_TOKENS = 8
REPLY = "".join(f"token{i} " for i in range(REPLY_TOKENS))
CLIENT_CODES = {"VALIDATION_ERROR", "INVALID_MODEL", "FORBIDDEN", "NOT_FOUND", "BUSY"}
HANDLED = {"chat:start", "chat:stop"}
# Event names python-socketio routes to lifecycle handlers; covered by their own test.
LIFECYCLE = {"connect", "disconnect"}
LEAKS = re.compile(
    r"Traceback|File \"|line \d+, in |\b[A-Z]\w*(?:Error|Exception)\b"
    r"|pydantic|sqlalchemy|asyncpg|aiosqlite|orjson|socketio|engineio|tokenwire\."
)
FUZZ_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
        HealthCheck.large_base_example,
    ],
)

# --- strategies

NASTY = [
    "' OR '1'='1",
    "'; DROP TABLE messages; --",
    '" OR ""="',
    "1; SELECT * FROM conversations",
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    "{{7*7}}",
    "${jndi:ldap://example.invalid/a}",
    "../../../../etc/passwd",
    "%s%s%s%n",
    "\x00",
    "a\x00b",
    "\u202egnp.exe",
    "\ufeff",
    "\u200b",
    "𝕳𝖊𝖑𝖑𝖔",
    "👩\u200d👩\u200d👧\u200d👦",
    "e\u0301\u0301\u0301",
    "null",
    "undefined",
    "NaN",
    "true",
    "__proto__",
    "constructor",
    "Traceback (most recent call last)",
    "x" * 255,
    "x" * 256,
]
BLANK = st.text(alphabet=" \t\r\n\u00a0\u2003\u3000", max_size=6)
TEXT = st.one_of(st.text(max_size=40), st.sampled_from(NASTY), BLANK)
INT64 = st.integers(min_value=-(2**63), max_value=2**64 - 1)
EDGE_INTS = st.sampled_from(
    [0, 1, -1, 4096, 4097, 2**31, 2**53 + 1, 2**63 - 1, 2**64 - 1, -(2**63)]
)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
LEAVES = st.one_of(st.none(), st.booleans(), INT64, EDGE_INTS, FLOATS, TEXT, st.binary(max_size=8))
JSON = st.recursive(
    LEAVES,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)
START_KEYS = {"message", "userId", "conversationId", "model", "maxTokens", "temperature"}
EXTRA_KEYS = st.one_of(
    st.sampled_from(
        ["__proto__", "constructor", "role", "system", "messages", "stream", "api_key", "userid"]
    ),
    st.text(max_size=12),
).filter(lambda key: key not in START_KEYS)


def _nest(kinds: list[str], leaf: Any) -> Any:
    value = leaf
    for kind in reversed(kinds):
        value = [value] if kind == "l" else {"k": value}
    return value


def _place(spec: tuple[list[str], str | None, Any]) -> Any:
    kinds, where, leaf = spec
    nested = _nest(kinds, leaf)
    if where is None:
        return nested
    payload = {"message": "deep"}
    payload[where] = nested
    return payload


@dataclass(frozen=True)
class Ids:
    alice_conversation: str
    bob_conversation: str


def start_payloads(ids: Ids) -> st.SearchStrategy[Any]:
    """`chat:start` objects: near-valid ones with wrong types and edge values, and valid ones."""
    conversations = st.sampled_from(
        [
            ids.alice_conversation,
            ids.bob_conversation,
            "00000000-0000-0000-0000-000000000000",
            "",
            "x" * 256,
        ]
    )
    fields: dict[str, st.SearchStrategy[Any]] = {
        "message": st.one_of(
            st.sampled_from(["hello", "Say hi"]),
            TEXT,
            st.just("y" * 32000),
            st.just("z" * 32001),
            JSON,
        ),
        "userId": st.one_of(st.sampled_from(["alice", "bob", "", "ALICE"]), INT64, JSON),
        "conversationId": st.one_of(conversations, TEXT, JSON),
        "model": st.one_of(
            st.sampled_from(["gpt-4", "gpt-999", "", "GPT-4", " gpt-4", "x" * 201]), TEXT, JSON
        ),
        "maxTokens": st.one_of(INT64, EDGE_INTS, st.booleans(), FLOATS, TEXT, JSON),
        "temperature": st.one_of(
            FLOATS,
            st.sampled_from([0, 2, 2.0000001, -0.0, 1e-300, -1e-300]),
            INT64,
            st.booleans(),
            TEXT,
        ),
    }
    near_valid = st.fixed_dictionaries(
        {"message": fields["message"]},
        optional={key: value for key, value in fields.items() if key != "message"},
    )
    with_extras = st.tuples(near_valid, st.dictionaries(EXTRA_KEYS, JSON, max_size=3)).map(
        lambda pair: {**pair[0], **pair[1]}
    )
    valid = st.fixed_dictionaries(
        {"message": st.text(max_size=40).map(lambda text: f"q {text}")},
        optional={
            "conversationId": st.just(ids.alice_conversation),
            "userId": st.just("alice"),
            "model": st.just("gpt-4"),
            "maxTokens": st.integers(1, 4096),
            "temperature": st.floats(0, 2) | st.integers(0, 2),
        },
    )
    # A valid payload with one field replaced: reaches the checks behind validation.
    one_off = st.tuples(valid, st.sampled_from(sorted(fields))).flatmap(
        lambda pair: fields[pair[1]].map(lambda value: {**pair[0], pair[1]: value})
    )
    deep = st.tuples(
        st.lists(st.sampled_from("ld"), min_size=1, max_size=200),
        st.sampled_from([None, "message", "conversationId", "maxTokens", "extra"]),
        st.one_of(st.just("leaf"), st.none(), st.integers(0, 9)),
    ).map(_place)
    return st.one_of(near_valid, with_extras, valid, one_off, one_off, deep)


def arguments(payloads: st.SearchStrategy[Any]) -> st.SearchStrategy[tuple[Any, ...]]:
    """An event's arguments: usually one, sometimes none or several."""
    return st.one_of(
        payloads.map(lambda p: (p,)),
        payloads.map(lambda p: (p,)),
        st.just(()),
        st.tuples(payloads, JSON),
    )


Action = tuple[str, tuple[Any, ...]]


def actions(ids: Ids) -> st.SearchStrategy[list[Action]]:
    starts = start_payloads(ids)
    unknown = st.one_of(
        st.sampled_from(
            ["chat:Start", "chat:start ", " chat:stop", "chat:end", "chat:message", "message", ""]
        ),
        st.text(max_size=30),
    ).filter(lambda name: name not in HANDLED | LIFECYCLE)
    action = st.one_of(
        st.tuples(st.just("chat:start"), arguments(starts)),
        st.tuples(st.just("chat:start"), arguments(starts)),
        st.tuples(st.just("chat:start"), arguments(JSON)),
        st.tuples(st.just("chat:stop"), arguments(JSON)),
        st.tuples(unknown, arguments(st.one_of(JSON, starts))),
    )
    return st.lists(action, min_size=1, max_size=3)


# --- checks


def leaked(text: str, sent: str) -> list[str]:
    """What in a server message looks like internals, ignoring what the client itself sent."""
    return [m.group(0) for m in LEAKS.finditer(text) if m.group(0) not in sent]


def assert_contiguous(chunks: list[dict[str, Any]]) -> str:
    """The chunks' text, after checking each offset is exactly the text before it."""
    text = ""
    for chunk in chunks:
        assert chunk["offset"] == utf16_len(text), (chunk, text)
        text += chunk["content"]
    return text


def chunks_of(client: Client, message_id: str) -> list[dict[str, Any]]:
    return [c for c in client.named("chat:message") if c["messageId"] == message_id]


def final_of(client: Client, message_id: str) -> tuple[str, Any] | None:
    for name, data in client.events:
        if (
            name in ("chat:end", "chat:stopped", "chat:error")
            and isinstance(data, dict)
            and data.get("messageId") == message_id
        ):
            return name, data
    return None


async def eventually(predicate: Callable[[], Any], timeout: float = 15, what: str = "") -> Any:
    """Poll `predicate` until it is truthy; returns its value."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                if result := predicate():
                    return result
                await asyncio.sleep(0.005)
    except TimeoutError:
        raise TimeoutError(f"waited {timeout}s for {what or predicate}") from None


async def finished(client: Client, message_id: str, timeout: float = 15) -> tuple[str, Any]:
    result: tuple[str, Any] = await eventually(
        lambda: final_of(client, message_id), timeout, f"no final event for {message_id}"
    )
    return result


async def saved_content(gateway: Gateway, message_id: str) -> tuple[str, str]:
    message = await gateway.services.repository.get_message(message_id)
    assert message is not None
    return message.status, message.content


# --- the arena: one server, the fuzzing user and a bystander


@dataclass
class Arena:
    gateway: Gateway
    alice: Client
    bob: Client
    actions: st.SearchStrategy[list[Action]]


async def first_turn(client: Client) -> str:
    ack = await client.call("chat:start", {"message": "first"})
    assert ack["ok"] is True, ack
    await finished(client, ack["messageId"])
    conversation_id: str = ack["conversationId"]
    return conversation_id


@pytest.fixture
async def arena(gateway: Gateway, client_factory: Callable[[], Client]) -> Arena:
    gateway.upstream.default = Script(count=REPLY_TOKENS, delay_s=0.004)
    alice, bob = client_factory(), client_factory()
    await alice.connect(gateway.url, gateway.token("alice"))
    await bob.connect(gateway.url, gateway.token("bob"))
    ids = Ids(await first_turn(alice), await first_turn(bob))
    return Arena(gateway, alice, bob, actions(ids))


async def call(client: Client, event: str, args: tuple[Any, ...]) -> Any:
    return await client.sio.call(event, args, namespace="/ai", timeout=15)


@FUZZ_SETTINGS
@given(data=st.data())
async def test_any_event_with_any_payload_is_answered_cleanly_while_others_stream(
    arena: Arena, data: st.DataObject
) -> None:
    alice, bob, gateway = arena.alice, arena.bob, arena.gateway
    alice.events.clear()
    bob.events.clear()
    steps = data.draw(arena.actions, label="actions")

    # Bob's reply streams while Alice's events are handled.
    bob_ack = await bob.call("chat:start", {"message": "steady"})
    assert bob_ack["ok"] is True, bob_ack

    started: list[tuple[str, int]] = []  # (messageId, index of the step that started it)
    refused: list[dict[str, Any]] = []
    for index, (event, args) in enumerate(steps):
        sent = repr((event, args))
        ack = await call(alice, event, args)
        outcome = ack.get("error", {}).get("code", "ok") if isinstance(ack, dict) else ack
        hypothesis.event(f"{event if event in HANDLED else 'unknown event'}: {outcome}")
        assert isinstance(ack, dict) and isinstance(ack.get("ok"), bool), (event, args, ack)
        if not ack["ok"]:
            error = ack["error"]
            assert error["code"] in CLIENT_CODES, (event, args, ack)
            assert isinstance(error["message"], str) and error["message"]
            assert not leaked(error["message"], sent), (event, args, ack)
            refused.append(error)
        elif event == "chat:start":
            assert set(ack) == {"ok", "conversationId", "userMessageId", "messageId"}, ack
            started.append((ack["messageId"], index))
        elif event == "chat:stop":
            running = {message_id for message_id, _ in started}
            assert ack == {"ok": True, "stopped": False} or (
                ack["stopped"] is True and ack["messageId"] in running
            ), ack
        else:
            raise AssertionError(f"an unknown event was accepted: {event!r} -> {ack}")
        assert alice.sio.connected

    # Every refusal was also announced as chat:error, before its acknowledgement.
    announced = [e for e in alice.named("chat:error") if "messageId" not in e]
    assert [(e["code"], e["message"]) for e in announced] == [
        (e["code"], e["message"]) for e in refused
    ]

    for message_id, index in started:
        name, final = await finished(alice, message_id)
        stopped_later = any(event == "chat:stop" for event, _ in steps[index + 1 :])
        assert name == "chat:end" or (name == "chat:stopped" and stopped_later), (name, final)
        text = assert_contiguous(chunks_of(alice, message_id))
        assert final["content"] == text
        if name == "chat:end":
            assert text == REPLY
        status, content = await saved_content(gateway, message_id)
        assert (status, content) == ("complete" if name == "chat:end" else "stopped", text)

    name, end = await finished(bob, bob_ack["messageId"])
    assert name == "chat:end", end
    assert assert_contiguous(chunks_of(bob, bob_ack["messageId"])) == end["content"] == REPLY
    assert bob.named("chat:error") == []
    for _name, payload in alice.events + bob.events:
        if isinstance(payload, dict) and isinstance(payload.get("message"), str):
            assert not leaked(payload["message"], repr(steps)), payload
    assert alice.sio.connected and bob.sio.connected
    await eventually(lambda: len(gateway.services.chat.replies) == 0, what="replies left running")


async def test_events_named_like_lifecycle_events_are_refused_and_identity_kept(
    arena: Arena,
) -> None:
    """A client's `disconnect` or `connect` event must not re-run the lifecycle handlers.

    Were it dispatched to `on_disconnect`, the socket would shed its identity
    and could then claim any `userId`; to `on_connect`, it would re-run
    authentication with an `environ` the client wrote.
    """
    alice, gateway = arena.alice, arena.gateway
    bob_conversation = arena.bob.named("chat:conversation")[0]["conversationId"]
    forged_environ = {"HTTP_AUTHORIZATION": f"Bearer {gateway.token('bob')}"}
    for event, args in [
        ("disconnect", ("transport close",)),
        ("disconnect", ()),
        ("connect", (forged_environ,)),
        ("connect", (forged_environ, {"token": gateway.token("bob")})),
        ("connect", ("not an environ",)),
    ]:
        ack = await call(alice, event, args)
        assert isinstance(ack, dict) and ack["ok"] is False, (event, ack)
        assert ack["error"]["code"] == "VALIDATION_ERROR", (event, ack)
        assert alice.sio.connected

    # Alice is still Alice: she cannot speak as Bob or into his conversation.
    ack = await alice.call("chat:start", {"message": "as bob", "userId": "bob"})
    assert ack["ok"] is False and ack["error"]["code"] == "FORBIDDEN", ack
    ack = await alice.call(
        "chat:start", {"message": "peek", "userId": "bob", "conversationId": bob_conversation}
    )
    assert ack["ok"] is False and ack["error"]["code"] == "FORBIDDEN", ack
    ack = await alice.call("chat:start", {"message": "still me"})
    assert ack["ok"] is True, ack
    await finished(alice, ack["messageId"])
    _, total = await gateway.services.repository.list_conversations("alice", limit=10, offset=0)
    assert total == 2
    _, total = await gateway.services.repository.list_conversations("bob", limit=10, offset=0)
    assert total == 1


async def test_event_names_that_are_not_strings_are_refused(arena: Arena) -> None:
    for name in [5, None, 1.5, True, [1], {"a": 1}, ["chat:start"]]:
        ack = await call(arena.alice, name, ({"message": "hi"},))  # type: ignore[arg-type]
        assert isinstance(ack, dict) and ack["ok"] is False, (name, ack)
        assert ack["error"]["code"] == "VALIDATION_ERROR", (name, ack)
    assert arena.alice.sio.connected
    assert len(arena.gateway.upstream.requests) == 2  # the two first turns; nothing since


# --- raw frames


class RawSocket:
    """A hand-driven Engine.IO v4 websocket on /ai, for frames no client library would send."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self._ids = 1000

    @classmethod
    @asynccontextmanager
    async def open(cls, gateway: Gateway, user: str) -> AsyncIterator[RawSocket]:
        url = gateway.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        async with connect(
            url, proxy=None, max_size=None, compression=None, ping_interval=None
        ) as ws:
            opened = await asyncio.wait_for(ws.recv(), 10)
            assert isinstance(opened, str) and opened.startswith("0{"), opened
            await ws.send("40/ai," + json.dumps({"token": gateway.token(user)}))
            joined = await asyncio.wait_for(ws.recv(), 10)
            assert isinstance(joined, str) and joined.startswith('40/ai,{"sid"'), joined
            yield cls(ws)

    async def ack(self, ack_id: int, timeout: float = 10) -> Any:
        """The data of acknowledgement `ack_id`, skipping events; answers the server's pings."""
        prefix = f"43/ai,{ack_id}"
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.ws.recv()
                if frame == "2":
                    await self.ws.send("3")
                elif isinstance(frame, str) and frame.startswith(prefix):
                    return json.loads(frame[len(prefix) :])[0]

    async def alive(self) -> str:
        """'answered' if this connection still answers events, else 'closed' or 'silent'."""
        self._ids += 1
        try:
            await self.ws.send(f'42/ai,{self._ids}["chat:stop"]')
            ack = await self.ack(self._ids, timeout=5)
        except ConnectionClosed:
            return "closed"
        except TimeoutError:
            return "silent"
        assert ack["ok"] is True, ack
        return "answered"


@dataclass
class Bystander:
    """Another user streaming reply after reply until told to stop; each must come out whole."""

    client: Client
    replies: int = 0

    async def run(self, done: asyncio.Event) -> None:
        while not done.is_set():
            ack = await self.client.call("chat:start", {"message": f"steady {self.replies}"})
            assert ack["ok"] is True, ack
            name, end = await finished(self.client, ack["messageId"])
            assert name == "chat:end", end
            chunks = chunks_of(self.client, ack["messageId"])
            assert assert_contiguous(chunks) == end["content"] == REPLY
            self.replies += 1


@asynccontextmanager
async def bystander(gateway: Gateway, client: Client) -> AsyncIterator[Bystander]:
    gateway.upstream.default = Script(count=REPLY_TOKENS, delay_s=0.004)
    await client.connect(gateway.url, gateway.token("bystander"))
    watcher = Bystander(client)
    done = asyncio.Event()
    task = asyncio.create_task(watcher.run(done))
    try:
        yield watcher
        done.set()
        await asyncio.wait_for(task, 30)
    finally:
        task.cancel()
        with suppress(asyncio.CancelledError):
            await task
    assert client.sio.connected
    assert client.named("chat:error") == []


async def assert_server_serves_a_new_client(gateway: Gateway, client: Client) -> None:
    await client.connect(gateway.url, gateway.token("newcomer"))
    ack = await client.call("chat:start", {"message": "still there?"})
    assert ack["ok"] is True, ack
    name, end = await finished(client, ack["messageId"])
    assert (name, end["content"]) == ("chat:end", REPLY)
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert (await http.get("/healthz")).status_code == 200


def malformed_frames(max_bytes: int) -> list[tuple[str, list[str | bytes], int | None]]:
    """(what, frames, the acknowledgement id that must be answered with VALIDATION_ERROR)."""
    deep = "[" * 5000 + "]" * 5000
    huge_int = '{"message":"hi","maxTokens":100000000000000000000000}'
    return [
        ("invalid JSON after the namespace", ["42/ai,1{not json"], None),
        ("truncated event", ['42/ai,2["chat:start",{"message":"hi"'], None),
        ("binary garbage", [bytes(range(256))], None),
        ("text garbage", ["\x00\x01garbage\xff"], None),
        ("empty frame", [""], None),
        ("first element not a string", ['42/ai,3[1,{"message":"hi"}]'], 3),
        ("first element an object", ['42/ai,4[{"a":1},"x"]'], 4),
        ("first element null", ["42/ai,5[null]"], 5),
        ("empty event array", ["42/ai,6[]"], 6),
        ("event data an object", ['42/ai,7{"message":"hi"}'], 7),
        ("event data a string", ['42/ai,8"chat:start"'], 8),
        ("event data a number", ["42/ai,9 42"], 9),
        ("integer beyond 64 bits", [f'42/ai,10["chat:start",{huge_int}]'], 10),
        (
            "number beyond a double",
            ['42/ai,11["chat:start",{"message":"hi","temperature":1e400}]'],
            None,
        ),
        ("nesting beyond the codec's limit", [f'42/ai,12["chat:start",{deep}]'], None),
        ("event for a namespace never joined", ['42/elsewhere,13["chat:stop"]'], None),
        ("unknown packet types", ["49/ai,[]", "7", "6abc", "42/ai,99999999999999999999999["], None),
        ("acknowledgement nobody asked for", ['43/ai,424242[{"ok":true}]'], None),
        ("second connect to /ai", ['40/ai,{"token":"garbage"}'], None),
        (
            "binary placeholder out of range",
            ['451-/ai,14["chat:start",{"_placeholder":true,"num":7}]', b"abc"],
            None,
        ),
        (
            "oversized frame",
            ['42/ai,15["chat:start",{"message":"' + "x" * (max_bytes + 1) + '"}]'],
            None,
        ),
    ]


async def test_malformed_websocket_frames_close_at_most_their_own_connection(
    gateway: Gateway, client_factory: Callable[[], Client]
) -> None:
    max_bytes = gateway.app.sio.eio.max_http_buffer_size
    outcomes: dict[str, str] = {}
    async with bystander(gateway, client_factory()) as watcher:
        for what, frames, ack_id in malformed_frames(max_bytes):
            async with RawSocket.open(gateway, "mallory") as raw:
                for frame in frames:
                    await raw.ws.send(frame)
                if ack_id is not None:
                    ack = await raw.ack(ack_id)
                    assert ack["ok"] is False, (what, ack)
                    assert ack["error"]["code"] == "VALIDATION_ERROR", (what, ack)
                    assert not leaked(ack["error"]["message"], str(frames)), (what, ack)
                outcomes[what] = await raw.alive()
            async with httpx.AsyncClient(base_url=gateway.url) as http:
                assert (await http.get("/healthz")).status_code == 200, what
    assert watcher.replies >= 1
    # The oversized frame is refused by closing its connection, before it is parsed.
    assert outcomes.pop("oversized frame") == "closed"
    # python-socketio keeps a binary event whose placeholder cannot be filled as
    # "awaiting attachments", so that connection hears nothing more; it is the
    # sender's own connection, and everyone else is unaffected (checked above).
    assert outcomes.pop("binary placeholder out of range") in ("answered", "closed", "silent")
    silent = [what for what, outcome in outcomes.items() if outcome == "silent"]
    assert silent == [], f"connections left open but no longer answering: {silent}"
    await assert_server_serves_a_new_client(gateway, client_factory())
    await eventually(lambda: len(gateway.services.chat.replies) == 0)


class Polling:
    """A hand-driven Engine.IO v4 long-polling session on /ai.

    Like a real client it always has a GET in flight, so the server always has
    somewhere to put what it sends (closing a session waits for that).
    """

    def __init__(self, http: httpx.AsyncClient, sid: str) -> None:
        self.http = http
        self.sid = sid
        self.packets: list[str] = []
        self.closed = False
        self._leaving = False
        self._poller: asyncio.Task[None] | None = None

    @classmethod
    @asynccontextmanager
    async def open(cls, gateway: Gateway, user: str) -> AsyncIterator[Polling]:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=30) as http:
            opened = await http.get("/socket.io/", params={"EIO": "4", "transport": "polling"})
            assert opened.status_code == 200 and opened.text.startswith("0{"), opened.text
            session = cls(http, json.loads(opened.text[1:])["sid"])
            session._poller = asyncio.create_task(session._poll())
            try:
                assert await session.post("40/ai," + json.dumps({"token": gateway.token(user)}))
                await eventually(lambda: any(p.startswith('40/ai,{"sid"') for p in session.packets))
                yield session
            finally:
                await session._close()
                with suppress(asyncio.CancelledError, httpx.HTTPError):
                    await session._poller

    async def post(self, body: str | bytes) -> int:
        response = await self.http.post("/socket.io/", params=self._params(), content=body)
        return response.status_code

    async def alive(self) -> str:
        """'answered' if this session still answers events, else 'closed' or 'silent'."""
        if self.closed or await self.post('42/ai,77["chat:stop"]') != 200:
            return "closed"
        try:
            await eventually(lambda: self.closed or self._ack(77) is not None, timeout=5)
        except TimeoutError:
            return "silent"
        if self.closed:
            return "closed"
        assert self._ack(77) == [{"ok": True, "stopped": False}]
        return "answered"

    def _ack(self, ack_id: int) -> Any:
        prefix = f"43/ai,{ack_id}"
        for packet in self.packets:
            if packet.startswith(prefix):
                return json.loads(packet[len(prefix) :])
        return None

    async def _close(self) -> None:
        """Leave without a long-poll pending at the server (it would be held for a ping cycle)."""
        assert self._poller is not None
        self._leaving = True
        with suppress(httpx.HTTPError, TimeoutError):
            if not self.closed and await self.post('42/ai,78["chat:stop"]') == 200:
                await asyncio.wait_for(asyncio.shield(self._poller), 5)
            if not self.closed:
                await self.post("1")
        self._poller.cancel()
        with suppress(asyncio.CancelledError, httpx.HTTPError):
            await self._poller

    async def _poll(self) -> None:
        while not self._leaving:
            response = await self.http.get("/socket.io/", params=self._params())
            if response.status_code != 200:
                self.closed = True
                return
            for packet in response.text.split("\x1e"):
                if packet == "1":
                    self.closed = True
                    return
                if packet == "2":
                    await self.post("3")
                self.packets.append(packet)

    def _params(self) -> dict[str, str]:
        return {"EIO": "4", "transport": "polling", "sid": self.sid}


async def test_malformed_polling_posts_close_at_most_their_own_session(
    gateway: Gateway, client_factory: Callable[[], Client]
) -> None:
    max_bytes = gateway.app.sio.eio.max_http_buffer_size
    bodies: list[tuple[str, str | bytes]] = [
        ("invalid JSON", "42/ai,1{not json"),
        ("invalid UTF-8", b"\xff\xfe\xfd42/ai,[]"),
        ("a bad packet among good ones", '42/ai,["x"]\x1e42/ai,{bad\x1e42/ai,[1]'),
        ("hundreds of packets", "\x1e".join(["42/ai,[7]"] * 500)),
        ("empty body", ""),
        ("unknown engine.io packet", "9hello"),
        ("oversized body", "42/ai,[" + '"x",' * (max_bytes // 4) + '"x"]'),
    ]
    statuses: dict[str, int] = {}
    outcomes: dict[str, str] = {}
    async with bystander(gateway, client_factory()) as watcher:
        for what, body in bodies:
            async with Polling.open(gateway, "mallory") as session:
                statuses[what] = await session.post(body)
                outcomes[what] = await session.alive()
    assert watcher.replies >= 1
    # An oversized body is refused, and its session closed, without being read.
    assert statuses.pop("oversized body") == 400
    assert outcomes.pop("oversized body") == "closed"
    assert set(outcomes.values()) <= {"answered", "closed"}, outcomes
    await assert_server_serves_a_new_client(gateway, client_factory())


async def test_lone_surrogate_in_a_payload_is_answered(gateway: Gateway) -> None:
    """JSON.stringify escapes a lone surrogate (e.g. an emoji cut in half) as `\\ud83d`;
    the event must still be answered, even if only with VALIDATION_ERROR."""
    async with RawSocket.open(gateway, "alice") as raw:
        await raw.ws.send('42/ai,1["chat:start",{"message":"cut \\ud83d"}]')
        ack = await raw.ack(1, timeout=3)
        assert ack["ok"] is True or ack["error"]["code"] == "VALIDATION_ERROR", ack
        assert await raw.alive() == "answered"


async def test_nul_character_is_stored_or_refused_never_internal(
    gateway_factory: GatewayFactory,
    database_url: str,
    client_factory: Callable[[], Client],
) -> None:
    async with gateway_factory(database_url=database_url) as gw:
        client = client_factory()
        await client.connect(gw.url, gw.token("alice"))
        for payload in [{"message": "a\x00b"}, {"message": "hi", "conversationId": "a\x00b"}]:
            ack = await client.call("chat:start", payload)
            if ack["ok"]:
                name, _ = await finished(client, ack["messageId"])
                assert name == "chat:end"
            else:
                assert ack["error"]["code"] in CLIENT_CODES, (payload, ack)
