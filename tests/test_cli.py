"""The `tokenwire` command line: token, migrate, chat (with Ctrl-C), and serve's refusals."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import SECRET, Gateway
from tests.proxy import cutting_proxy
from tokenwire.auth import Authenticator
from tokenwire.config import load_settings
from tokenwire.testing import Script


async def _start(
    *args: str,
    env: dict[str, str] | None = None,
    cwd: Path | None = None,
    stdout: int = asyncio.subprocess.PIPE,
) -> asyncio.subprocess.Process:
    """`python -m tokenwire *args`, with the test's JWT secret, stderr piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tokenwire",
        *args,
        env={**os.environ, "JWT_SECRET": SECRET, **(env or {})},
        cwd=cwd,
        stdout=stdout,
        stderr=asyncio.subprocess.PIPE,
    )


async def _chat(
    url: str, token: str, *, stdout: int = asyncio.subprocess.PIPE
) -> asyncio.subprocess.Process:
    """`tokenwire chat "long please"` against `url`, as a running process."""
    return await _start("chat", "long please", "--url", url, "--token", token, stdout=stdout)


async def _run(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> tuple[int, str, str]:
    process = await _start(*args, env=env, cwd=cwd)
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_token_prints_a_verifiable_jwt() -> None:
    code, out, _ = await _run("token", "alice", "--ttl", "120", "--admin")
    assert code == 0
    principal = await Authenticator(load_settings(jwt_secret=SECRET, _env_file=None)).verify(
        out.strip()
    )
    assert principal.user_id == "alice" and principal.is_admin
    assert principal.claims["exp"] - principal.claims["iat"] == 120


async def test_migrate_creates_the_schema(tmp_path: Path) -> None:
    db = tmp_path / "m.db"
    code, out, _ = await _run("migrate", env={"DATABASE_URL": f"sqlite+aiosqlite:///{db}"})
    assert code == 0 and "up to date" in out
    import sqlite3

    with sqlite3.connect(db) as conn:
        tables = {
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")
        }
    assert {"conversations", "messages", "alembic_version"} <= tables


async def test_chat_streams_the_reply_and_reports_usage(gateway: Gateway) -> None:
    gateway.upstream.enqueue(Script(tokens=["Hi", " from", " the", " model"]))
    code, out, err = await _run(
        "chat", "hello", "--url", gateway.url, "--token", gateway.token("alice")
    )
    assert code == 0, err
    assert out == "Hi from the model"
    assert "stop" in err and "tokens" in err and "conversation" in err


async def test_chat_ctrl_c_stops_and_shows_what_was_kept(gateway: Gateway) -> None:
    gateway.upstream.enqueue(Script(count=500, delay_s=0.01))
    process = await _chat(gateway.url, gateway.token("alice"))
    assert process.stdout is not None
    first = await asyncio.wait_for(process.stdout.read(6), 30)
    assert first.startswith(b"token")
    process.send_signal(signal.SIGINT)
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 130
    assert "stopped" in err.decode() and "characters kept" in err.decode()
    request = gateway.upstream.requests[-1]
    await asyncio.wait_for(request.finished.wait(), 10)
    assert request.closed_by_client


async def test_chat_resumes_after_a_dropped_connection(gateway: Gateway) -> None:
    """The network drops mid-reply: `tokenwire chat` reconnects, resumes at its offset,
    and ends with exactly the saved reply on stdout."""
    gateway.upstream.enqueue(Script(tokens=[f"w{i}é👋 " for i in range(150)], delay_s=0.02))
    port = int(gateway.url.rsplit(":", 1)[1])
    async with cutting_proxy(port) as proxy:
        process = await _chat(proxy.url, gateway.token("alice"))
        assert process.stdout is not None
        first = await asyncio.wait_for(process.stdout.read(20), 30)
        assert proxy.cut() >= 1
        rest, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, err.decode()
    conversations, _ = await gateway.services.repository.list_conversations(
        "alice", limit=1, offset=0
    )
    saved = (await gateway.services.repository.list_messages("alice", conversations[0].id))[-1]
    assert saved.status == "complete"
    assert (first + rest).decode() == saved.content


async def test_chat_into_a_closed_pipe_exits_quietly_and_the_reply_is_saved(
    gateway: Gateway,
) -> None:
    """`tokenwire chat ... | head -c 20`: once the reader has gone, no traceback per chunk."""
    gateway.upstream.enqueue(Script(count=100, delay_s=0.01))
    read, write = os.pipe()
    process = await _chat(gateway.url, gateway.token("alice"), stdout=write)
    os.close(write)
    # What `head` takes before it exits (read in a thread: the gateway runs on this loop).
    assert await asyncio.wait_for(asyncio.to_thread(os.read, read, 20), 30)
    os.close(read)
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 128 + signal.SIGPIPE, err.decode()
    assert b"Traceback" not in err and b"BrokenPipe" not in err, err.decode()
    conversations, _ = await gateway.services.repository.list_conversations(
        "alice", limit=1, offset=0
    )
    saved = None
    for _ in range(100):
        saved = (await gateway.services.repository.list_messages("alice", conversations[0].id))[-1]
        if saved.status != "streaming":
            break
        await asyncio.sleep(0.1)
    assert saved is not None and saved.status == "complete" and "token99" in saved.content


async def test_chat_reports_an_unreachable_server() -> None:
    code, _, err = await _run("chat", "hi", "--url", "http://127.0.0.1:9", "--token", "x")
    assert code == 1 and "could not connect" in err


async def test_chat_shows_errors_in_words(gateway: Gateway) -> None:
    code, _, err = await _run(
        "chat", "hi", "--url", gateway.url, "--token", gateway.token(), "--model", "nope"
    )
    assert code == 1 and "INVALID_MODEL" in err


def test_version_and_help(capsys: pytest.CaptureFixture[str]) -> None:
    from tokenwire.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert "tokenwire" in capsys.readouterr().out


@pytest.mark.postgres
def test_serve_refuses_an_out_of_date_postgres_schema_with_a_clear_message(tmp_path: Any) -> None:
    """A PostgreSQL database that was never migrated: serve says to run `tokenwire migrate`."""
    import subprocess

    from tests.conftest import POSTGRES_URL, require_service

    require_service("PostgreSQL", POSTGRES_URL, 5432)
    asyncio.run(_drop_schema())
    result = subprocess.run(
        [sys.executable, "-m", "tokenwire", "serve", "--port", "0"],
        env={**os.environ, "DATABASE_URL": POSTGRES_URL, "JWT_SECRET": SECRET},
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert "tokenwire migrate" in result.stderr


async def _drop_schema() -> None:
    from tests.conftest import POSTGRES_URL, reset_postgres

    await reset_postgres(POSTGRES_URL)
