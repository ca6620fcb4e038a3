"""Running the app on uvicorn, with a graceful drain before uvicorn's own shutdown.

On SIGTERM or SIGINT uvicorn stops its main loop and calls `shutdown`. Before
it closes connections, tokenwire:

1. stops listening, so no new connections arrive (a load balancer moves on);
2. drains: refuses new replies (SERVER_SHUTDOWN), lets running ones finish
   for up to SHUTDOWN_GRACE_S, then saves each unfinished one as
   `interrupted` with the content so far and tells its client;
3. disconnects every Socket.IO client cleanly, so they reconnect elsewhere;

and only then lets uvicorn close what is left and run the lifespan shutdown.
"""

from __future__ import annotations

import signal
import socket
from types import FrameType

import uvicorn

from tokenwire.app import TokenwireApp
from tokenwire.config import Settings

__all__ = ["GracefulServer", "uvicorn_config"]


class GracefulServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, app: TokenwireApp) -> None:
        super().__init__(config)
        self.tokenwire = app

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:  # noqa: ARG002 - uvicorn's signature
        # uvicorn records the signal and re-raises it after shutdown, so the
        # process would die "by signal 15". A drained shutdown is a clean
        # exit: status 0. A second Ctrl-C still forces the exit.
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        for server in self.servers:
            server.close()
        await self.tokenwire.drain()
        await super().shutdown(sockets)


def uvicorn_config(app: TokenwireApp, settings: Settings, **overrides: object) -> uvicorn.Config:
    options: dict[str, object] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": "httptools",
        "ws": "websockets-sansio",
        "ws_per_message_deflate": settings.ws_compression,
        # Socket.IO runs its own heartbeat (PING_INTERVAL / PING_TIMEOUT).
        "ws_ping_interval": None,
        "ws_ping_timeout": None,
        "log_config": None,
        "access_log": False,
        "lifespan": "on",
        "proxy_headers": True,
        "timeout_graceful_shutdown": 5,
        "backlog": 4096,
    }
    options.update(overrides)
    return uvicorn.Config(app, **options)  # type: ignore[arg-type]
