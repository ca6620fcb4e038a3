"""Persistence on every backend: SQLite always, PostgreSQL whenever it is reachable.

Also: a database outage answers UNAVAILABLE, keeps every socket working, and
heals by itself when the database returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from typing import Any

import httpx
import pytest
from sqlalchemy import Connection, text

from tests.conftest import POSTGRES_URL, GatewayFactory, require_service, reset_postgres
from tokenwire.storage import Database
from tokenwire.storage.migrate import is_current, upgrade
from tokenwire.testing import Script


async def test_every_ending_is_saved_with_its_status(
    gateway_factory: GatewayFactory, client_factory: Any, database_url: str
) -> None:
    async with gateway_factory(database_url=database_url) as gw:
        c = client_factory()
        await c.connect(gw.url, gw.token("alice"))
        gw.upstream.enqueue(Script(tokens=["Hi", " there"]))
        await c.emit(
            "chat:start", {"message": "Robert'); DROP TABLE messages;-- <script>x</script>"}
        )
        complete = (await c.wait_for("chat:end"))[1]
        conversation = complete["conversationId"]

        gw.upstream.enqueue(Script(count=300, delay_s=0.01))
        await c.emit("chat:start", {"message": "long", "conversationId": conversation})
        await c.wait_for("chat:message")
        await c.call("chat:stop")
        stopped = (await c.wait_for("chat:stopped"))[1]

        gw.upstream.enqueue(Script(count=10, drop_after=3))
        await c.emit("chat:start", {"message": "fails", "conversationId": conversation})
        failed = (await c.wait_for("chat:error"))[1]

        gw.upstream.enqueue(Script(tokens=["ok"]))
        await c.emit("chat:start", {"message": "after", "conversationId": conversation})
        await c.wait_for("chat:end")
        # The stopped and failed replies were part of the history sent upstream, as saved.
        assert {"role": "assistant", "content": stopped["content"]} in gw.upstream.requests[
            -1
        ].messages
        assert {"role": "assistant", "content": "token0 token1 token2 "} in gw.upstream.requests[
            -1
        ].messages

        messages = await gw.services.repository.list_messages("alice", conversation)
        assert [(m.role, m.status) for m in messages] == [
            ("user", "complete"),
            ("assistant", "complete"),
            ("user", "complete"),
            ("assistant", "stopped"),
            ("user", "complete"),
            ("assistant", "error"),
            ("user", "complete"),
            ("assistant", "complete"),
        ]
        # SQL- and HTML-looking text is stored and returned verbatim.
        assert messages[0].content == "Robert'); DROP TABLE messages;-- <script>x</script>"
        assert messages[1].content == "Hi there" and messages[1].created_at.tzinfo is not None
        assert messages[3].content == stopped["content"]
        assert (
            messages[5].id == failed["messageId"] and messages[5].content == "token0 token1 token2 "
        )
        headers = {"Authorization": f"Bearer {gw.token('alice')}"}
        async with httpx.AsyncClient(base_url=gw.url, headers=headers) as http:
            listed = (await http.get(f"/api/conversations/{conversation}/messages")).json()
            assert listed[0]["content"] == messages[0].content
            assert listed[3]["status"] == "stopped"


async def test_migrations_apply_once_and_report_current(database_url: str) -> None:
    database = Database(database_url)
    try:
        await upgrade(database)  # already at head: a no-op
        assert await is_current(database)
    finally:
        await database.dispose()


class _Proxy:
    """A TCP proxy to PostgreSQL that the test can cut and restore: a database outage on demand."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.server: asyncio.Server | None = None
        self.port = 0
        self.pipes: set[asyncio.Task[None]] = set()
        self.writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        for writer in list(self.writers):
            writer.close()
        for task in list(self.pipes):
            task.cancel()
        await asyncio.gather(*self.pipes, return_exceptions=True)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self.writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        for task in (
            asyncio.create_task(pipe(reader, up_writer)),
            asyncio.create_task(pipe(up_reader, writer)),
        ):
            self.pipes.add(task)
            task.add_done_callback(self.pipes.discard)


@pytest.mark.postgres
async def test_database_outage_answers_unavailable_and_heals(
    gateway_factory: GatewayFactory, client_factory: Any
) -> None:
    require_service("PostgreSQL", POSTGRES_URL, 5432)
    await reset_postgres(POSTGRES_URL)
    database = Database(POSTGRES_URL)
    await upgrade(database)
    await database.dispose()
    proxy = _Proxy(5432)
    await proxy.start()
    url = POSTGRES_URL.replace("127.0.0.1:5432", f"127.0.0.1:{proxy.port}")
    async with gateway_factory(database_url=url) as gw:
        alice, bob = client_factory(), client_factory()
        await alice.connect(gw.url, gw.token("alice"))
        await bob.connect(gw.url, gw.token("bob"))
        assert (await alice.call("chat:start", {"message": "before"}))["ok"]
        await alice.wait_for("chat:end")

        await proxy.cut()
        refused = await alice.call("chat:start", {"message": "during"})
        assert refused["error"]["code"] == "UNAVAILABLE"
        error = (await alice.wait_for("chat:error"))[1]
        assert error["code"] == "UNAVAILABLE"
        # The turn was announced before the write failed (the first token
        # does not wait on the database); the error names the reply that
        # ended, and no chat:end follows.
        announced = [p for e, p in alice.events if e == "chat:user-message"][-1]
        assert announced["content"] == "during"
        assert error["conversationId"] == announced["conversationId"]
        assert error["messageId"] not in {
            p.get("messageId") for e, p in alice.events if e == "chat:end"
        }
        async with httpx.AsyncClient(base_url=gw.url) as http:
            assert (await http.get("/readyz")).status_code == 503
            assert (await http.get("/healthz")).status_code == 200
        # Sockets stay up and keep answering.
        assert alice.sio.connected and bob.sio.connected
        assert (await bob.call("chat:stop")) == {"ok": True, "stopped": False}

        await proxy.start()  # the database is back, on the same port
        for _ in range(50):
            ack = await alice.call("chat:start", {"message": "after"})
            if ack["ok"]:
                break
            await asyncio.sleep(0.2)
        assert ack["ok"], ack
        await alice.wait_for("chat:end")
        headers = {"Authorization": f"Bearer {gw.token('alice')}"}
        async with httpx.AsyncClient(base_url=gw.url, headers=headers) as http:
            assert (await http.get("/readyz")).status_code == 200
            # Nothing of the failed turn was stored.
            lost = f"/api/conversations/{error['conversationId']}/messages"
            assert (await http.get(lost)).status_code == 404
    await proxy.cut()


async def test_a_connection_returned_mid_transaction_is_rolled_back(sqlite_url: str) -> None:
    """The pool skips ROLLBACK after our transactions end, but not for one left open."""
    database = Database(sqlite_url)
    try:
        await database.run(lambda conn: conn.execute(text("CREATE TABLE scratch (x INTEGER)")))
        pooled = database.engine.raw_connection()
        driver = pooled.driver_connection
        assert isinstance(driver, sqlite3.Connection)
        driver.execute("BEGIN")  # behind SQLAlchemy's back: it cannot end this one
        driver.execute("INSERT INTO scratch VALUES (1)")
        assert driver.in_transaction
        pooled.close()  # back to the pool
        assert not driver.in_transaction  # the reset rolled it back; the write lock is free
        count = await database.run(
            lambda conn: conn.execute(text("SELECT count(*) FROM scratch")).scalar()
        )
        assert count == 0
    finally:
        await database.dispose()


async def test_sqlite_runs_each_transaction_whole_in_one_thread_hop(sqlite_url: str) -> None:
    """A transaction is one hand-off: its statements share one connection and commit together."""
    database = Database(sqlite_url)
    loop_thread = threading.get_ident()
    try:

        def write(conn: Connection) -> tuple[int, int]:
            conn.execute(text("CREATE TABLE scratch (x INTEGER)"))
            conn.execute(text("INSERT INTO scratch VALUES (1), (2)"))
            return threading.get_ident(), conn.execute(
                text("SELECT count(*) FROM scratch")
            ).scalar_one()

        thread, seen = await database.run(write)
        assert thread != loop_thread and seen == 2

        def fail(conn: Connection) -> None:
            conn.execute(text("INSERT INTO scratch VALUES (3)"))
            raise LookupError("rolled back")

        with pytest.raises(LookupError):
            await database.run(fail)
        count = await database.run(
            lambda conn: conn.execute(text("SELECT count(*) FROM scratch")).scalar_one(),
            write=False,
        )
        assert count == 2  # the failed transaction left nothing behind
    finally:
        await database.dispose()


async def test_sqlite_memory_database_is_one_database_for_every_call() -> None:
    """`sqlite://` (in memory) must not become one database per thread."""
    database = Database("sqlite://")
    try:
        await upgrade(database)
        assert await is_current(database)  # a read: it sees what the write created
    finally:
        await database.dispose()


async def test_aiosqlite_urls_still_work(tmp_path: Any) -> None:
    """The default used to be `sqlite+aiosqlite://`; existing settings keep working."""
    database = Database(f"sqlite+aiosqlite:///{tmp_path}/old.db")
    try:
        assert database.is_sqlite and database.url.drivername == "sqlite+pysqlite"
        assert await database.ping()
    finally:
        await database.dispose()


async def test_replies_growing_together_are_all_checkpointed(
    gateway_factory: GatewayFactory, database_url: str, client_factory: Any
) -> None:
    # One checkpoint statement runs for every reply that grew (executemany);
    # an IN list in it made SQLAlchemy refuse the whole checkpoint as soon as
    # two replies grew in one interval, and crash recovery saved nothing.
    async with gateway_factory(database_url=database_url) as gateway:
        clients = [client_factory() for _ in range(3)]
        acks = []
        for i, client in enumerate(clients):
            await client.connect(gateway.url, gateway.token(f"user{i}"))
            gateway.upstream.enqueue(Script(count=400, delay_s=0.01))
            acks.append(await client.call("chat:start", {"message": f"long {i}"}))
        await asyncio.sleep(3 * gateway.settings.checkpoint_interval_s)
        saved = [
            await gateway.services.repository.get_reply(f"user{i}", ack["messageId"])
            for i, ack in enumerate(acks)
        ]
        assert [m.status for m in saved] == ["streaming"] * 3
        assert all(m.content.startswith("token0 token1 ") for m in saved), saved
        for client in clients:
            await client.call("chat:stop")
