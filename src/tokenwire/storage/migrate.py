"""Alembic, driven from code: `tokenwire migrate`, and `serve` on SQLite.

The migration scripts live in `storage/migrations`, inside the package, so an
installed wheel can migrate its own database. `alembic.ini` at the repository
root points at the same folder for developers writing new revisions.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

from tokenwire.storage.database import Database

__all__ = ["is_current", "upgrade"]

_SCRIPTS = Path(__file__).with_name("migrations")


def _config(connection: Connection) -> Config:
    config = Config()
    config.set_main_option("script_location", str(_SCRIPTS))
    config.attributes["connection"] = connection
    return config


async def upgrade(database: Database, revision: str = "head") -> None:
    def run(connection: Connection) -> None:
        command.upgrade(_config(connection), revision)

    await database.run(run)


async def is_current(database: Database) -> bool:
    def check(connection: Connection) -> bool:
        script = ScriptDirectory.from_config(_config(connection))
        current = MigrationContext.configure(connection).get_current_heads()
        return set(current) == set(script.get_heads())

    return await database.run(check, write=False)
