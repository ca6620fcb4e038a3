"""What tokenwire overrides in its libraries is checked at import; LEAN_ENGINE=false turns the lean layer off."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tomllib
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import engineio
import pytest
import socketio
import uvicorn.protocols.websockets.websockets_sansio_impl as sansio
from engineio.async_socket import AsyncSocket
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests.conftest import Client, GatewayFactory
from tokenwire import compat
from tokenwire.server import LeanWebSocketProtocol, uvicorn_config
from tokenwire.testing import Script
from tokenwire.wire.engine import GatewayEngine, LeanSocket

ROOT = Path(__file__).resolve().parent.parent


def test_every_part_tokenwire_overrides_fits_the_installed_libraries() -> None:
    for distribution in compat.RANGES:
        compat.verify(distribution)


def test_the_checked_ranges_are_the_ones_pyproject_declares() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {(req := Requirement(line)).name: req.specifier for line in project["dependencies"]}
    assert {name: declared[name] for name in compat.RANGES} == {
        name: SpecifierSet(spec) for name, spec in compat.RANGES.items()
    }
    # Each range has an upper bound, and the locked (newest tested) version is inside it.
    for name, spec in compat.RANGES.items():
        assert any(s.operator == "<" for s in SpecifierSet(spec)), name
        assert metadata.version(name) in SpecifierSet(spec), name


def _error(distribution: str) -> str:
    with pytest.raises(compat.IncompatibleDependency) as caught:
        compat.verify(distribution)
    return str(caught.value)


def test_a_method_that_changed_shape_stops_with_one_line_naming_the_versions_needed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # python-socketio 5.11's shape: engine.io's disconnect reason was not passed on.
    async def handle_eio_disconnect(self: Any, eio_sid: str) -> None: ...

    monkeypatch.setattr(
        socketio.async_server.AsyncServer, "_handle_eio_disconnect", handle_eio_disconnect
    )
    installed = metadata.version("python-socketio")
    assert _error("python-socketio") == (
        f"tokenwire needs python-socketio{compat.RANGES['python-socketio']} "
        f"(installed: {installed}): socketio.async_server.AsyncServer._handle_eio_disconnect "
        "takes (self, eio_sid) where tokenwire expects (self, eio_sid, reason)"
    )


def test_a_missing_method_attribute_or_module_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delattr(AsyncSocket, "schedule_ping")
    assert _error("python-engineio").endswith(
        "engineio.async_socket.AsyncSocket has no method schedule_ping"
    )
    monkeypatch.undo()

    class OldProtocol:  # uvicorn 0.52.0's shape: no `disconnected` flag yet
        def __init__(self, config: Any, server_state: Any, app_state: Any, _loop: Any = None):  # noqa: ARG002 - the shape checked
            self.queue = self.writable = self.conn = self.transport = None
            self.handshake_complete = self.close_sent = False
            self.initial_response = self.request = self.response = None

        def handle_connect(self, event: Any) -> None: ...

        async def send(self, message: Any) -> None: ...

    monkeypatch.setattr(sansio, "WebSocketsSansIOProtocol", OldProtocol)
    assert _error("uvicorn").endswith(
        "uvicorn.protocols.websockets.websockets_sansio_impl.WebSocketsSansIOProtocol "
        "has no attribute disconnected"
    )
    monkeypatch.undo()

    # uvicorn < 0.35 has no websockets-sansio protocol at all.
    monkeypatch.setitem(sys.modules, "uvicorn.protocols.websockets.websockets_sansio_impl", None)
    assert _error("uvicorn").endswith(
        "there is no module uvicorn.protocols.websockets.websockets_sansio_impl"
    )


def test_serve_with_a_library_of_the_wrong_shape_prints_one_line_and_exits_2(
    tmp_path: Path,
) -> None:
    breaks_engineio = (
        "import engineio.async_socket as s\n"
        "async def close(self, wait=True, abort=False): pass\n"  # python-engineio 4.10's shape
        "s.AsyncSocket.close = close\n"
        "from tokenwire.cli import main\n"
        "raise SystemExit(main(['serve', '--port', '0']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", breaks_engineio],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        f"tokenwire: tokenwire needs python-engineio{compat.RANGES['python-engineio']} "
        f"(installed: {metadata.version('python-engineio')}): "
        "engineio.async_socket.AsyncSocket.close takes (self, wait=, abort=) "
        "where tokenwire expects (self, wait=, abort=, reason=)"
    ]


# --- LEAN_ENGINE


async def _one_reply(gateway: Any, client: Client, transports: list[str]) -> None:
    gateway.upstream.enqueue(Script(tokens=["Hel", "lo"]))
    await client.connect(gateway.url, gateway.token("alice"), transports=transports)
    ack = await client.call("chat:start", {"message": "Hi"})
    assert ack["ok"] is True
    end = (await client.wait_for("chat:end"))[1]
    assert end["content"] == "Hello" == client.text()


@pytest.mark.parametrize("transports", [["websocket"], ["polling"]], ids=["websocket", "polling"])
async def test_lean_engine_false_streams_over_stock_engineio_sockets(
    gateway_factory: GatewayFactory,
    client_factory: Callable[[], Client],
    transports: list[str],
) -> None:
    async with gateway_factory(lean_engine=False) as gateway:
        assert type(gateway.app.sio.eio) is engineio.AsyncServer
        config = uvicorn_config(gateway.app, gateway.settings)
        assert config.ws == "websockets-sansio"  # uvicorn's own, as `tokenwire serve` runs it
        client = client_factory()
        await _one_reply(gateway, client, transports)
        (socket,) = gateway.app.sio.eio.sockets.values()
        assert type(socket) is AsyncSocket
        assert type(socket.queue) is asyncio.Queue


async def test_lean_engine_is_the_default(
    gateway_factory: GatewayFactory,
    client_factory: Callable[[], Client],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("LEAN_ENGINE", raising=False)  # `./dev check-stock` sets it
    async with gateway_factory() as gateway:
        assert gateway.settings.lean_engine is True
        assert type(gateway.app.sio.eio) is GatewayEngine
        assert uvicorn_config(gateway.app, gateway.settings).ws is LeanWebSocketProtocol
        client = client_factory()
        await _one_reply(gateway, client, ["websocket"])
        (socket,) = gateway.app.sio.eio.sockets.values()
        assert type(socket) is LeanSocket


def test_requirements_lowest_pins_every_direct_dependency_at_its_lower_bound() -> None:
    """What `./dev check-lowest` installs is the lowest pyproject allows (`./dev lowest-lock`)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = dict(
        line.split("==")
        for line in (ROOT / "requirements-lowest.txt").read_text().splitlines()
        if "==" in line and not line.startswith((" ", "#"))
    )
    for line in project["dependencies"]:
        req = Requirement(line)
        (lower,) = (s.version for s in req.specifier if s.operator == ">=")
        assert Version(pins[req.name]) == Version(lower), req.name
