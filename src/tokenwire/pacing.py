"""Frames on one clock: every streaming reply reads and sends on the same beat.

With STREAM_FLUSH_MS > 0 each reply's tokens are coalesced into frames, at
most one per interval. Where those intervals fall is ours to choose, and
choosing the same instants for every reply pays: the upstream reads, the
frames and the sends of all replies due in one interval run back to back in
one turn of the event loop, and the process on the other end of many
sockets (a load balancer, a proxy, a benchmark's client process) is woken
once per beat instead of once per reply. On the 2-core VM bench/ runs on,
aligning the beats cut the gateway's CPU per token by ~11% at B2 (see
docs/benchmarks.md).

The beat is the loop clock's multiples of the interval (`next_beat`). A
reply's first token is never held for it: only what follows the first frame
waits for a beat, so no token waits longer than one interval.
"""

from __future__ import annotations

import asyncio
import math

__all__ = ["Beat", "next_beat"]


def next_beat(after: float, interval: float) -> float:
    """The first multiple of `interval` later than loop time `after` (-inf: never, so none)."""
    if after == -math.inf:
        return after
    return (after // interval + 1) * interval


class Beat:
    """Wait for the next beat: one loop timer per beat for every waiter, not one each."""

    __slots__ = ("_handle", "_waiters", "interval")

    def __init__(self, interval: float) -> None:
        if interval <= 0:
            raise ValueError("a beat needs an interval > 0")
        self.interval = interval
        self._waiters: list[asyncio.Future[None]] = []
        self._handle: asyncio.TimerHandle | None = None

    async def wait(self) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        if self._handle is None:
            self._handle = loop.call_at(next_beat(loop.time(), self.interval), self._fire)
        # A cancelled wait cancels only its own future; `_fire` skips it.
        await waiter

    def _fire(self) -> None:
        self._handle = None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)
