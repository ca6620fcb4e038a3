"""Idle connections: cheap to hold, and still Engine.IO's heartbeat and deadlines.

The gateway keeps an idle client for about half of what python-engineio and
uvicorn kept (bench B4): its Engine.IO sockets (`wire.engine.LeanSocket`) are
timed by one shared clock and start a writer only when there is something to
send, and uvicorn's WebSocket protocol (`server.LeanWebSocketProtocol`) lets go
of the handshake. These tests run the real server on a real port, on uvicorn
configured as `tokenwire serve` configures it, with python-socketio clients and
hand-driven WebSockets, and check that nothing a client can see has changed:
heartbeats keep a connection open, a silent one is dropped after
PING_INTERVAL + PING_TIMEOUT, long-polling and the upgrade to WebSocket work,
and a socket whose writer has stopped still gets what is sent to it.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from engineio.packet import MESSAGE, Packet
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.conftest import Client, Gateway, GatewayFactory
from tests.test_fuzz import eventually
from tokenwire.testing import Script
from tokenwire.wire.engine import WRITER_LINGER_S, LeanEvent, LeanQueue, LeanSocket

# Slack for a busy 2-core CI machine; the lower bounds are exact.
SLACK_S = 2.0


@pytest.fixture
def production_gateway(gateway_factory: GatewayFactory) -> GatewayFactory:
    """`gateway_factory`: `tokenwire.testing.serve` runs the WebSocket protocol `tokenwire serve` uses."""
    return gateway_factory


@asynccontextmanager
async def raw_socket(gateway: Gateway, user: str = "alice") -> AsyncIterator[ClientConnection]:
    """An Engine.IO v4 WebSocket joined to /ai, driven by hand (nothing answers pings)."""
    url = gateway.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
    async with connect(url, proxy=None, compression=None, ping_interval=None) as ws:
        opened = await asyncio.wait_for(ws.recv(), 10)
        assert isinstance(opened, str) and opened.startswith("0{"), opened
        await ws.send("40/ai," + json.dumps({"token": gateway.token(user)}))
        joined = await asyncio.wait_for(ws.recv(), 10)
        assert isinstance(joined, str) and joined.startswith('40/ai,{"sid"'), joined
        yield ws


def engine_sockets(gateway: Gateway) -> list[Any]:
    return list(gateway.app.sio.eio.sockets.values())


# --- heartbeats and deadlines


async def test_heartbeats_come_every_ping_interval_and_keep_a_websocket_open(
    production_gateway: GatewayFactory,
) -> None:
    async with (
        production_gateway(ping_interval=0.3, ping_timeout=0.5) as gateway,
        raw_socket(gateway) as ws,
    ):
        pings: list[float] = []
        async with asyncio.timeout(10):
            while len(pings) < 5:
                frame = await ws.recv()
                if frame == "2":
                    pings.append(time.monotonic())
                    await ws.send("3")
        gaps = [b - a for a, b in zip(pings, pings[1:], strict=False)]
        # A PING comes PING_INTERVAL after the PONG (the clock may add up to 0.03 s here).
        assert all(0.3 - 0.01 <= gap <= 0.3 + SLACK_S for gap in gaps), gaps
        await ws.send('42/ai,1["chat:stop"]')
        async with asyncio.timeout(10):
            while (frame := await ws.recv()) == "2":
                await ws.send("3")
        assert frame == '43/ai,1[{"ok":true,"stopped":false}]'


async def test_a_silent_websocket_is_dropped_after_ping_interval_plus_timeout(
    production_gateway: GatewayFactory,
) -> None:
    async with production_gateway(ping_interval=0.4, ping_timeout=0.6) as gateway:
        namespace = gateway.app.namespace
        async with raw_socket(gateway) as ws:
            silent_since = time.monotonic()  # its last frame was the /ai connect
            assert namespace.connected == 1
            with pytest.raises(ConnectionClosed):
                async with asyncio.timeout(10):
                    while True:
                        await ws.recv()  # the PING, never answered
            closed_after = time.monotonic() - silent_since
        assert 1.0 - 0.05 <= closed_after <= 1.0 + SLACK_S, closed_after
        await eventually(lambda: namespace.connected == 0 and not engine_sockets(gateway))
        assert len(gateway.app.sio.eio.clock) == 0  # nothing left to wake


async def test_a_websocket_sent_nothing_for_ping_interval_plus_timeout_is_closed(
    production_gateway: GatewayFactory,
) -> None:
    """engine.io's writer gave up, closing the WebSocket, after that long with nothing to send.

    A client that keeps sending but never answers the PING gets no more
    PINGs, so nothing more is sent to it; its session ends at the ping
    timeout (engine.io's sweep) and the WebSocket closes PING_INTERVAL +
    PING_TIMEOUT after the PING, although the client is still talking.
    """
    async with production_gateway(ping_interval=0.3, ping_timeout=0.5) as gateway:
        namespace = gateway.app.namespace
        async with raw_socket(gateway) as ws:

            async def chatter() -> None:
                while True:
                    await ws.send("6")  # NOOP: the read deadline never comes
                    await asyncio.sleep(0.1)

            talking = asyncio.create_task(chatter())
            try:
                assert await asyncio.wait_for(ws.recv(), 5) == "2"
                pinged = time.monotonic()
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), 10)
                closed_after = time.monotonic() - pinged
            finally:
                talking.cancel()
        assert 0.8 - 0.05 <= closed_after <= 0.8 + SLACK_S, closed_after
        await eventually(lambda: namespace.connected == 0 and not engine_sockets(gateway))


@pytest.mark.parametrize(
    ("probe", "then"),
    [("2ping", None), ("2probe", "6")],
    ids=["no PING probe", "no UPGRADE packet"],
)
async def test_a_failed_upgrade_leaves_the_polling_session_working(
    production_gateway: GatewayFactory, probe: str, then: str | None
) -> None:
    async with (
        production_gateway(ping_interval=30, ping_timeout=20) as gateway,
        httpx.AsyncClient(base_url=gateway.url, timeout=10) as http,
    ):
        opened = await http.get("/socket.io/", params={"EIO": "4", "transport": "polling"})
        sid = json.loads(opened.text[1:])["sid"]
        params = {"EIO": "4", "transport": "polling", "sid": sid}
        await http.post(
            "/socket.io/", params=params, content="40/ai," + json.dumps({"token": gateway.token()})
        )
        assert (await http.get("/socket.io/", params=params)).text.startswith('40/ai,{"sid"')

        url = (
            gateway.url.replace("http://", "ws://")
            + f"/socket.io/?EIO=4&transport=websocket&sid={sid}"
        )
        async with connect(url, proxy=None, compression=None, ping_interval=None) as ws:
            await ws.send(probe)
            if then is not None:
                assert await asyncio.wait_for(ws.recv(), 5) == "3probe"
                await ws.send(then)
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), 5)

        await http.post("/socket.io/", params=params, content='42/ai,1["chat:stop"]')
        polled = ""
        async with asyncio.timeout(10):
            while "43/ai,1" not in polled:
                polled = (await http.get("/socket.io/", params=params)).text
        assert '43/ai,1[{"ok":true,"stopped":false}]' in polled.split("\x1e")


@pytest.mark.parametrize(
    "transports",
    [["websocket"], ["polling"], ["polling", "websocket"]],
    ids=["websocket", "polling", "upgrade"],
)
async def test_a_client_stays_connected_across_heartbeats_on_every_transport(
    production_gateway: GatewayFactory, client_factory: Callable[[], Client], transports: list[str]
) -> None:
    async with production_gateway(ping_interval=0.3, ping_timeout=1) as gateway:
        client = client_factory()
        await client.connect(gateway.url, gateway.token("alice"), transports=transports)
        await asyncio.sleep(1.5)  # several heartbeats, and writers that stopped in between
        assert client.sio.connected
        assert await client.call("chat:stop") == {"ok": True, "stopped": False}
        assert client.sio.transport() == transports[-1]
        (socket,) = engine_sockets(gateway)
        assert type(socket) is LeanSocket


async def test_a_server_side_disconnect_reaches_an_idle_client(
    production_gateway: GatewayFactory, client_factory: Callable[[], Client]
) -> None:
    async with production_gateway(ping_interval=30, ping_timeout=20) as gateway:
        client = client_factory()
        gone = asyncio.Event()
        client.sio.on("disconnect", gone.set, namespace="/ai")
        await client.connect(gateway.url, gateway.token("alice"))
        await asyncio.sleep(WRITER_LINGER_S + 0.3)  # its writer has stopped
        await gateway.app.sio.disconnect(client.sio.get_sid("/ai"), namespace="/ai")
        await asyncio.wait_for(gone.wait(), 5)


async def test_a_bearer_header_authenticates_over_the_websocket(
    production_gateway: GatewayFactory, client_factory: Callable[[], Client]
) -> None:
    """The handshake's headers reach the app after uvicorn's copy of them is dropped."""
    async with production_gateway() as gateway:
        client = client_factory()
        headers = {"Authorization": f"Bearer {gateway.token('bob')}"}
        await client.connect(gateway.url, headers=headers)
        sid = client.sio.get_sid("/ai")
        assert gateway.app.namespace.principals[sid].user_id == "bob"


# --- what an idle connection keeps


async def test_an_idle_websocket_keeps_no_writer_and_one_clock_entry(
    production_gateway: GatewayFactory, client_factory: Callable[[], Client]
) -> None:
    count = 20
    async with production_gateway(ping_interval=30, ping_timeout=20) as gateway:
        clients = [client_factory() for _ in range(count)]
        for number, client in enumerate(clients):
            await client.connect(gateway.url, gateway.token(f"user{number}"))
        await asyncio.sleep(WRITER_LINGER_S + 0.3)

        sockets = engine_sockets(gateway)
        assert len(sockets) == count
        assert all(type(s) is LeanSocket and s._writer is None for s in sockets)
        assert all(type(s.queue) is LeanQueue for s in sockets)
        engine_tasks = [
            t
            for t in asyncio.all_tasks()
            if "LeanSocket" in getattr(t.get_coro(), "__qualname__", "")
        ]
        assert engine_tasks == []  # only uvicorn's task per connection is left
        assert len(gateway.app.sio.eio.clock) == count

        for client in clients:
            await client.disconnect()
        await eventually(lambda: not engine_sockets(gateway))
        await eventually(lambda: len(gateway.app.sio.eio.clock) == 0)


async def test_a_reply_reaches_a_client_whose_writer_had_stopped(
    production_gateway: GatewayFactory, client_factory: Callable[[], Client]
) -> None:
    async with production_gateway(ping_interval=30, ping_timeout=20) as gateway:
        client = client_factory()
        await client.connect(gateway.url, gateway.token("alice"))
        await asyncio.sleep(WRITER_LINGER_S + 0.3)
        ack = await client.call("chat:start", {"message": "hello"})
        assert ack["ok"] is True, ack
        name, _ = await client.wait_for("chat:end", "chat:error")
        assert name == "chat:end"
        assert client.text() == "".join(gateway.upstream.default.token_list())


# --- sending without the writer task


async def quiet_socket(gateway: Gateway, client: Client) -> Any:
    """`client` connected as alice; its Engine.IO socket, once the writer has stopped."""
    await client.connect(gateway.url, gateway.token("alice"))
    await eventually(lambda: all(s._writer is None for s in engine_sockets(gateway)))
    (socket_,) = engine_sockets(gateway)
    return socket_


async def test_a_reply_on_an_open_websocket_is_written_without_a_writer_task(
    production_gateway: GatewayFactory, client_factory: Callable[[], Client]
) -> None:
    """With nothing queued, `LeanSocket.send` writes each frame itself: no writer wakes per frame."""
    async with production_gateway(ping_interval=30, ping_timeout=20) as gateway:
        client = client_factory()
        socket = await quiet_socket(gateway, client)
        before = socket._sent_at
        gateway.upstream.enqueue(Script(count=50, delay_s=0.002))
        assert (await client.call("chat:start", {"message": "hi"}))["ok"] is True
        await client.wait_for("chat:end")
        assert client.text() == "".join(f"token{i} " for i in range(50))
        assert socket._sent_at > before  # the ack, the announcements, the chunks, chat:end
        assert socket._writer is None  # no writer was started for any of them


class _RecordingWebSocket:
    """Stands in for a socket's `AsgiWebSocket`: records what was sent, and by which path."""

    def __init__(self) -> None:
        self.sent: list[str | bytes] = []
        self.release = asyncio.Event()
        self.release.set()

    def send_nowait(self, text: str) -> bool:
        self.sent.append(text)
        return True

    async def send(self, text: str | bytes) -> None:
        await self.release.wait()  # a connection over its high-water mark, when cleared
        self.sent.append(text)

    async def close(self) -> None:
        pass


async def test_a_direct_write_never_overtakes_a_queued_or_held_packet(
    production_gateway: GatewayFactory, client_factory: Callable[[], Client]
) -> None:
    """`send` writes directly only when no packet is queued and the writer holds none."""
    async with production_gateway(ping_interval=30, ping_timeout=20) as gateway:
        client = client_factory()
        socket_ = await quiet_socket(gateway, client)
        real, fake = socket_._ws, _RecordingWebSocket()
        socket_._ws = fake
        try:
            # Queued, and its writer not yet run: the next packet queues behind it.
            socket_.queue.put_nowait(Packet(MESSAGE, "a"))
            await socket_.send(Packet(MESSAGE, "b"))
            await eventually(lambda: len(fake.sent) == 2)
            assert fake.sent == ["4a", "4b"]
            # The writer took a packet and waits to send it: the next one waits too.
            fake.release.clear()
            socket_.queue.put_nowait(Packet(MESSAGE, "c"))
            await eventually(lambda: socket_.queue.empty())
            await socket_.send(Packet(MESSAGE, "d"))
            fake.release.set()
            await eventually(lambda: len(fake.sent) == 4)
            assert fake.sent[2:] == ["4c", "4d"]
            # Nothing queued or held: written at once, by the caller.
            await eventually(lambda: not socket_._writing)
            await socket_.send(Packet(MESSAGE, "e"))
            assert fake.sent[4:] == ["4e"]
            # A binary packet is never a direct (text) write: the writer sends it.
            written_at = socket_._sent_at
            await socket_.send(Packet(MESSAGE, b"\x01"))
            await eventually(lambda: len(fake.sent) == 6)
            assert fake.sent[5] == b"\x01" and socket_._sent_at == written_at
        finally:
            if socket_._writer is not None:
                socket_.queue.put_nowait(None)
                await socket_._writer
            socket_._ws = real
        await client.disconnect()


async def test_a_client_that_reads_slowly_gets_every_chunk_in_order(
    production_gateway: GatewayFactory,
) -> None:
    """Frames queued while the connection is over its high-water mark are never overtaken.

    The client stops reading while a reply of ~4 MB streams: the kernel's
    buffers (the client's kept small) fill, the transport pauses writing, frames wait in the queue for
    the writer, and direct writes must wait behind them. When the client
    reads again, the chunks' offsets must run on without a gap or a repeat.
    """
    tokens = [f"{i:06d}" + "x" * 1994 for i in range(2000)]
    async with production_gateway(ping_interval=30, ping_timeout=20) as gateway:
        gateway.upstream.enqueue(Script(tokens=tokens))
        url = gateway.url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        small = socket.socket()
        small.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        small.setblocking(False)
        host, port = gateway.url.removeprefix("http://").split(":")
        await asyncio.get_running_loop().sock_connect(small, (host, int(port)))
        async with connect(
            url,
            sock=small,
            proxy=None,
            compression=None,
            ping_interval=None,
            max_queue=1,
            max_size=None,
        ) as ws:
            assert str(await asyncio.wait_for(ws.recv(), 10)).startswith("0{")
            await ws.send("40/ai," + json.dumps({"token": gateway.token("alice")}))
            assert str(await asyncio.wait_for(ws.recv(), 10)).startswith("40/ai,")
            await ws.send('42/ai,["chat:start",{"message":"a long one"}]')
            await asyncio.sleep(1.5)  # not reading: the reply piles up on the way
            engine_socket = engine_sockets(gateway)[0]
            assert engine_socket.queue.qsize() > 0  # the writer is holding frames back
            text, offset = "", 0
            async with asyncio.timeout(30):
                while True:
                    frame = str(await ws.recv())
                    if not frame.startswith("42/ai,"):
                        continue
                    name, payload, *_offset = json.loads(frame[6:])
                    if name == "chat:message":
                        assert payload["offset"] == offset
                        text += payload["content"]
                        offset += len(payload["content"])
                    elif name == "chat:end":
                        assert payload["content"] == text
                        break
        assert text == "".join(tokens)


# --- LeanQueue: asyncio.Queue's semantics where the gateway relies on them


async def test_lean_queue_is_a_fifo_whose_getters_wait_in_turn() -> None:
    queue: LeanQueue[int] = LeanQueue()
    assert queue.empty() and queue.qsize() == 0
    first = asyncio.ensure_future(queue.get())
    second = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait(1)
    queue.put_nowait(2)
    await queue.put(3)
    assert (await first, await second) == (1, 2)
    assert queue.qsize() == 1 and queue.get_nowait() == 3
    with pytest.raises(asyncio.QueueEmpty):
        queue.get_nowait()


async def test_lean_queue_passes_a_cancelled_getters_item_on() -> None:
    queue: LeanQueue[str] = LeanQueue()
    cancelled = asyncio.ensure_future(queue.get())
    waiting = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait("x")  # wakes `cancelled` ...
    cancelled.cancel()  # ... which is cancelled before it runs
    assert await asyncio.wait_for(waiting, 1) == "x"
    assert cancelled.cancelled()


async def test_lean_queue_join_waits_for_every_task_done() -> None:
    queue: LeanQueue[int] = LeanQueue()
    await queue.join()  # nothing unfinished
    queue.put_nowait(1)
    queue.put_nowait(2)
    joined = asyncio.ensure_future(queue.join())
    queue.get_nowait()
    queue.task_done()
    await asyncio.sleep(0)
    assert not joined.done()
    queue.get_nowait()
    queue.task_done()
    await asyncio.wait_for(joined, 1)
    with pytest.raises(ValueError):
        queue.task_done()


async def test_lean_event_wakes_every_waiter_once_set() -> None:
    event = LeanEvent()
    assert not event.is_set()
    waiters = [asyncio.ensure_future(event.wait()) for _ in range(3)]
    cancelled = asyncio.ensure_future(event.wait())
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    event.set()
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert await event.wait() is True  # already set: at once
    event.clear()
    assert not event.is_set()


async def test_lean_queue_calls_on_item_only_when_nobody_waits() -> None:
    queue: LeanQueue[int] = LeanQueue()
    calls: list[int] = []
    queue.on_item = lambda: calls.append(queue.qsize())
    queue.put_nowait(1)
    getter = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    assert getter.done()  # took the queued item at once
    getter = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.put_nowait(2)  # a getter waits: no call
    assert await getter == 2
    assert calls == [1]
