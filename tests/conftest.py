"""Fixtures: the real server on a free port, a real upstream double, real Socket.IO clients.

`gateway(**settings)` starts tokenwire (uvicorn, in this event loop) wired to
an `UpstreamDouble` that speaks OpenAI's SSE over real HTTP. Databases are
real too: SQLite in a temporary folder, and PostgreSQL / Redis whenever they
are reachable. Where they are not, those tests skip with the reason; with
TOKENWIRE_REQUIRE_SERVICES=1 (set by `.ci/run`) they fail instead, so CI
can never pass by skipping them.

With LEAN_ENGINE=false in the environment (`./dev check-stock`), every
Settings, and so every server the tests start, uses python-engineio's own
sockets and uvicorn's own WebSocket protocol; the tests listed in
`STOCK_ENGINE_EXCLUDED` look at the lean layer's own objects and are skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlparse

import pytest
import socketio
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from tokenwire.app import create_app
from tokenwire.auth import Authenticator
from tokenwire.config import Settings, load_settings
from tokenwire.testing import Script, UpstreamDouble, serve

POSTGRES_URL = os.environ.get(
    "TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE_SERVICES = os.environ.get("TOKENWIRE_REQUIRE_SERVICES") == "1"
SECRET = "test-secret-long-enough-for-every-hmac-algorithm-0123456789abcdef"


# Tests of what only the lean layer has, with the reason; skipped under LEAN_ENGINE=false.
# The fixes of python-socketio (docs/upstream-bugs.md 1, 2, 5) stay in that mode, and
# every test of them runs; the one of python-engineio (7) is the lean engine's.
_LEAN_OBJECTS = "asserts the lean layer's own objects (LeanSocket, its clock, its writer task)"
STOCK_ENGINE_EXCLUDED: dict[str, str] = {
    f"tests/test_idle_connections.py::{name}": _LEAN_OBJECTS
    for name in (
        "test_a_silent_websocket_is_dropped_after_ping_interval_plus_timeout",
        "test_a_client_stays_connected_across_heartbeats_on_every_transport",
        "test_an_idle_websocket_keeps_no_writer_and_one_clock_entry",
        "test_a_reply_on_an_open_websocket_is_written_without_a_writer_task",
        "test_a_direct_write_never_overtakes_a_queued_or_held_packet",
    )
}
for _name in (
    "test_a_long_poll_sent_again_is_answered_again",
    "test_a_long_poll_cut_while_it_waits_leaves_its_packets_to_the_retry",
):
    STOCK_ENGINE_EXCLUDED[f"tests/test_recovery.py::{_name}"] = (
        "the lean engine answers a retried long-poll again; stock python-engineio loses its "
        "packets (docs/upstream-bugs.md 7)"
    )


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if make_settings().lean_engine:
        return
    for item in items:
        reason = STOCK_ENGINE_EXCLUDED.get(item.nodeid.split("[")[0])
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=f"LEAN_ENGINE=false: {reason}"))


def _reachable(url: str, default_port: int) -> bool:
    parsed = urlparse(url.replace("+asyncpg", ""))
    try:
        with socket.create_connection(
            (parsed.hostname or "127.0.0.1", parsed.port or default_port), timeout=1
        ):
            return True
    except OSError:
        return False


def skip_or_fail(reason: str) -> NoReturn:
    """Skip with the reason; under TOKENWIRE_REQUIRE_SERVICES=1 (CI), fail instead."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{reason}, and TOKENWIRE_REQUIRE_SERVICES=1 forbids skipping", pytrace=False)
    pytest.skip(reason)


def require_service(name: str, url: str, port: int) -> None:
    """Skip (or, under CI, fail) when a service the test needs is not there."""
    if not _reachable(url, port):
        skip_or_fail(f"{name} not reachable at {url}")


async def reset_postgres(url: str) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.execute(
            text("DROP TABLE IF EXISTS messages, conversations, nodes, alembic_version CASCADE")
        )
    await engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
async def database_url(request: pytest.FixtureRequest, tmp_path: Any) -> AsyncIterator[str]:
    """A fresh, migrated-on-start database: SQLite, then PostgreSQL when reachable."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/tokenwire.db"
        return
    require_service("PostgreSQL", POSTGRES_URL, 5432)
    await reset_postgres(POSTGRES_URL)
    from tokenwire.storage import Database
    from tokenwire.storage.migrate import upgrade

    database = Database(POSTGRES_URL)
    await upgrade(database)
    await database.dispose()
    yield POSTGRES_URL


@pytest.fixture
def sqlite_url(tmp_path: Any) -> str:
    return f"sqlite:///{tmp_path}/tokenwire.db"


@pytest.fixture
async def upstream() -> AsyncIterator[tuple[UpstreamDouble, str]]:
    double = UpstreamDouble(Script(count=5))
    async with serve(double) as url:
        yield double, url


def make_settings(**overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "env": "development",
        "jwt_secret": SECRET,
        "llm_provider": "openai",
        "openai_api_key": "sk-test",
        "upstream_retries": 0,
        "log_level": "WARNING",
        "rate_limit_chat": "1000/minute",
        "connect_rate_per_ip": "1000/minute",
        "checkpoint_interval_s": 0.5,
        "shutdown_grace_s": 1,
        # One frame per token, so tests can assert exact chunks; coalescing
        # (the default) has its own tests.
        "stream_flush_ms": 0,
    }
    base.update(overrides)
    return load_settings(**base)


@dataclass
class Gateway:
    url: str
    settings: Settings
    upstream: UpstreamDouble
    app: Any

    def token(self, user_id: str = "alice", **claims: Any) -> str:
        ttl = claims.pop("ttl_s", 3600)
        return Authenticator(self.settings).issue(user_id, ttl_s=ttl, **claims)

    @property
    def services(self) -> Any:
        return self.app.services


GatewayFactory = Callable[..., AbstractAsyncContextManager[Gateway]]


@pytest.fixture
def gateway_factory(upstream: tuple[UpstreamDouble, str], sqlite_url: str) -> GatewayFactory:
    double, upstream_url = upstream

    @asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[Gateway]:
        overrides.setdefault("database_url", sqlite_url)
        overrides.setdefault("openai_base_url", f"{upstream_url}/v1")
        settings = make_settings(**overrides)
        app = create_app(settings)
        # As `tokenwire serve` (server.uvicorn_config): uvicorn's own protocol when not lean.
        ws = {} if settings.lean_engine else {"ws": "websockets-sansio"}
        async with serve(app, **ws) as url:
            yield Gateway(url, settings, double, app)

    return start


@pytest.fixture
async def gateway(gateway_factory: GatewayFactory) -> AsyncIterator[Gateway]:
    async with gateway_factory() as gw:
        yield gw


class Client:
    """A python-socketio client on /ai that records every event it receives, in order."""

    EVENTS = (
        "chat:conversation",
        "chat:user-message",
        "chat:message",
        "chat:end",
        "chat:error",
        "chat:stopped",
        "chat:reasoning",
        "chat:queued",
    )

    def __init__(self) -> None:
        self.sio = socketio.AsyncClient(reconnection=False)
        self.events: list[tuple[str, Any]] = []
        self._changed = asyncio.Condition()
        self.connect_error: Any = None
        self._refused = asyncio.Event()
        self._cursor = 0
        for name in self.EVENTS:
            self.sio.on(name, self._recorder(name), namespace="/ai")
        self.sio.on("connect_error", self._on_connect_error, namespace="/ai")

    def _recorder(self, name: str) -> Callable[[Any], Awaitable[None]]:
        async def record(data: Any = None, *_offset: Any) -> None:
            self.events.append((name, data))
            async with self._changed:
                self._changed.notify_all()

        return record

    async def _on_connect_error(self, data: Any = None) -> None:
        self.connect_error = data
        self._refused.set()

    async def connect(
        self, url: str, token: str | None = None, *, transports: list[str] | None = None, **kw: Any
    ) -> None:
        auth = {"token": token} if token is not None else None
        connecting = asyncio.ensure_future(
            self.sio.connect(
                url,
                namespaces=["/ai"],
                auth=auth,
                transports=transports or ["websocket"],
                wait_timeout=5,
                **kw,
            )
        )
        # python-socketio before 5.13 waits out wait_timeout after a refusal
        # (5 s per refused connection in `./dev check-lowest`); newer ones
        # return at once. A refusal ends the wait here on either.
        refused = asyncio.ensure_future(self._refused.wait())
        await asyncio.wait({connecting, refused}, return_when=asyncio.FIRST_COMPLETED)
        refused.cancel()
        if not connecting.done():
            # Until it ends: on Python 3.11 a cancel that lands as the wait's
            # event is set is lost (asyncio.wait_for), and 5.12 waits again.
            while not connecting.done():
                connecting.cancel()
                await asyncio.wait({connecting}, timeout=0.05)
            with contextlib.suppress(asyncio.CancelledError, socketio.exceptions.ConnectionError):
                connecting.result()
            await self.sio.disconnect()
            raise socketio.exceptions.ConnectionError("One or more namespaces failed to connect")
        connecting.result()

    async def emit(self, event: str, data: Any = None) -> None:
        if data is None:
            await self.sio.emit(event, namespace="/ai")
        else:
            await self.sio.emit(event, data, namespace="/ai")

    async def call(self, event: str, data: Any = None, timeout: float = 10) -> Any:
        args = () if data is None else (data,)
        return await self.sio.call(event, *args, namespace="/ai", timeout=timeout)

    async def wait_for(self, *names: str, timeout: float = 10) -> tuple[str, Any]:
        """The next event named one of `names`, after the one the previous wait returned."""

        async def find() -> tuple[str, Any]:
            async with self._changed:
                while True:
                    for index in range(self._cursor, len(self.events)):
                        if self.events[index][0] in names:
                            self._cursor = index + 1
                            return self.events[index]
                    await self._changed.wait()

        return await asyncio.wait_for(find(), timeout)

    def named(self, name: str) -> list[Any]:
        return [data for event, data in self.events if event == name]

    def text(self) -> str:
        return "".join(data["content"] for data in self.named("chat:message"))

    def order(self) -> list[str]:
        """Event names with consecutive chat:message collapsed, for asserting the sequence."""
        names: list[str] = []
        for name, _ in self.events:
            if not (name == "chat:message" and names and names[-1] == "chat:message"):
                names.append(name)
        return names

    async def disconnect(self) -> None:
        await self.sio.disconnect()

    async def close(self) -> None:
        await close_client(self.sio)


async def close_client(sio: socketio.AsyncClient) -> None:
    """Disconnect, and close the HTTP session a refused connect leaves open."""
    if sio.connected:
        await sio.disconnect()
    http = getattr(sio.eio, "http", None)
    if http is not None and not http.closed:
        await http.close()


@pytest.fixture
async def client_factory() -> AsyncIterator[Callable[[], Client]]:
    clients: list[Client] = []

    def make() -> Client:
        client = Client()
        clients.append(client)
        return client

    yield make
    for client in clients:
        await client.close()


@pytest.fixture
async def client(gateway: Gateway, client_factory: Callable[[], Client]) -> Client:
    c = client_factory()
    await c.connect(gateway.url, gateway.token("alice"))
    return c
