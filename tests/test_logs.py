"""Structured logs: ids bound to every line, JSON in production, message text never at INFO."""

from __future__ import annotations

import logging

import orjson
import pytest

from tests.conftest import Client
from tokenwire.logs import _JsonFormatter, _TextFormatter, bind, configure_logging


async def test_a_turn_logs_ids_but_never_the_message_text(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="tokenwire")
    await client.emit("chat:start", {"message": "my secret diagnosis"})
    end = (await client.wait_for("chat:end"))[1]
    records = [r for r in caplog.records if r.name.startswith("tokenwire")]
    assert any(r.getMessage() == "reply started" for r in records)
    finished = next(r for r in records if r.getMessage() == "reply complete")
    assert finished.__dict__["message_id"] == end["messageId"]
    assert finished.__dict__["conversation_id"] == end["conversationId"]
    for record in caplog.records:
        assert "my secret diagnosis" not in record.getMessage()
        assert "token0" not in record.getMessage()


def test_formatters_carry_bound_fields() -> None:
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    configure_logging("INFO", json=True)
    try:
        handler = logging.getLogger().handlers[0]
        with bind(user_id="u1", sid="s1"):
            record = logging.LogRecord(
                "tokenwire.x", logging.INFO, __file__, 1, "hello %s", ("there",), None
            )
            assert handler.filter(record)
        line = orjson.loads(_JsonFormatter().format(record))
        assert line["msg"] == "hello there" and line["user_id"] == "u1" and line["sid"] == "s1"
        text = _TextFormatter().format(record)
        assert "hello there" in text and "sid=s1 user_id=u1" in text
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
