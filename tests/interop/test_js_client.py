"""The official JavaScript socket.io-client v4 against the real server, over every transport.

Each test starts tokenwire on a free port, runs `client.mjs` (the pinned
socket.io-client from the root package.json) as a subprocess with one
scenario, and asserts on the JSON lines of everything the JS client saw. Each
scenario runs over WebSocket only (as the guide connects), over the client's
default (HTTP long-polling, then the upgrade to WebSocket) and over
long-polling only.

Without `node` or `npm ci` these tests skip with the reason; with
TOKENWIRE_REQUIRE_SERVICES=1 they fail instead.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Client, Gateway, GatewayFactory, skip_or_fail
from tokenwire.testing import Script

ROOT = Path(__file__).resolve().parents[2]
CLIENT = Path(__file__).with_name("client.mjs")
NODE = shutil.which("node")
CLIENT_TIMEOUT_S = 20
# See the `gateway_factory` below (uvicorn annotates it `int`, and waits with asyncio.wait_for).
SHUTDOWN_TIMEOUT_S = 0.25

pytestmark = pytest.mark.node

# (transports as the JS client is given them, the transport it must end up on)
TRANSPORTS = [
    pytest.param("websocket", "websocket", id="websocket"),
    pytest.param(None, "websocket", id="polling-then-upgrade"),
    pytest.param("polling", "polling", id="polling"),
]
transports = pytest.mark.parametrize(("transports", "settled"), TRANSPORTS)
SERVER_EVENTS = set(Client.EVENTS)


def _missing_node() -> str | None:
    """Why the JS client cannot run here, or None."""
    if NODE is None:
        return "node not found on PATH"
    installed = ROOT / "node_modules" / "socket.io-client" / "package.json"
    if not installed.is_file():
        return f"socket.io-client not installed in {installed.parent.parent} (run `npm ci`)"
    pinned = json.loads((ROOT / "package.json").read_text())["devDependencies"]["socket.io-client"]
    version = json.loads(installed.read_text())["version"]
    if version != pinned:
        return f"socket.io-client {version} installed, package.json pins {pinned} (run `npm ci`)"
    return None


@pytest.fixture(autouse=True)
def _require_node() -> None:
    """Skip (or, under CI, fail) when Node or the pinned socket.io-client is not installed."""
    reason = _missing_node()
    if reason is not None:
        skip_or_fail(reason)


@dataclass
class Run:
    """What one run of client.mjs printed: (event, data) in the order the JS client saw them."""

    events: list[tuple[str, Any]]
    returncode: int
    stderr: str

    def named(self, name: str) -> list[Any]:
        return [data for event, data in self.events if event == name]

    def one(self, name: str) -> Any:
        found = self.named(name)
        assert len(found) == 1, f"expected one {name!r}, got {found!r}\n{self}"
        return found[0]

    def ack(self, label: str) -> Any:
        return next(data["value"] for data in self.named("_ack") if data["for"] == label)

    def order(self) -> list[str]:
        """Server event names with consecutive chat:message collapsed."""
        names: list[str] = []
        for name, _ in self.events:
            if name not in SERVER_EVENTS:
                continue
            if not (name == "chat:message" and names and names[-1] == "chat:message"):
                names.append(name)
        return names

    def text(self) -> str:
        return "".join(chunk["content"] for chunk in self.named("chat:message"))

    def __str__(self) -> str:
        lines = "\n".join(
            json.dumps([event, data], ensure_ascii=False) for event, data in self.events
        )
        return f"exit {self.returncode}\n{lines}\nstderr:\n{self.stderr}"


async def run_client(
    scenario: str,
    url: str,
    *,
    token: str | None = None,
    fresh_token: str | None = None,
    transports: str | None = None,
    origin: str | None = None,
    user: str = "alice",
    message: str = "Say hello",
    retries: int | None = None,
    linger: bool = False,
    reconnect: bool = False,
    cut: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> Run:
    """Run one scenario of client.mjs against `url`; fails the test unless it ran to the end."""
    assert NODE is not None
    env = {k: v for k, v in os.environ.items() if not k.startswith("INTEROP_")}
    env.update(
        INTEROP_USER=user,
        INTEROP_MESSAGE=message,
        INTEROP_TIMEOUT_MS=str((CLIENT_TIMEOUT_S - 5) * 1000),
    )
    if linger:
        env["INTEROP_LINGER"] = "1"
    if reconnect:
        env["INTEROP_RECONNECT"] = "1"
    if cut is not None:
        env["INTEROP_CUT"] = cut
    env.update(extra_env or {})
    for key, value in {
        "INTEROP_TOKEN": token,
        "INTEROP_FRESH_TOKEN": fresh_token,
        "INTEROP_TRANSPORTS": transports,
        "INTEROP_ORIGIN": origin,
        "INTEROP_RETRIES": None if retries is None else str(retries),
    }.items():
        if value is not None:
            env[key] = value
    process = await asyncio.create_subprocess_exec(
        NODE,
        str(CLIENT),
        scenario,
        f"{url}/ai",
        cwd=ROOT,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), CLIENT_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.communicate()
        pytest.fail(f"client.mjs {scenario} still running after {CLIENT_TIMEOUT_S}s")
    events: list[tuple[str, Any]] = []
    for line in stdout.decode().splitlines():
        item = json.loads(line)
        events.append((item["event"], item["data"]))
    run = Run(events, process.returncode or 0, stderr.decode())
    names = [event for event, _ in events]
    assert run.returncode == 0 and "_done" in names and "_failed" not in names, str(run)
    return run


def utf16_len(text: str) -> int:
    """JavaScript's `String.length`."""
    return len(text.encode("utf-16-le")) // 2


def assert_offsets(chunks: list[dict[str, Any]]) -> None:
    """Each chunk's offset is the JS length of the text before it (chunks may be coalesced)."""
    texts = [chunk["content"] for chunk in chunks]
    expected = [utf16_len("".join(texts[:i])) for i in range(len(texts))]
    assert [chunk["offset"] for chunk in chunks] == expected, chunks


def assert_transport(run: Run, transports: str | None, settled: str) -> None:
    """Ended on `settled`; with the default transports, by one upgrade from polling.

    The upgrade may finish before the namespace connects, so `_connect` may
    already report WebSocket in that case.
    """
    assert run.one("_transport") == {"name": settled}
    upgrades = run.named("_upgrade")
    if transports is None:
        assert upgrades == [{"name": "websocket"}]
    else:
        assert upgrades == []
        assert {c["transport"] for c in run.named("_connect")} == {transports}


# --- 1. the guide's flow


@transports
async def test_guide_flow_streams_chunks_and_end(
    gateway: Gateway, transports: str | None, settled: str
) -> None:
    gateway.upstream.enqueue(Script(tokens=["Hel", "lo", " wor", "ld"]))
    run = await run_client("flow", gateway.url, token=gateway.token("alice"), transports=transports)

    assert run.order() == ["chat:conversation", "chat:user-message", "chat:message", "chat:end"]
    conversation_id = run.one("chat:conversation")["conversationId"]
    assert run.one("chat:user-message")["content"] == "Say hello"
    chunks = run.named("chat:message")
    end = run.one("chat:end")
    # A lagging socket gets tokens coalesced, so chunk boundaries may differ
    # from the tokens; the text and its offsets may not.
    assert run.text() == "Hello world"
    assert_offsets(chunks)
    assert run.one("_text") == {
        "text": "Hello world",
        "length": 11,
        "before": [c["offset"] for c in chunks],
    }
    assert all(c["isComplete"] is False for c in chunks)
    assert {c["messageId"] for c in chunks} == {end["messageId"]}
    assert {c["conversationId"] for c in chunks} == {conversation_id}
    assert end["conversationId"] == conversation_id
    assert isinstance(end["messageId"], str) and end["messageId"]
    assert end["content"] == "Hello world"
    assert end["model"] == "gpt-4"
    assert end["finishReason"] == "stop"
    assert end["totalTokens"] == end["promptTokens"] + end["completionTokens"]
    assert end["completionTokens"] == 4
    body = gateway.upstream.requests[-1].body
    assert (body["model"], body["max_tokens"], body["temperature"]) == ("gpt-4", 4096, 0.7)
    assert body["messages"][-1] == {"role": "user", "content": "Say hello"}
    assert_transport(run, transports, settled)


async def test_guide_retries_option_starts_one_reply(gateway: Gateway) -> None:
    """With `ackTimeout` + `retries` every emit wants an ack; chat:start is acked, never resent."""
    gateway.upstream.enqueue(Script(tokens=["once"]))
    run = await run_client(
        "flow", gateway.url, token=gateway.token("alice"), transports="websocket", retries=3
    )

    assert run.order() == ["chat:conversation", "chat:user-message", "chat:message", "chat:end"]
    assert run.one("chat:end")["content"] == "once"
    assert len(gateway.upstream.requests) == 1


# --- 2. acknowledgements


@transports
async def test_acks_answer_start_and_refuse_a_bad_payload(
    gateway: Gateway, transports: str | None, settled: str
) -> None:
    gateway.upstream.enqueue(Script(tokens=["ok"]))
    run = await run_client("acks", gateway.url, token=gateway.token("alice"), transports=transports)

    good = run.ack("start")
    end = run.one("chat:end")
    assert good == {
        "ok": True,
        "conversationId": end["conversationId"],
        "userMessageId": run.one("chat:user-message")["messageId"],
        "messageId": end["messageId"],
    }
    bad = run.ack("bad")
    assert bad["ok"] is False
    assert bad["error"]["code"] == "VALIDATION_ERROR"
    assert isinstance(bad["error"]["message"], str) and bad["error"]["message"]
    error = run.one("chat:error")
    assert error["code"] == "VALIDATION_ERROR"
    assert error["message"] == bad["error"]["message"]
    assert len(gateway.upstream.requests) == 1  # the bad payload never reached the model
    assert_transport(run, transports, settled)


# --- 3. stop


@transports
async def test_stop_ends_with_the_chunks_received_and_closes_upstream(
    gateway: Gateway, transports: str | None, settled: str
) -> None:
    gateway.upstream.enqueue(Script(count=200, delay_s=0.02))
    run = await run_client("stop", gateway.url, token=gateway.token("alice"), transports=transports)

    stopped = run.one("chat:stopped")
    ack = run.ack("stop")
    assert ack == {
        "ok": True,
        "stopped": True,
        "conversationId": stopped["conversationId"],
        "messageId": stopped["messageId"],
    }
    chunks = run.named("chat:message")
    assert chunks, "no chunk arrived before chat:stop"
    assert stopped["content"] == run.text()
    assert_offsets(chunks)
    assert run.order()[-1] == "chat:stopped"  # nothing followed it
    assert not run.named("chat:end")
    request = gateway.upstream.requests[-1]
    await asyncio.wait_for(request.finished.wait(), 5)
    assert request.closed_by_client
    assert len(request.sent) < 200
    assert_transport(run, transports, settled)


# --- 4. authentication, and the guide's refresh-and-reconnect


@transports
@pytest.mark.parametrize(
    ("case", "code"),
    [("no-token", "UNAUTHORIZED"), ("garbage", "UNAUTHORIZED"), ("expired", "TOKEN_EXPIRED")],
)
async def test_refused_connection_reports_code_then_fresh_token_reconnects(
    gateway: Gateway, case: str, code: str, transports: str | None, settled: str
) -> None:
    token = {
        "no-token": None,
        "garbage": "not-a-jwt",
        "expired": gateway.token("alice", ttl_s=-100),
    }[case]
    run = await run_client(
        "auth",
        gateway.url,
        token=token,
        fresh_token=gateway.token("alice"),
        transports=transports,
    )

    error = run.one("_connect_error")
    assert error["message"] == "unauthorized"
    assert error["data"]["code"] == code
    assert isinstance(error["data"]["message"], str)
    assert [e for e, _ in run.events if e in ("_connect_error", "_connect")] == [
        "_connect_error",
        "_connect",
    ]
    assert run.ack("stop") == {"ok": True, "stopped": False}
    if transports is not None:
        assert run.one("_connect")["transport"] == settled


# --- 5. CORS


@pytest.mark.parametrize("transports", ["polling", "websocket"])
@pytest.mark.parametrize(
    ("origin", "accepted"),
    [
        pytest.param("http://evil.example", False, id="foreign-origin"),
        pytest.param("http://localhost:5173", True, id="cors-origin"),
    ],
)
async def test_origin_is_checked_against_cors_origin(
    gateway: Gateway, origin: str, accepted: bool, transports: str
) -> None:
    run = await run_client(
        "connect", gateway.url, token=gateway.token("alice"), transports=transports, origin=origin
    )

    if accepted:
        assert run.named("_connect_error") == []
        assert run.one("_connect")["transport"] == transports
        assert run.ack("stop") == {"ok": True, "stopped": False}
    else:
        assert run.named("_connect") == []
        error = run.one("_connect_error")
        assert error["message"] in ("xhr poll error", "websocket error"), error
        if transports == "polling":
            assert error["description"] == 400


# --- 6. Unicode


@transports
async def test_offsets_count_utf16_units_like_js_string_length(
    gateway: Gateway, transports: str | None, settled: str
) -> None:
    tokens = ["a😀", "b", "é"]
    # Paced, so that a chunk boundary follows the emoji: tokens that arrive
    # before the turn is saved, or while the socket lags, go out coalesced.
    gateway.upstream.enqueue(Script(tokens=tokens, first_delay_s=0.3, delay_s=0.08))
    run = await run_client(
        "flow",
        gateway.url,
        token=gateway.token("alice"),
        transports=transports,
        message="héllo 😀 𝄞",
    )

    chunks = run.named("chat:message")
    seen = run.one("_text")
    assert seen["text"] == "a😀bé" == run.one("chat:end")["content"]
    assert seen["length"] == 5
    assert [c["offset"] for c in chunks] == seen["before"], str(run)
    assert_offsets(chunks)
    # A chunk starts after the emoji, where UTF-16 units and code points differ.
    assert len(chunks) >= 2, str(run)
    assert run.one("chat:user-message")["content"] == "héllo 😀 𝄞"
    assert_transport(run, transports, settled)


# --- a python-engineio gap, closed in wire.gateway.GatewayServer


async def test_polling_disconnect_answers_the_pending_poll(gateway_factory: GatewayFactory) -> None:
    """After `socket.disconnect()` over polling, the server lets go of the client at once.

    socket.io-client always keeps one GET long-poll open. The reference
    engine.io server answers it when the client's close packet arrives;
    python-engineio alone keeps it open until PING_INTERVAL + PING_TIMEOUT (45 s
    by default; 2 s here), so a Node client lingers and the server holds the
    request. `GatewayServer._handle_eio_disconnect` wakes the poll.
    """
    async with gateway_factory(ping_interval=1, ping_timeout=1) as gateway:
        gateway.upstream.enqueue(Script(tokens=["bye"]))
        run = await run_client(
            "flow", gateway.url, token=gateway.token("alice"), transports="polling", linger=True
        )
    assert run.one("_exit")["afterDoneMs"] < 500
