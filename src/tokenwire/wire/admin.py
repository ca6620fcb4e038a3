"""The `/admin` Socket.IO namespace: live figures for operators, and Stop for any reply.

Only tokens with `role: "admin"` or a `sub` listed in ADMIN_USERS connect;
anyone else gets `connect_error` 'unauthorized'. On connect the client gets
`admin:history` (up to 15 minutes of one-second samples); then the app's
broadcaster sends `admin:stats` every second. `admin:stop {messageId}` stops
a running reply on this node (its user sees `chat:stopped`).

Figures are this node's: with several nodes behind a load balancer, scrape
`/metrics` from each into Prometheus for the cluster-wide picture.
"""

from __future__ import annotations

import logging
from typing import Any

import socketio

from tokenwire.errors import NotFound, TokenwireError, Unauthorized, ValidationFailed
from tokenwire.wire import protocol
from tokenwire.wire.gateway import Runtime, shown_event_name

__all__ = ["ADMIN_NAMESPACE", "AdminNamespace", "running_replies"]

log = logging.getLogger(__name__)

ADMIN_NAMESPACE = "/admin"


def running_replies(runtime: Runtime) -> list[dict[str, Any]]:
    return [
        protocol.running_reply(
            r.message_id,
            r.conversation_id,
            r.user_id,
            r.request.model,
            r.started_wall.isoformat(),
            sum(len(p) for p in r.parts),
        )
        for r in runtime.chat.replies
    ]


class AdminNamespace(socketio.AsyncNamespace):  # type: ignore[misc]
    def __init__(self) -> None:
        super().__init__(ADMIN_NAMESPACE)
        self.runtime: Runtime | None = None
        self.admins: set[str] = set()

    async def on_connect(self, sid: str, environ: dict[str, Any], auth: Any = None) -> None:  # noqa: ARG002 - python-socketio's signature
        runtime = self.runtime
        token = auth.get("token") if isinstance(auth, dict) else None
        try:
            if runtime is None:
                raise Unauthorized()
            principal = await runtime.verify(token)
            if not principal.is_admin:
                raise Unauthorized("This dashboard is for administrators.")
        except Unauthorized as exc:
            raise socketio.exceptions.ConnectionRefusedError(
                "unauthorized", {"code": exc.code, "message": exc.message}
            ) from None
        self.admins.add(sid)
        log.info("admin connected", extra={"sid": sid, "user_id": principal.user_id})
        await self.emit(*protocol.admin_history(runtime.chat.metrics.history()), to=sid)

    async def on_disconnect(self, sid: str, reason: Any = None) -> None:  # noqa: ARG002 - python-socketio's signature
        self.admins.discard(sid)

    async def trigger_event(self, event: str, *args: Any) -> Any:
        if event in ("connect", "disconnect"):
            return await super().trigger_event(event, *args)
        sid, data = args[0], args[1:]
        try:
            if sid not in self.admins:
                raise Unauthorized()
            if event != "admin:stop":
                raise ValidationFailed(f"Unknown event '{shown_event_name(event)}'.")
            payload = data[0] if data else None
            message_id = payload.get("messageId") if isinstance(payload, dict) else None
            if not isinstance(message_id, str) or not message_id:
                raise ValidationFailed("admin:stop takes {messageId}.")
            if self.runtime is None or await self.runtime.chat.stop_message(message_id) is None:
                raise NotFound("No reply with that id is running on this node.")
            log.info("admin stopped a reply", extra={"sid": sid, "message_id": message_id})
            return protocol.ack(messageId=message_id)
        except TokenwireError as exc:
            return protocol.ack_error(exc)

    async def broadcast(self) -> None:
        """Take this second's sample and send it to every connected admin."""
        runtime = self.runtime
        if runtime is None:
            return
        metrics = runtime.chat.metrics
        sample = metrics.sample()
        if self.admins:
            await self.emit(
                *protocol.admin_stats(metrics.snapshot(sample), running_replies(runtime))
            )
