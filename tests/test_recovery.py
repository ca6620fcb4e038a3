"""Connection state recovery, from the wire: who gets a session back, and what is kept.

Raw WebSocket clients speak the protocol byte by byte (as socket.io-client
does; tests/interop/test_recovery.py runs the official one), so each case
can send exactly the `pid` and `offset` it needs: forged, someone else's,
late, malformed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from tests.conftest import Client, Gateway, GatewayFactory
from tests.proxy import cutting_proxy
from tests.test_shutdown import RawWebSocket
from tests.test_shutdown import _close_raw_connections as _close_raw_connections  # autouse
from tokenwire.chat.writer import utf16_len
from tokenwire.testing import Script


class Wire:
    """A raw client of /ai: CONNECT with any auth, then reading events with their offsets."""

    def __init__(self, ws: RawWebSocket) -> None:
        self.ws = ws
        self.events: list[tuple[str, Any, str | None]] = []  # (name, data, offset)
        self.connect: dict[str, Any] | None = None
        self.refused: Any = None

    @classmethod
    async def open(cls, gateway: Gateway, auth: dict[str, Any]) -> Wire:
        wire = cls(await RawWebSocket.open(int(gateway.url.rsplit(":", 1)[1])))
        await wire.ws.send("40/ai," + orjson.dumps(auth).decode())
        while wire.connect is None and wire.refused is None:
            await wire.read()
        return wire

    async def read(self) -> None:
        frame = (await self.ws.read_frame()).decode()
        if frame.startswith("40/ai,"):
            self.connect = orjson.loads(frame[len("40/ai,") :])
        elif frame.startswith("44/ai,"):
            self.refused = orjson.loads(frame[len("44/ai,") :])
        elif frame.startswith("42/ai,"):
            name, data, *rest = orjson.loads(frame[len("42/ai,") :])
            self.events.append((name, data, rest[0] if rest else None))
        elif frame == "2":
            await self.ws.send("3")  # engine.io PONG

    async def until(self, name: str, timeout: float = 10) -> Any:
        async with asyncio.timeout(timeout):
            while True:
                for event, data, _ in self.events:
                    if event == name:
                        return data
                await self.read()

    async def start(self, message: str = "hi") -> None:
        await self.ws.send(
            '42/ai,["chat:start",' + orjson.dumps({"message": message}).decode() + "]"
        )

    def text(self) -> str:
        return "".join(d["content"] for e, d, _ in self.events if e == "chat:message")

    def last_offset(self) -> str | None:
        return self.events[-1][2] if self.events else None

    def drop(self) -> None:
        self.ws.conn.close()


async def _until_away(gateway: Gateway, sid: str) -> None:
    store = gateway.app.sio.recovery
    for _ in range(200):
        session = store.for_sid(sid)
        if session is not None and session.away:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the session never went away")


async def test_connect_reply_carries_a_pid_and_every_event_an_increasing_offset(
    gateway: Gateway,
) -> None:
    gateway.upstream.enqueue(Script(count=5))
    wire = await Wire.open(gateway, {"token": gateway.token("alice")})
    assert wire.connect is not None and set(wire.connect) == {"sid", "pid"}
    await wire.start()
    await wire.until("chat:end")
    offsets = [int(o) for _, _, o in wire.events if o is not None]
    assert len(offsets) == len(wire.events) and offsets == sorted(set(offsets))


async def test_a_dropped_connection_gets_its_session_and_what_it_missed_back(
    gateway: Gateway,
) -> None:
    gateway.upstream.enqueue(Script(count=80, delay_s=0.01))
    first = await Wire.open(gateway, {"token": gateway.token("alice")})
    assert first.connect is not None
    await first.start()
    while len([e for e in first.events if e[0] == "chat:message"]) < 10:
        await first.read()
    seen, offset = first.text(), first.last_offset()
    first.drop()
    await _until_away(gateway, first.connect["sid"])
    await asyncio.sleep(0.2)  # chunks go on being generated meanwhile
    auth = {"token": gateway.token("alice"), "pid": first.connect["pid"], "offset": offset}
    second = await Wire.open(gateway, auth)
    assert second.connect == first.connect  # the same sid and pid: socket.recovered
    end = await second.until("chat:end")
    assert seen + second.text() == end["content"] == "".join(f"token{i} " for i in range(80))
    assert gateway.services.chat.replies.for_sid(first.connect["sid"]) is None


@pytest.mark.parametrize(
    "forge",
    [
        pytest.param(lambda _: {"pid": "not-a-session"}, id="forged-pid"),
        pytest.param(lambda c: {"pid": c["pid"], "offset": "1e9"}, id="malformed-offset"),
        pytest.param(lambda c: {"pid": c["pid"], "offset": 7}, id="offset-not-a-string"),
    ],
)
async def test_a_forged_pid_or_offset_is_a_new_connection(gateway: Gateway, forge: Any) -> None:
    first = await Wire.open(gateway, {"token": gateway.token("alice")})
    assert first.connect is not None
    first.drop()
    await _until_away(gateway, first.connect["sid"])
    second = await Wire.open(gateway, {"token": gateway.token("alice"), **forge(first.connect)})
    assert second.connect is not None
    assert second.connect["sid"] != first.connect["sid"]
    assert second.connect["pid"] != first.connect["pid"]


async def test_another_users_pid_is_refused_like_a_missing_one(gateway: Gateway) -> None:
    gateway.upstream.enqueue(Script(count=60, delay_s=0.01))
    alice = await Wire.open(gateway, {"token": gateway.token("alice")})
    assert alice.connect is not None
    await alice.start("alice's secret")
    await alice.until("chat:message")
    alice.drop()
    await _until_away(gateway, alice.connect["sid"])
    mallory = await Wire.open(
        gateway, {"token": gateway.token("mallory"), "pid": alice.connect["pid"], "offset": "1"}
    )
    assert mallory.connect is not None and mallory.connect["sid"] != alice.connect["sid"]
    await asyncio.sleep(0.3)
    while True:  # whatever arrived by now: none of alice's events
        try:
            async with asyncio.timeout(0.2):
                await mallory.read()
        except TimeoutError:
            break
    assert mallory.events == []
    # And alice's session is still hers to recover.
    assert gateway.app.sio.recovery.find(alice.connect["pid"]) is not None


async def test_an_expired_token_cannot_recover(gateway: Gateway) -> None:
    first = await Wire.open(gateway, {"token": gateway.token("alice")})
    assert first.connect is not None
    first.drop()
    await _until_away(gateway, first.connect["sid"])
    expired = gateway.token("alice", ttl_s=-60)
    second = await Wire.open(gateway, {"token": expired, "pid": first.connect["pid"]})
    assert second.connect is None and second.refused["message"] == "unauthorized"


async def test_a_session_not_recovered_in_time_is_released_and_its_reply_saved(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory(connection_recovery_s=0.3) as gateway:
        gateway.upstream.enqueue(Script(count=40, delay_s=0.01))
        first = await Wire.open(gateway, {"token": gateway.token("alice")})
        assert first.connect is not None
        await first.start()
        await first.until("chat:message")
        first.drop()
        await _until_away(gateway, first.connect["sid"])
        for _ in range(300):
            if len(gateway.app.sio.recovery) == 0 and not gateway.services.chat.replies:
                break
            await asyncio.sleep(0.02)
        assert len(gateway.app.sio.recovery) == 0  # no session or buffer left behind
        assert not gateway.services.chat.replies
        late = await Wire.open(
            gateway, {"token": gateway.token("alice"), "pid": first.connect["pid"]}
        )
        assert late.connect is not None and late.connect["sid"] != first.connect["sid"]


async def test_an_away_session_past_its_byte_budget_is_not_recoverable(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory(connection_recovery_max_bytes=2048) as gateway:
        gateway.upstream.enqueue(Script(tokens=["x" * 100] * 200, delay_s=0.002))
        first = await Wire.open(gateway, {"token": gateway.token("alice")})
        assert first.connect is not None
        await first.start()
        await first.until("chat:message")
        offset = first.last_offset()
        first.drop()
        await _until_away(gateway, first.connect["sid"])
        for _ in range(300):
            if gateway.app.sio.recovery.find(first.connect["pid"]) is None:
                break
            await asyncio.sleep(0.02)
        assert gateway.app.sio.recovery.find(first.connect["pid"]) is None
        second = await Wire.open(
            gateway,
            {"token": gateway.token("alice"), "pid": first.connect["pid"], "offset": offset},
        )
        assert second.connect is not None and second.connect["sid"] != first.connect["sid"]


async def test_connection_recovery_false_sends_no_pid_and_no_offsets(
    gateway_factory: GatewayFactory,
) -> None:
    async with gateway_factory(connection_recovery=False) as gateway:
        gateway.upstream.enqueue(Script(count=3))
        wire = await Wire.open(gateway, {"token": gateway.token("alice")})
        assert wire.connect is not None and set(wire.connect) == {"sid"}
        await wire.start()
        await wire.until("chat:end")
        assert all(offset is None for _, _, offset in wire.events)


async def test_a_client_disconnect_ends_the_session_at_once(gateway: Gateway) -> None:
    wire = await Wire.open(gateway, {"token": gateway.token("alice")})
    assert wire.connect is not None
    await wire.ws.send("41/ai,")  # socket.disconnect(): not a lost connection
    for _ in range(100):
        if len(gateway.app.sio.recovery) == 0:
            break
        await asyncio.sleep(0.01)
    assert len(gateway.app.sio.recovery) == 0


async def test_a_disconnect_then_close_back_to_back_ends_the_session_at_once(
    gateway: Gateway,
) -> None:
    # socket.io-client's disconnect(): DISCONNECT, then engine.io's CLOSE
    # right behind it. engine.io runs the message in a task of its own; the
    # CLOSE must not get there first and leave the session waiting.
    wire = await Wire.open(gateway, {"token": gateway.token("alice")})
    assert wire.connect is not None
    await wire.ws.send("41/ai,")
    await wire.ws.send("1")
    for _ in range(100):
        if len(gateway.app.sio.recovery) == 0:
            break
        await asyncio.sleep(0.01)
    assert len(gateway.app.sio.recovery) == 0
    assert gateway.app.namespace.principals == {}


async def test_a_long_poll_sent_again_is_answered_again(
    gateway: Gateway,
) -> None:
    """The client's HTTP library sends a long-poll GET again when its reused
    connection closes before any response (aiohttp does, RFC 9112 9.3.1.1;
    browsers do too). Engine.IO counts the packets of a response delivered
    once written, so those of a response the network lost are gone, and the
    session goes on: no drop, nothing for recovery to replay; a chunk is
    missing mid-reply and the chunks after it do not fit (found by
    tests/test_soak_follow.py). The retried GET carries the same URL, `t=`
    included (python-engineio and engine.io-client make `t` unique per
    request), so the lean engine tells a retry and answers it with the lost
    packets again (`LeanSocket.handle_get_request`).
    """
    async with _polling_reply(gateway, Script(count=60, delay_s=0.02)) as (proxy, client, ack):
        await client.wait_for("chat:message")
        proxy.lose_response(b"chat:message")
        await asyncio.wait_for(proxy.lost.wait(), 5)
        end = (await client.wait_for("chat:end", timeout=15))[1]
        assert client.sio.connected  # the client never noticed
        _assert_whole(client, ack["messageId"], end["content"])


async def test_a_long_poll_cut_while_it_waits_leaves_its_packets_to_the_retry(
    gateway: Gateway,
) -> None:
    """The other half of the retried long-poll: the cut comes while the poll
    waits for packets, so the client's HTTP library sends it again at once,
    while the server still holds the first. The first would take the next
    packets and write them to the closed connection; it ends with a NOOP
    instead, and the retry gets them."""
    async with _polling_reply(gateway, Script(count=12, delay_s=0.25)) as (proxy, client, ack):
        for _ in range(3):
            await client.wait_for("chat:message")
            await asyncio.sleep(0.1)  # the next long-poll waits for the next token
            assert proxy.cut() >= 1
        end = (await client.wait_for("chat:end", timeout=20))[1]
        _assert_whole(client, ack["messageId"], end["content"])


@contextlib.asynccontextmanager
async def _polling_reply(
    gateway: Gateway, script: Script
) -> AsyncIterator[tuple[Any, Client, dict[str, Any]]]:
    """A long-polling client behind a cutting proxy that has started a reply of `script`:
    the proxy, the client and the chat:start acknowledgement."""
    gateway.upstream.enqueue(script)
    port = int(gateway.url.rsplit(":", 1)[1])
    async with cutting_proxy(port) as proxy:
        client = Client()
        try:
            await client.connect(proxy.url, gateway.token("alice"), transports=["polling"])
            ack = await client.call("chat:start", {"message": "hi"})
            yield proxy, client, ack
        finally:
            await client.close()


def _assert_whole(client: Client, message_id: str, saved: str) -> None:
    """The client's chunks of the reply, each at its offset, make exactly the saved text."""
    text = ""
    for chunk in client.named("chat:message"):
        assert chunk["messageId"] == message_id
        assert chunk["offset"] == utf16_len(text), (chunk, text)
        text += chunk["content"]
    assert text == saved
