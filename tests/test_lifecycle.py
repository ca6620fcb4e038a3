"""The real `tokenwire serve` process: graceful shutdown on SIGTERM, and recovery after SIGKILL."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sqlite3
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import SECRET, Client, make_settings
from tokenwire.app import create_app
from tokenwire.auth import Authenticator
from tokenwire.config import load_settings
from tokenwire.server import GC_THRESHOLDS, GracefulServer, uvicorn_config
from tokenwire.testing import Script, UpstreamDouble, free_port


@asynccontextmanager
async def serve_process(
    upstream_url: str, db: Path, **env: str
) -> AsyncIterator[tuple[str, asyncio.subprocess.Process]]:
    port = free_port()
    environment = {
        **os.environ,
        "PORT": str(port),
        "DATABASE_URL": f"sqlite:///{db}",
        "OPENAI_BASE_URL": f"{upstream_url}/v1",
        "OPENAI_API_KEY": "sk-test",
        "JWT_SECRET": SECRET,
        "UPSTREAM_RETRIES": "0",
        "LOG_LEVEL": "WARNING",
        **env,
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tokenwire",
        "serve",
        env=environment,
        cwd=str(db.parent),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(300):
                try:
                    if (await http.get(f"{url}/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if process.returncode is not None:
                    raise RuntimeError(await process.stderr.read() if process.stderr else b"")
                await asyncio.sleep(0.05)
        yield url, process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


def token(user: str) -> str:
    return Authenticator(load_settings(jwt_secret=SECRET, _env_file=None)).issue(user)


def saved(db: Path, message_id: str) -> tuple[str, str]:
    with sqlite3.connect(db) as conn:
        row = conn.execute(
            "SELECT status, content FROM messages WHERE id = ?", (message_id,)
        ).fetchone()
    return row[0], row[1]


async def test_sigterm_finishes_short_replies_interrupts_long_ones_and_exits_0(
    upstream: tuple[UpstreamDouble, str], tmp_path: Path, client_factory: Any
) -> None:
    double, upstream_url = upstream
    db = tmp_path / "tw.db"
    async with serve_process(upstream_url, db, SHUTDOWN_GRACE_S="1.5") as (url, process):
        long_client: Client = client_factory()
        short_client: Client = client_factory()
        await long_client.connect(url, token("alice"))
        await short_client.connect(url, token("bob"))
        double.enqueue(Script(count=500, delay_s=0.02))
        long_ack = await long_client.call("chat:start", {"message": "long"})
        await long_client.wait_for("chat:message")
        double.enqueue(Script(count=5, delay_s=0.1))
        short_ack = await short_client.call("chat:start", {"message": "short"})
        await short_client.wait_for("chat:message")

        process.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        refused = await short_client.call("chat:start", {"message": "too late"})
        assert refused["ok"] is False and refused["error"]["code"] in ("BUSY", "SERVER_SHUTDOWN")

        end = (await short_client.wait_for("chat:end", timeout=10))[1]
        assert end["messageId"] == short_ack["messageId"]
        error = (await long_client.wait_for("chat:error", timeout=10))[1]
        assert error["code"] == "SERVER_SHUTDOWN"
        assert error["messageId"] == long_ack["messageId"]
        assert await asyncio.wait_for(process.wait(), 20) == 0

    assert saved(db, short_ack["messageId"]) == (
        "complete",
        "".join(f"token{i} " for i in range(5)),
    )
    status, content = saved(db, long_ack["messageId"])
    assert status == "interrupted"
    assert content == long_client.text() and content


async def test_sigkill_loses_at_most_one_checkpoint_and_restart_marks_interrupted(
    upstream: tuple[UpstreamDouble, str], tmp_path: Path, client_factory: Any
) -> None:
    double, upstream_url = upstream
    db = tmp_path / "tw.db"
    interval = 0.3
    async with serve_process(upstream_url, db, CHECKPOINT_INTERVAL_S=str(interval)) as (
        url,
        process,
    ):
        client: Client = client_factory()
        await client.connect(url, token("alice"))
        double.enqueue(Script(count=1000, delay_s=0.01))
        ack = await client.call("chat:start", {"message": "long"})
        await asyncio.sleep(1.5)
        process.kill()
        await process.wait()
        seen = client.text()

    status, content = saved(db, ack["messageId"])
    assert status == "streaming"
    assert seen.startswith(content)
    # Tokens arrive every 10 ms: one checkpoint interval is at most ~30 of them (plus slack).
    lost = len(seen[len(content) :].split())
    assert lost <= (interval / 0.01) * 2, (lost, len(seen.split()))

    await asyncio.sleep(3 * interval)
    async with serve_process(upstream_url, db, CHECKPOINT_INTERVAL_S=str(interval)):
        for _ in range(100):
            status, recovered = saved(db, ack["messageId"])
            if status != "streaming":
                break
            await asyncio.sleep(0.05)
    assert (status, recovered) == ("interrupted", content)


async def test_serving_freezes_start_up_and_raises_the_collector_thresholds(
    sqlite_url: str,
) -> None:
    # In-process, to read the collector's state: the GracefulServer that
    # `tokenwire serve` runs, started and stopped on a free port.
    settings = make_settings(database_url=sqlite_url, port=free_port(), host="127.0.0.1")
    app = create_app(settings)
    server = GracefulServer(uvicorn_config(app, settings, lifespan="off"), app)
    server.config.load()
    server.lifespan = server.config.lifespan_class(server.config)  # what `serve` sets up
    before = gc.get_threshold()
    try:
        await server.startup()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert GC_THRESHOLDS[0] > before[0] and GC_THRESHOLDS[2] > before[2]
        assert gc.get_freeze_count() > 10_000  # start-up's objects: never walked again
        await server.shutdown()
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
