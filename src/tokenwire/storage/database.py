"""Where transactions run, and where database errors become `Unavailable`.

Every query goes through `Database.run(fn)`: `fn` is plain synchronous
SQLAlchemy code that gets a `Connection` already inside a transaction, which
commits when `fn` returns and rolls back when it raises. How the call reaches
the database depends on the backend:

- **SQLite** (`sqlite:///path`, or `sqlite+aiosqlite:///path` as before):
  the whole transaction runs in one of our threads on SQLAlchemy's own
  sqlite3 driver, so it costs one hand-off between the event loop and a
  thread. The aiosqlite adapter this replaced made about three per
  statement (cursor, execute, close), ~11 per turn, and they were the
  largest share of the gateway's database cost under load (bench B2).
  Writes run on a single thread: SQLite has one writer at a time, and
  queueing writes in-process costs nothing and never fails, where
  concurrent writers would each poll the busy handler and could time out
  as "database is locked". Reads (WAL) run on their own threads alongside.
- **PostgreSQL** (`postgresql+asyncpg://`): `fn` runs on the event loop
  through `AsyncConnection.run_sync`, SQLAlchemy's bridge for running sync
  code on an async driver: its statements are awaited, not blocking, and
  `fn` must do nothing else that blocks. Connections are checked before use
  so a restarted server is recovered from without a restart of ours.

A call whose task is cancelled stops waiting at once; on SQLite its
transaction still runs to its end (commit or rollback) in its thread, as
nothing can interrupt sqlite3 mid-statement safely.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event, make_url, text
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import StaticPool

from tokenwire.errors import Unavailable

__all__ = ["Database"]

T = TypeVar("T")

# What "the database is not there" looks like from each layer: SQLAlchemy's
# wrappers, and the OS errors asyncpg raises while connecting.
_OUTAGE = (OperationalError, InterfaceError, OSError, TimeoutError)

# SQLite reads (history loads, the REST API) that may run beside the writer;
# each holds one of the pool's connections while it runs.
_SQLITE_READERS = 3


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def _reset(dbapi_connection: Any, _record: Any, reset_state: Any) -> None:
    """Roll back a connection that comes back to the pool inside a transaction.

    SQLAlchemy's default reset sends ROLLBACK on every return, even after our
    transactions committed or rolled back (they always end in `engine.begin()`):
    one more round trip per transaction, 2% of the gateway's samples at B2.
    The safety stays for a connection returned mid-transaction (a cancelled
    task, say), which on SQLite would otherwise keep the write lock.
    """
    if reset_state.terminate_only:
        return  # the connection is being closed anyway
    driver = getattr(dbapi_connection, "driver_connection", None)
    in_transaction: Any = None
    if driver is not None:
        probe = getattr(driver, "in_transaction", None)  # sqlite3 (property)
        if probe is None:
            probe = getattr(driver, "is_in_transaction", None)  # asyncpg (method)
        in_transaction = probe() if callable(probe) else probe
    if in_transaction is False:
        return
    dbapi_connection.rollback()  # in a transaction, or a driver we cannot ask


def _is_memory(url: URL) -> bool:
    return url.database in (None, "", ":memory:") or url.query.get("mode") == "memory"


class Database:
    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url: URL = make_url(url)
        self.is_sqlite = self.url.get_backend_name() == "sqlite"
        self._async_engine: AsyncEngine | None = None
        self._writer: ThreadPoolExecutor | None = None
        self._reader: ThreadPoolExecutor | None = None
        # Reset on return is `_reset` above: ROLLBACK only when needed.
        if self.is_sqlite:
            # Any SQLite URL runs on the standard library's sqlite3 driver;
            # `+aiosqlite` (the old default) is accepted and means the same.
            self.url = self.url.set(drivername="sqlite+pysqlite")
            memory = _is_memory(self.url)
            self.engine: Engine = create_engine(
                self.url,
                echo=echo,
                pool_reset_on_return=None,
                # Our threads share pooled connections, one at a time each.
                connect_args={"timeout": 5, "check_same_thread": False},
                # An in-memory database lives in its one connection.
                **({"poolclass": StaticPool} if memory else {}),
            )
            event.listen(self.engine, "connect", _sqlite_pragmas)
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="tokenwire-db-write")
            # One connection means one thread: reads queue behind writes.
            self._reader = (
                self._writer
                if memory
                else ThreadPoolExecutor(_SQLITE_READERS, thread_name_prefix="tokenwire-db-read")
            )
        else:
            kwargs: dict[str, Any] = {
                "pool_pre_ping": True,
                "pool_size": 10,
                "max_overflow": 20,
                "pool_timeout": 5,
            }
            if self.url.drivername == "postgresql+asyncpg":
                kwargs["connect_args"] = {"timeout": 5, "command_timeout": 10}
            self._async_engine = create_async_engine(
                self.url, echo=echo, pool_reset_on_return=None, **kwargs
            )
            self.engine = self._async_engine.sync_engine
        event.listen(self.engine, "reset", _reset)

    async def run(self, fn: Callable[[Connection], T], *, write: bool = True) -> T:
        """`fn(connection)` in one transaction, committed when it returns.

        `write=False` lets SQLite run it beside the writer; it changes
        nothing on PostgreSQL. Outages raise `Unavailable`.
        """
        try:
            if self._async_engine is not None:
                async with self._async_engine.begin() as conn:
                    return await conn.run_sync(fn)
            executor = self._writer if write else self._reader
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(executor, self._transaction, fn)
        except _OUTAGE as exc:
            raise Unavailable() from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise Unavailable() from exc
            raise

    def _transaction(self, fn: Callable[[Connection], T]) -> T:
        with self.engine.begin() as conn:
            return fn(conn)

    def describe(self) -> str:
        """The URL without its password, for logs."""
        return self.url.render_as_string(hide_password=True)

    async def ping(self) -> bool:
        try:
            await self.run(lambda conn: conn.execute(text("SELECT 1")).scalar(), write=False)
        except Unavailable:
            return False
        return True

    async def dispose(self) -> None:
        if self._async_engine is not None:
            await self._async_engine.dispose()
            return
        await asyncio.to_thread(self._close_sqlite)

    def _close_sqlite(self) -> None:
        # Whatever is queued finishes first; then the connections close.
        for executor in {self._writer, self._reader}:
            if executor is not None:
                executor.shutdown(wait=True)
        self.engine.dispose()
