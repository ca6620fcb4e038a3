"""SIGTERM ends `tokenwire serve` in bounded time, whatever its clients do.

Each test starts the real server as a process, puts its connections into a
state with raw sockets (a client that is silent is, to the server, exactly a
client whose network vanished), sends SIGTERM and asserts the exit status and
how long it took. The bound is the one the README promises:
SHUTDOWN_GRACE_S + `SHUTDOWN_BOUND_S` (see `tokenwire.server`).
"""

from __future__ import annotations

import asyncio
import base64
import os
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.test_lifecycle import saved, serve_process, token
from tokenwire.closing import close_within
from tokenwire.server import SHUTDOWN_BOUND_S
from tokenwire.testing import Script, UpstreamDouble

GRACE_S = 1.0
# Generous for a loaded 2-core CI machine; today's hang is unbounded, so any
# finite allowance that is well below "forever" tells them apart.
LIMIT_S = GRACE_S + SHUTDOWN_BOUND_S + 3.0


async def _terminate(process: asyncio.subprocess.Process) -> tuple[int, float, bytes]:
    """SIGTERM, then the exit status, the seconds it took and what it printed on stderr."""
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    try:
        code = await asyncio.wait_for(process.wait(), LIMIT_S + 30)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"still running {LIMIT_S + 30:.0f} s after SIGTERM") from None
    took = time.monotonic() - started
    stderr = await process.stderr.read() if process.stderr else b""
    return code, took, stderr


def _assert_clean_exit(code: int, took: float, stderr: bytes) -> None:
    assert code == 0, stderr.decode(errors="replace")[-2000:]
    assert took < LIMIT_S, f"took {took:.1f} s (limit {LIMIT_S:.1f} s)"
    assert b"Traceback" not in stderr, stderr.decode(errors="replace")[-2000:]
    assert b"forcing exit" not in stderr  # the watchdog is a backstop, never the way out


class RawConnection:
    """One TCP connection driven byte by byte; every one opened is closed at the test's end."""

    opened: list[RawConnection] = []

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        RawConnection.opened.append(self)

    @classmethod
    async def open(cls, port: int, receive_buffer: int | None = None) -> RawConnection:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
        reader, writer = await asyncio.open_connection(
            sock=sock, limit=2**20 if receive_buffer is None else receive_buffer
        )
        return cls(reader, writer)

    async def request(self, method: str, path: str, body: bytes = b"") -> None:
        head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        if body:
            head += "Content-Type: text/plain;charset=UTF-8\r\n"
        self.writer.write(head.encode() + b"\r\n" + body)
        await self.writer.drain()

    async def response(self) -> tuple[int, bytes]:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 10)
        status = int(head.split(b" ", 2)[1])
        headers = {}
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            headers[name.strip().lower()] = value.strip()
        if headers.get(b"transfer-encoding") == b"chunked":
            body = b""
            while True:
                size = int(await asyncio.wait_for(self.reader.readuntil(b"\r\n"), 10), 16)
                chunk = await asyncio.wait_for(self.reader.readexactly(size + 2), 10)
                if size == 0:
                    return status, body
                body += chunk[:-2]
        length = int(headers.get(b"content-length", b"0"))
        return status, await asyncio.wait_for(self.reader.readexactly(length), 10)

    def close(self) -> None:
        self.writer.transport.abort()
        self.writer.close()


@pytest.fixture(autouse=True)
async def _close_raw_connections() -> AsyncIterator[None]:
    yield
    while RawConnection.opened:
        RawConnection.opened.pop().close()


async def polling_handshake(port: int) -> tuple[RawConnection, str]:
    conn = await RawConnection.open(port)
    await conn.request("GET", "/socket.io/?EIO=4&transport=polling")
    status, body = await conn.response()
    assert status == 200, body
    return conn, orjson.loads(body[1:])["sid"]


async def polling_session_with_poll_in_flight(port: int, user: str) -> RawConnection:
    """A polling client connected to /ai, whose next poll is open and whose network then vanished."""
    conn, sid = await polling_handshake(port)
    path = f"/socket.io/?EIO=4&transport=polling&sid={sid}"
    await conn.request("POST", path, b"40/ai," + orjson.dumps({"token": token(user)}))
    assert (await conn.response())[0] == 200
    await conn.request("GET", path)
    status, body = await conn.response()
    assert status == 200 and body.startswith(b"40/ai,"), body
    await conn.request("GET", path)  # the long poll, left open
    return conn


class RawWebSocket:
    """A WebSocket client of the bare minimum: masked text frames out, nothing parsed in."""

    def __init__(self, conn: RawConnection) -> None:
        self.conn = conn

    @classmethod
    async def open(
        cls, port: int, user: str | None = None, receive_buffer: int | None = None
    ) -> RawWebSocket:
        conn = await RawConnection.open(port, receive_buffer)
        key = base64.b64encode(os.urandom(16)).decode()
        conn.writer.write(
            (
                "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
                "Host: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        head = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 101"), head
        ws = cls(conn)
        await ws.read_frame()  # engine.io's OPEN
        if user is not None:
            await ws.send("40/ai," + orjson.dumps({"token": token(user)}).decode())
            assert (await ws.read_frame()).startswith(b"40/ai,")
        return ws

    async def send(self, text: str) -> None:
        payload = text.encode()
        mask = os.urandom(4)
        header = bytearray([0x81])
        if len(payload) < 126:
            header.append(0x80 | len(payload))
        else:
            header.append(0x80 | 126)
            header += len(payload).to_bytes(2, "big")
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.conn.writer.write(bytes(header) + mask + masked)
        await self.conn.writer.drain()

    async def read_frame(self) -> bytes:
        reader = self.conn.reader
        first = await asyncio.wait_for(reader.readexactly(2), 10)
        length = first[1] & 0x7F
        if length == 126:
            length = int.from_bytes(await reader.readexactly(2), "big")
        elif length == 127:
            length = int.from_bytes(await reader.readexactly(8), "big")
        return await asyncio.wait_for(reader.readexactly(length), 10)


def _unsent_bytes(server_port: int, client_port: int) -> int:
    """The server side's send queue on the connection to `client_port` (Linux's /proc/net/tcp)."""
    wanted = (f"0100007F:{server_port:04X}", f"0100007F:{client_port:04X}")
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if (fields[1], fields[2]) == wanted:
            return int(fields[4].split(":")[0], 16)
    return 0


@asynccontextmanager
async def serving(
    upstream: tuple[UpstreamDouble, str], tmp_path: Path, **env: str
) -> AsyncIterator[tuple[int, asyncio.subprocess.Process, Path]]:
    _, upstream_url = upstream
    db = tmp_path / "tw.db"
    async with serve_process(upstream_url, db, SHUTDOWN_GRACE_S=str(GRACE_S), **env) as (
        url,
        process,
    ):
        yield int(url.rsplit(":", 1)[1]), process, db


async def test_sigterm_exits_with_a_polling_handshake_never_followed_by_a_poll(
    upstream: tuple[UpstreamDouble, str], tmp_path: Path
) -> None:
    async with serving(upstream, tmp_path) as (port, process, _):
        for _ in range(3):
            await polling_handshake(port)
        _assert_clean_exit(*await _terminate(process))


async def test_sigterm_exits_with_a_long_poll_open_whose_client_vanished(
    upstream: tuple[UpstreamDouble, str], tmp_path: Path
) -> None:
    async with serving(upstream, tmp_path) as (port, process, _):
        await polling_session_with_poll_in_flight(port, "alice")
        _assert_clean_exit(*await _terminate(process))


async def test_sigterm_exits_with_a_websocket_that_stopped_reading_mid_reply_and_saves_it(
    upstream: tuple[UpstreamDouble, str], tmp_path: Path
) -> None:
    double, _ = upstream
    # Large tokens, fast: the socket's receive window and the server's send
    # buffer fill within a second, and the reply is still running at SIGTERM.
    words = "lorem ipsum dolor sit amet, consectetur adipiscing elit " * 8
    double.enqueue(Script(tokens=[f"{i} {words}" for i in range(20_000)], delay_s=0.002))
    async with serving(upstream, tmp_path, MAX_SOCKET_BACKLOG="100000") as (port, process, db):
        ws = await RawWebSocket.open(port, "alice", receive_buffer=4096)
        await ws.send('42/ai,0["chat:start",{"message":"a long one"}]')
        for _ in range(200):
            if double.requests and len(double.requests[0].sent) > 500:
                break
            await asyncio.sleep(0.05)
        ack_deadline = time.monotonic() + 5
        message_id = None
        while message_id is None and time.monotonic() < ack_deadline:
            frame = await ws.read_frame()
            if frame.startswith(b"43/ai,0"):
                message_id = orjson.loads(frame[len(b"43/ai,0") :])[0]["messageId"]
        assert message_id is not None
        # From here on the client reads nothing, until the server's kernel
        # holds bytes it cannot send: the client's window is full.
        client_port = ws.conn.writer.get_extra_info("sockname")[1]
        for _ in range(100):
            await asyncio.sleep(0.1)
            if _unsent_bytes(port, client_port) > 0:
                break
        assert _unsent_bytes(port, client_port) > 0
        code, took, stderr = await _terminate(process)
        _assert_clean_exit(code, took, stderr)
    status, content = saved(db, message_id)
    assert status == "interrupted", stderr.decode()[-3000:]
    assert status == "interrupted" and content


async def test_sigterm_exits_with_clients_that_sent_half_a_request(
    upstream: tuple[UpstreamDouble, str], tmp_path: Path
) -> None:
    async with serving(upstream, tmp_path) as (port, process, _):
        half_head = await RawConnection.open(port)
        half_head.writer.write(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\nHost: x\r\n")
        half_body = await RawConnection.open(port)
        _, sid = await polling_handshake(port)
        half_body.writer.write(
            f"POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\n"
            "Host: x\r\nContent-Length: 1000\r\n\r\n40/ai,".encode()
        )
        half_upgrade = await RawConnection.open(port)
        half_upgrade.writer.write(
            b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
        )
        await asyncio.sleep(0.5)
        _assert_clean_exit(*await _terminate(process))


async def test_sigterm_exits_with_thousands_of_idle_connections_and_tells_a_streaming_client(
    upstream: tuple[UpstreamDouble, str], tmp_path: Path, client_factory: Any
) -> None:
    double, _ = upstream
    idle_websockets = 1500
    half_open_polls = 100
    env = {
        "MAX_CONNECTIONS_PER_USER": "100000",
        "CONNECT_RATE_PER_IP": "100000/minute",
    }
    async with serving(upstream, tmp_path, **env) as (port, process, db):
        opened: list[Any] = []
        semaphore = asyncio.Semaphore(50)

        async def websocket(i: int) -> None:
            async with semaphore:
                opened.append(await RawWebSocket.open(port, f"idle{i % 50}"))

        async def poll(i: int) -> None:
            async with semaphore:
                opened.append(await polling_session_with_poll_in_flight(port, f"poll{i % 50}"))

        await asyncio.gather(
            *(websocket(i) for i in range(idle_websockets)),
            *(poll(i) for i in range(half_open_polls)),
        )
        streaming = client_factory()
        await streaming.connect(f"http://127.0.0.1:{port}", token("bob"))
        double.enqueue(Script(count=10_000, delay_s=0.01))
        ack = await streaming.call("chat:start", {"message": "long"})
        await streaming.wait_for("chat:message")

        code, took, stderr = await _terminate(process)
        _assert_clean_exit(code, took, stderr)
        error = (await streaming.wait_for("chat:error", timeout=5))[1]
        assert error["code"] == "SERVER_SHUTDOWN" and error["messageId"] == ack["messageId"]
    status, content = saved(db, ack["messageId"])
    assert status == "interrupted" and content == streaming.text()


async def test_the_watchdog_ends_a_shutdown_that_outlives_every_bound(tmp_path: Path) -> None:
    # A shutdown stuck for good (here: the main thread asleep after SIGTERM
    # was handled) ends by the watchdog, with the stacks on stderr.
    script = tmp_path / "stuck.py"
    script.write_text(
        "import signal, time\n"
        "import tokenwire.server as server\n"
        "from tokenwire.app import create_app\n"
        "from tokenwire.config import load_settings\n"
        "server.SHUTDOWN_BOUND_S, server._WATCHDOG_SLACK_S = 0.0, 0.5\n"
        "settings = load_settings(_env_file=None, shutdown_grace_s=0)\n"
        "app = create_app(settings)\n"
        "runner = server.GracefulServer(server.uvicorn_config(app, settings), app)\n"
        "runner.handle_exit(signal.SIGTERM, None)\n"
        "time.sleep(30)\n"
    )
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable, str(script), stderr=asyncio.subprocess.PIPE, cwd=str(tmp_path)
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 25)
    assert process.returncode == 1
    assert time.monotonic() - started < 20
    assert b"forcing exit" in stderr and b"stuck.py" in stderr  # the stuck frame is shown


async def test_close_within_lets_go_of_a_close_that_never_ends_or_ignores_cancellation(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def quick() -> None:
        await asyncio.sleep(0)

    async def silent_peer() -> None:
        await asyncio.Event().wait()

    released = asyncio.Event()

    async def stubborn() -> None:
        while not released.is_set():
            try:
                await released.wait()
            except asyncio.CancelledError:
                continue  # a close that swallows cancellation

    async def failing() -> None:
        raise ConnectionResetError("peer reset")

    assert await close_within(quick(), 1.0, "quick") is True
    started = time.monotonic()
    assert await close_within(silent_peer(), 0.2, "silent") is False
    assert await close_within(stubborn(), 0.2, "stubborn") is False
    assert time.monotonic() - started < 2
    assert await close_within(failing(), 1.0, "failing") is False
    messages = [r.getMessage() for r in caplog.records]
    assert any("closing silent took longer" in m for m in messages)
    assert any("closing failing failed" in m for m in messages)
    released.set()  # let the stubborn one end, so the test's loop can close
    await asyncio.sleep(0.05)


def test_the_readme_states_the_bound_the_server_keeps() -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    assert f"SHUTDOWN_GRACE_S + {SHUTDOWN_BOUND_S:g} s" in readme
