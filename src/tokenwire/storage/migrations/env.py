"""Alembic environment: runs on the connection `tokenwire.storage.migrate` hands over.

Run from the command line (`alembic revision --autogenerate`), it builds its
own engine from DATABASE_URL instead.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from tokenwire.storage.models import Base

target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()


def _run_standalone() -> None:
    from tokenwire.config import load_settings
    from tokenwire.storage.database import Database

    async def main() -> None:
        database = Database(load_settings().database_url)
        try:
            await database.run(_run)
        finally:
            await database.dispose()

    asyncio.run(main())


connection = context.config.attributes.get("connection")
if connection is not None:
    _run(connection)
else:
    _run_standalone()
