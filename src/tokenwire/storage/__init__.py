"""Storage: SQLAlchemy 2 models, the repository of queries, Alembic migrations."""

from tokenwire.storage.database import Database
from tokenwire.storage.models import MessageStatus
from tokenwire.storage.repository import FinishedReply, Repository, Turn

__all__ = ["Database", "FinishedReply", "MessageStatus", "Repository", "Turn"]
