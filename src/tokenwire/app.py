"""`create_app(settings)`: the ASGI application, Socket.IO in front of FastAPI.

    socketio.ASGIApp
    ├── /socket.io/   the Socket.IO server, namespace /ai   (wire.gateway)
    └── everything else -> FastAPI                          (api.*)
                            lifespan owns Services: database, HTTP client, chat service

Nothing connects at import time or in `create_app`; the lifespan builds the
services and closes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

import socketio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.middleware.cors import CORSMiddleware

from tokenwire import __version__
from tokenwire.api import conversations, dev, health, monitoring, web
from tokenwire.closing import CLOSE_RESOURCE_S, close_within
from tokenwire.config import Settings
from tokenwire.errors import TokenwireError
from tokenwire.services import Services
from tokenwire.wire.admin import AdminNamespace
from tokenwire.wire.codec import OrjsonCodec
from tokenwire.wire.gateway import NAMESPACE, AiNamespace, GatewayServer, Runtime
from tokenwire.wire.recovery import MemorySessionStore

__all__ = ["DISCONNECT_CLIENTS_S", "TokenwireApp", "create_app"]

# On shutdown, how long clients get to receive engine.io's CLOSE before their
# sockets are dropped: a healthy client takes a round trip; a polling session
# nobody polls, or a WebSocket whose client stopped reading, never would.
DISCONNECT_CLIENTS_S = 1.0

ASGIReceive = Callable[[], Awaitable[MutableMapping[str, Any]]]
ASGISend = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class TokenwireApp:
    """The ASGI app, with handles on its parts for the server runner and tests."""

    def __init__(
        self, asgi: Any, api: FastAPI, sio: Any, namespace: AiNamespace, settings: Settings
    ) -> None:
        self._asgi = asgi
        self.api = api
        self.sio = sio
        self.namespace = namespace
        self.settings = settings

    async def __call__(
        self, scope: MutableMapping[str, Any], receive: ASGIReceive, send: ASGISend
    ) -> None:
        await self._asgi(scope, receive, send)

    @property
    def services(self) -> Services:
        services: Services = self.api.state.services
        return services

    async def drain(self) -> None:
        """Finish or interrupt running replies, then disconnect every client (see `server`).

        Bounded whatever the clients do: SHUTDOWN_GRACE_S for the replies,
        then `chat.service.INTERRUPT_SAVE_S` to save the rest, then
        DISCONNECT_CLIENTS_S for the clients.
        """
        services = getattr(self.api.state, "services", None)
        if services is not None:
            await services.chat.shutdown(self.settings.shutdown_grace_s)
        await self.sio.disconnect_all(DISCONNECT_CLIENTS_S)
        # engine.io's service task (its ping-timeout sweep) ends with the server.
        await close_within(self.sio.shutdown(), CLOSE_RESOURCE_S, "the Socket.IO server")


def _origin_check(settings: Settings) -> Callable[[str | None, dict[str, Any]], bool]:
    """CORS_ORIGIN, plus the server's own origin (the built-in web page is always allowed)."""
    allowed = frozenset(o.rstrip("/") for o in settings.cors_origin)
    allow_all = "*" in allowed

    def check(origin: str | None, environ: dict[str, Any]) -> bool:
        if origin is None or allow_all or origin in allowed:
            return True
        host = environ.get("HTTP_HOST")
        scheme = environ.get("wsgi.url_scheme", "http")
        if host and origin in (
            f"{scheme}://{host}",
            f"{'https' if scheme in ('https', 'wss') else 'http'}://{host}",
        ):
            return True
        return False

    return check


async def _every_second(tick: Callable[[], Awaitable[None]]) -> None:
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    while True:
        next_at += 1.0
        await asyncio.sleep(max(0.0, next_at - loop.time()))
        try:
            await tick()
        except Exception:
            logging.getLogger(__name__).exception("admin broadcast failed")


async def _close_manager(manager: Any) -> None:
    """Stop a Redis client manager's listener and close its connections (python-socketio has no close)."""
    if not isinstance(manager, socketio.AsyncRedisManager):
        return
    listener = getattr(manager, "thread", None)
    if listener is not None:
        listener.cancel()
        await asyncio.wait({listener}, timeout=CLOSE_RESOURCE_S)
    for name, resource in (("pubsub", manager.pubsub), ("client", manager.redis)):
        if resource is not None:
            await close_within(resource.aclose(), CLOSE_RESOURCE_S, f"the Socket.IO Redis {name}")


def create_app(settings: Settings) -> TokenwireApp:
    namespace = AiNamespace(settings)
    sio = GatewayServer(
        lean_engine=settings.lean_engine,
        async_mode="asgi",
        client_manager=socketio.AsyncRedisManager(settings.redis_url)
        if settings.redis_url
        else None,
        json=OrjsonCodec,
        cors_allowed_origins=_origin_check(settings),
        ping_interval=settings.ping_interval,
        ping_timeout=settings.ping_timeout,
        # A chat:start is at most MAX_MESSAGE_CHARS characters of up to 4
        # UTF-8 bytes each, plus room for the other fields; a larger frame
        # closes only the connection that sent it.
        max_http_buffer_size=settings.max_message_chars * 4 + 16_384,
        logger=False,
        engineio_logger=False,
    )
    sio.register_namespace(namespace)
    if settings.connection_recovery:
        sio.enable_recovery(
            MemorySessionStore(
                window_s=settings.connection_recovery_s,
                # Packets sent are kept as long as a dead connection can go
                # unnoticed: its client may not have had them.
                retain_s=settings.ping_interval + settings.ping_timeout,
                max_chars=settings.connection_recovery_max_bytes,
                on_expire=sio.expire_session,
            ),
            frozenset({NAMESPACE}),
        )
    admin = AdminNamespace()
    sio.register_namespace(admin)

    @asynccontextmanager
    async def lifespan(api: FastAPI) -> AsyncIterator[None]:
        async with Services.start(settings) as services:
            api.state.services = services
            runtime = Runtime(settings, services.chat, services.authenticator.verify)
            namespace.runtime = admin.runtime = runtime
            services.chat.metrics.connections = lambda: namespace.connected
            broadcaster = asyncio.create_task(
                _every_second(admin.broadcast), name="admin-broadcast"
            )
            try:
                yield
            finally:
                broadcaster.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await broadcaster
                namespace.runtime = admin.runtime = None
        await _close_manager(sio.manager)

    api = FastAPI(
        title="tokenwire",
        version=__version__,
        description="Real-time AI chat streaming over Socket.IO. The /ai namespace is described in the README.",
        lifespan=lifespan,
    )
    api.add_middleware(
        CORSMiddleware,
        allow_origins=list(settings.cors_origin),
        allow_credentials="*" not in settings.cors_origin,
        allow_methods=["GET", "POST", "DELETE"],
        allow_headers=["Authorization", "Content-Type"],
    )

    @api.exception_handler(TokenwireError)
    async def _tokenwire_error(_request: Request, exc: TokenwireError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.http_status == 401 else None
        body = {"error": {"code": exc.code, "message": exc.message}}
        return JSONResponse(body, status_code=exc.http_status, headers=headers)

    @api.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = (
            f"{where}: {first.get('msg', 'invalid')}" if where else "The request was not valid."
        )
        return JSONResponse(
            {"error": {"code": "VALIDATION_ERROR", "message": message}}, status_code=422
        )

    api.include_router(health.router)
    api.include_router(conversations.router)
    api.include_router(monitoring.router)
    if not settings.is_production:
        api.include_router(dev.router)
    api.include_router(web.router)  # last: the pages and their assets
    asgi = socketio.ASGIApp(sio, other_asgi_app=api, socketio_path="socket.io")
    return TokenwireApp(asgi, api, sio, namespace, settings)
