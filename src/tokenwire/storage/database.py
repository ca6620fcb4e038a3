"""The async engine and its sessions, and where database errors become `Unavailable`.

SQLite gets WAL, a busy timeout and foreign keys on every connection;
PostgreSQL connections are checked before use so a restarted server is
recovered from without a restart of ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from tokenwire.errors import Unavailable

__all__ = ["Database"]

log = logging.getLogger(__name__)

# What "the database is not there" looks like from each layer: SQLAlchemy's
# wrappers, and the OS errors asyncpg raises while connecting.
_OUTAGE = (OperationalError, InterfaceError, OSError, TimeoutError)


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
    transactions committed or rolled back (they always end in `engine.begin()`
    / `session.begin()`): one more round trip per transaction, 2% of the
    gateway's samples at B2 on SQLite. The safety stays for a connection
    returned mid-transaction (a cancelled task, say), which on SQLite would
    otherwise keep the write lock.
    """
    if reset_state.terminate_only:
        return  # the connection is being closed anyway
    driver = getattr(dbapi_connection, "driver_connection", None)
    in_transaction: Any = None
    if driver is not None:
        probe = getattr(driver, "in_transaction", None)  # aiosqlite (property)
        if probe is None:
            probe = getattr(driver, "is_in_transaction", None)  # asyncpg (method)
        in_transaction = probe() if callable(probe) else probe
    if in_transaction is False:
        return
    dbapi_connection.rollback()  # in a transaction, or a driver we cannot ask


class Database:
    def __init__(self, url: str, *, echo: bool = False) -> None:
        self.url = url
        kwargs: dict[str, Any] = {"echo": echo}
        if url.startswith("sqlite"):
            kwargs["connect_args"] = {"timeout": 5}
        else:
            kwargs.update(pool_pre_ping=True, pool_size=10, max_overflow=20, pool_timeout=5)
            if "+asyncpg" in url:
                kwargs["connect_args"] = {"timeout": 5, "command_timeout": 10}
        # Reset on return is `_reset` above: ROLLBACK only when needed.
        self.engine: AsyncEngine = create_async_engine(url, pool_reset_on_return=None, **kwargs)
        event.listen(self.engine.sync_engine, "reset", _reset)
        if url.startswith("sqlite"):
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # SQLite has one writer at a time. Many concurrent write transactions
        # would each poll its busy handler and, under load, time out as
        # "database is locked"; queueing them here instead costs nothing and
        # never fails. Reads (WAL) still run alongside.
        self._write_lock = asyncio.Lock() if url.startswith("sqlite") else None

    @asynccontextmanager
    async def session(self, *, write: bool = True) -> AsyncIterator[AsyncSession]:
        """An ORM session in a transaction, committed on success; outages raise `Unavailable`."""
        async with self._guarded(write) as stack:
            session = await stack.enter_async_context(self._sessions())
            await stack.enter_async_context(session.begin())
            yield session

    @asynccontextmanager
    async def connection(self, *, write: bool = True) -> AsyncIterator[AsyncConnection]:
        """A Core connection in a transaction: the cheap path for the per-turn statements."""
        async with self._guarded(write) as stack:
            yield await stack.enter_async_context(self.engine.begin())

    @asynccontextmanager
    async def _guarded(self, write: bool) -> AsyncIterator[contextlib.AsyncExitStack]:
        """SQLite's write queue, and outages translated to `Unavailable`, around a transaction."""
        try:
            async with contextlib.AsyncExitStack() as stack:
                if write and self._write_lock is not None:
                    await stack.enter_async_context(self._write_lock)
                yield stack
        except _OUTAGE as exc:
            raise Unavailable() from exc
        except DBAPIError as exc:
            if exc.connection_invalidated:
                raise Unavailable() from exc
            raise

    async def ping(self) -> bool:
        try:
            async with self.session(write=False) as session:
                await session.execute(text("SELECT 1"))
        except Unavailable:
            return False
        return True

    async def dispose(self) -> None:
        await self.engine.dispose()
