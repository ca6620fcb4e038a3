"""The private parts of python-engineio, python-socketio, uvicorn, websockets and limits that tokenwire extends.

`wire.engine`, `wire.gateway` and `server` subclass those libraries and
override methods that are not their public API, so a release may rename a
method or add a parameter without notice. pyproject.toml bounds each library
to the versions the suite runs against (`RANGES`), but an installer can still
be told to ignore that (`pip install --no-deps`, a forced upgrade, a vendored
copy). Each of those modules calls `verify(distribution)` when it is imported,
and a method whose parameters differ from what tokenwire's override expects,
or a module, class or attribute that is missing, stops the import with one
line naming the versions tokenwire needs:

    IncompatibleDependency: tokenwire needs python-socketio>=5.12,<5.19
    (installed: 5.11.4): socketio.async_server.AsyncServer._handle_eio_disconnect
    takes (self, eio_sid) where tokenwire expects (self, eio_sid, reason)

rather than a TypeError in the middle of a connection. Only shapes are
checked (parameter names and kinds, whether an attribute is set by the
library's code), not behaviour: that is what the suite, run with the lowest
and the locked versions (`./dev check-lowest`), is for. An installed version
outside `RANGES` whose shapes match is served: the ranges are what was
tested, the shapes are what would break at once.

Why at import and not in `tokenwire serve`: tests, `create_app` embedded in
another ASGI server, and `serve` all import these modules, and the import is
the first moment the subclasses exist; a check in `serve` alone would let
the others meet the TypeError.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from importlib import metadata
from typing import Any

__all__ = ["RANGES", "IncompatibleDependency", "verify"]

# The versions the suite runs against; pyproject.toml declares the same
# (tests/test_compat.py checks that they agree). Lower bounds: the oldest
# release whose shapes match and with which the suite passes
# (requirements-lowest.txt); upper bounds: below the next minor release.
RANGES = {
    "python-engineio": ">=4.13,<4.16",
    "python-socketio": ">=5.12,<5.19",
    "uvicorn": ">=0.52.1,<0.55",
    "websockets": ">=15,<18",
    "limits": ">=4.2,<5.9",
}


class IncompatibleDependency(ImportError):
    """An installed library lacks a part tokenwire overrides, in the shape it expects."""


@dataclass(frozen=True)
class _Method:
    """`owner.name` must take exactly these parameters (`*args`, `**kw`, `x=` with a default)."""

    owner: str  # "module:Class"
    name: str
    params: str


@dataclass(frozen=True)
class _Attribute:
    """The library's own code of `owner` (its class and bases) sets or reads `self.name`."""

    owner: str
    name: str


_ENGINE_SERVER = "engineio.async_server:AsyncServer"
_ENGINE_SOCKET = "engineio.async_socket:AsyncSocket"
_SIO_SERVER = "socketio.async_server:AsyncServer"
_SIO_MANAGER = "socketio.base_manager:BaseManager"
_SIO_REDIS = "socketio.async_redis_manager:AsyncRedisManager"
_UVICORN_SERVER = "uvicorn.server:Server"
_UVICORN_WS = "uvicorn.protocols.websockets.websockets_sansio_impl:WebSocketsSansIOProtocol"
_WS_PROTOCOL = "websockets.protocol:Protocol"

_PARTS: dict[str, tuple[_Method | _Attribute, ...]] = {
    # wire.engine: GatewayEngine, LeanSocket (and the connect hook that swaps its class in).
    "python-engineio": (
        _Method(_ENGINE_SERVER, "_trigger_event", "self, event, *args, **kwargs"),
        _Method(_ENGINE_SERVER, "create_queue", "self, *args, **kwargs"),
        _Method(_ENGINE_SERVER, "handle_request", "self, *args, **kwargs"),
        _Attribute(_ENGINE_SERVER, "_async"),
        _Attribute(_ENGINE_SERVER, "sockets"),
        _Attribute(_ENGINE_SERVER, "reason"),
        _Method("engineio.async_drivers.asgi:", "translate_request", "scope, receive, send"),
        _Method(_ENGINE_SOCKET, "poll", "self"),
        _Method(_ENGINE_SOCKET, "receive", "self, pkt"),
        _Method(_ENGINE_SOCKET, "send", "self, pkt"),
        _Method(_ENGINE_SOCKET, "check_ping_timeout", "self"),
        _Method(_ENGINE_SOCKET, "close", "self, wait=, abort=, reason="),
        _Method(_ENGINE_SOCKET, "schedule_ping", "self"),
        _Method(_ENGINE_SOCKET, "handle_get_request", "self, environ"),
        _Method(_ENGINE_SOCKET, "_upgrade_websocket", "self, environ"),
        _Method(_ENGINE_SOCKET, "_websocket_handler", "self, ws"),
        *(
            _Attribute(_ENGINE_SOCKET, name)
            for name in (
                "queue",
                "last_ping",
                "connected",
                "upgrading",
                "upgraded",
                "closing",
                "closed",
            )
        ),
    ),
    # wire.gateway: GatewayServer; app: the drain and the Redis manager's close.
    "python-socketio": (
        _Method(_SIO_SERVER, "_engineio_server_class", "self"),
        _Method(_SIO_SERVER, "handle_request", "self, *args, **kwargs"),
        _Method(_SIO_SERVER, "_handle_eio_disconnect", "self, eio_sid, reason"),
        _Method(_SIO_SERVER, "_handle_event", "self, eio_sid, namespace, id, data"),
        _Method(
            _SIO_SERVER,
            "_handle_event_internal",
            "self, server, sid, eio_sid, data, namespace, id",
        ),
        _Method(_SIO_SERVER, "_handle_eio_message", "self, eio_sid, data"),
        _Method(_SIO_SERVER, "_send_packet", "self, eio_sid, pkt"),
        _Attribute(_SIO_SERVER, "reserved_events"),
        _Attribute(_SIO_SERVER, "packet_class"),
        _Attribute(_SIO_SERVER, "environ"),
        _Method(_SIO_SERVER, "shutdown", "self"),
        # wire.recovery: RecoveringServer (connection state recovery).
        _Method(_SIO_SERVER, "_handle_connect", "self, eio_sid, namespace, data"),
        _Method(_SIO_SERVER, "_send_eio_packet", "self, eio_sid, eio_pkt"),
        _Method(_SIO_SERVER, "_handle_disconnect", "self, eio_sid, namespace, reason="),
        _Method(
            _SIO_SERVER,
            "emit",
            "self, event, data=, to=, room=, skip_sid=, namespace=, callback=, ignore_queue=",
        ),
        _Attribute(_SIO_SERVER, "namespace_handlers"),
        _Method(_SIO_MANAGER, "basic_enter_room", "self, sid, namespace, room, eio_sid="),
        _Method(_SIO_MANAGER, "pre_disconnect", "self, sid, namespace"),
        _Method(_SIO_MANAGER, "get_rooms", "self, sid, namespace"),
        _Method(
            "socketio.async_manager:AsyncManager", "disconnect", "self, sid, namespace, **kwargs"
        ),
        _Method("socketio.async_namespace:AsyncNamespace", "trigger_event", "self, event, *args"),
        _Method(_SIO_MANAGER, "sid_from_eio_sid", "self, eio_sid, namespace"),
        _Method(_SIO_MANAGER, "eio_sid_from_sid", "self, sid, namespace"),
        _Method(_SIO_MANAGER, "is_connected", "self, sid, namespace"),
        _Attribute(_SIO_REDIS, "thread"),
        _Attribute(_SIO_REDIS, "pubsub"),
        _Attribute(_SIO_REDIS, "redis"),
    ),
    # server: GracefulServer (and its drop of stalled connections) and LeanWebSocketProtocol.
    "uvicorn": (
        _Method(_UVICORN_SERVER, "handle_exit", "self, sig, frame"),
        _Method(_UVICORN_SERVER, "startup", "self, sockets="),
        _Method(_UVICORN_SERVER, "shutdown", "self, sockets="),
        *(
            _Attribute(_UVICORN_SERVER, name)
            for name in ("servers", "server_state", "started", "should_exit", "force_exit")
        ),
        _Method(_UVICORN_WS, "__init__", "self, config, server_state, app_state, _loop="),
        _Method(_UVICORN_WS, "handle_connect", "self, event"),
        _Method(_UVICORN_WS, "send", "self, message"),
        *(
            _Attribute(_UVICORN_WS, name)
            for name in (
                "queue",
                "writable",
                "conn",
                "transport",
                "handshake_complete",
                "close_sent",
                "disconnected",
                "initial_response",
                "request",
                "response",
            )
        ),
    ),
    # chat.limits.SweepingMemoryStorage overrides the in-memory storage's expiry scheduling.
    "limits": (
        _Method(
            "limits.aio.storage.memory:MemoryStorage", "_MemoryStorage__schedule_expiry", "self"
        ),
    ),
    # server.LeanWebSocketProtocol.send_text_nowait writes through uvicorn's connection object.
    "websockets": (
        _Method(_WS_PROTOCOL, "send_text", "self, data, fin="),
        _Method(_WS_PROTOCOL, "data_to_send", "self"),
        # ...or frames a text message itself when none of these is in the way.
        *(
            _Attribute(_WS_PROTOCOL, name)
            for name in ("state", "extensions", "writes", "expect_continuation_frame")
        ),
        _Attribute("websockets.protocol:State", "OPEN"),
        _Attribute("websockets.exceptions:InvalidState", "__init__"),
        _Attribute("websockets.http11:Request", "headers"),
    ),
}


def verify(distribution: str) -> None:
    """Raise `IncompatibleDependency` unless every part tokenwire overrides in `distribution` fits."""
    for part in _PARTS[distribution]:
        problem = _problem(part)
        if problem is not None:
            try:
                installed = metadata.version(distribution)
            except metadata.PackageNotFoundError:
                installed = "not installed"
            raise IncompatibleDependency(
                f"tokenwire needs {distribution}{RANGES[distribution]} "
                f"(installed: {installed}): {problem}"
            )


def _problem(part: _Method | _Attribute) -> str | None:
    module_name, _, class_name = part.owner.partition(":")
    where = f"{module_name}.{class_name}" if class_name else module_name
    try:
        owner: Any = importlib.import_module(module_name)
    except ImportError:
        return f"there is no module {module_name}"
    if class_name:
        owner = getattr(owner, class_name, None)
        if not isinstance(owner, type):
            return f"there is no class {where}"
    if isinstance(part, _Attribute):
        if _mentions(owner, part.name):
            return None
        return f"{where} has no attribute {part.name}"
    function = getattr(owner, part.name, None)
    if not callable(function):
        return f"{where} has no method {part.name}"
    found = _params(function)
    if found != part.params:
        return f"{where}.{part.name} takes ({found}) where tokenwire expects ({part.params})"
    return None


def _params(function: Any) -> str:
    """Parameter names and kinds, as `_Method.params` spells them (annotations and defaults' values aside)."""
    shown = []
    for param in inspect.signature(function).parameters.values():
        if param.kind is param.VAR_POSITIONAL:
            shown.append(f"*{param.name}")
        elif param.kind is param.VAR_KEYWORD:
            shown.append(f"**{param.name}")
        elif param.default is not param.empty:
            shown.append(f"{param.name}=")
        else:
            shown.append(param.name)
    return ", ".join(shown)


def _mentions(cls: type, name: str) -> bool:
    """Whether `cls` has `name`, or code of `cls` or a base (not `object`) uses `self.name`.

    Instance attributes exist only once an object is built; the names a
    class's functions read or assign are in their code objects.
    """
    if name in dir(cls):
        return True
    for klass in cls.__mro__[:-1]:
        for value in vars(klass).values():
            code = getattr(getattr(value, "__func__", value), "__code__", None)
            if code is not None and name in _names(code):
                return True
    return False


def _names(code: Any) -> set[str]:
    names = set(code.co_names)
    for const in code.co_consts:
        if inspect.iscode(const):  # nested functions: engine.io sets some state in closures
            names |= _names(const)
    return names
