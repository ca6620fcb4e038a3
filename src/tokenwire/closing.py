"""Bounded waits for shutdown: a resource closes within its time, or is let go and logged.

Closing a database pool, a Redis client or an HTTP connector waits on a peer.
A peer that has gone silent (a network partition, a server that stopped
answering) would hold shutdown forever, and an orchestrator would SIGKILL the
process before it saved anything. Every such wait in shutdown goes through
`close_within`, so the total is bounded (see `tokenwire.server.SHUTDOWN_BOUND_S`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable

__all__ = ["CLOSE_RESOURCE_S", "close_within"]

# How long each resource the app owns (database, HTTP client, a Redis client)
# may take to close on shutdown before it is let go.
CLOSE_RESOURCE_S = 1.0

log = logging.getLogger(__name__)


async def close_within(closing: Awaitable[object], seconds: float, what: str) -> bool:
    """Await `closing` for at most `seconds`; True if it finished, False (and a warning) if not.

    On time-out the close is cancelled and not waited for again: a close
    that ignores cancellation must not become the next hang. Errors are
    logged, not raised: one resource that fails to close must not keep the
    others open.
    """
    task = asyncio.ensure_future(closing)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        log.warning("closing %s took longer than %.1f s; let go", what, seconds)
        return False
    if not task.cancelled() and task.exception() is not None:
        log.warning("closing %s failed: %r", what, task.exception())
        return False
    return True
