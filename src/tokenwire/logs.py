"""Structured logs: one line per event, with the user, socket and conversation bound.

`bind(user_id=..., sid=...)` puts fields in a context variable for the code
running inside it (and the tasks it starts); a logging filter copies them onto
every record. Lines are JSON in production (for log shippers) and
`key=value` in development. Message text is never logged at INFO.
"""

from __future__ import annotations

import contextvars
import logging
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import orjson

__all__ = ["bind", "configure_logging"]

# An immutable mapping as the default: `bind` always replaces it, never mutates.
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "tokenwire_log_context", default=MappingProxyType({})
)

_FIELDS = (
    "sid",
    "user_id",
    "conversation_id",
    "message_id",
    "event",
    "model",
    "finish_reason",
    "completion_tokens",
)
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "color_message"}


@contextmanager
def bind(**fields: Any) -> Iterator[None]:
    merged = {**_context.get(), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in _context.get().items():
            if not hasattr(record, key):
                setattr(record, key, value)
        return True


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")
    }


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
            **_extras(record),
        }
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line, default=str).decode()


class _TextFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        extras = _extras(record)
        ordered = [k for k in _FIELDS if k in extras] + sorted(
            k for k in extras if k not in _FIELDS
        )
        tail = " ".join(f"{k}={extras[k]}" for k in ordered)
        time = datetime.fromtimestamp(record.created).strftime("%H:%M:%S")
        text = f"{time} {record.levelname:<7} {record.name}: {record.getMessage()}"
        if tail:
            text += f"  [{tail}]"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure_logging(level: str, *, json: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if json else _TextFormatter())
    handler.addFilter(_ContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Third-party chatter stays at WARNING unless we are debugging.
    for name in (
        "socketio",
        "engineio",
        "aiohttp",
        "httpcore",
        "sqlalchemy.engine",
        "alembic",
    ):
        logging.getLogger(name).setLevel(level if level == "DEBUG" else "WARNING")
