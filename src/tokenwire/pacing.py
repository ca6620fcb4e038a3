"""Frames on one clock: every streaming reply reads and sends on the same beat.

With STREAM_FLUSH_MS > 0 each reply's tokens are coalesced into frames, at
most one per interval. Where those intervals fall is ours to choose, and
choosing the same instants for every reply pays: the upstream reads, the
frames and the sends of all replies due in one interval run back to back in
one turn of the event loop, and the process on the other end of many
sockets (a load balancer, a proxy, a benchmark's client process) is woken
once per beat instead of once per reply. On the 2-core VM bench/ runs on,
aligning the beats cut the gateway's CPU per token by ~16% at B2 (see
docs/benchmarks.md).

The beat is the loop clock's multiples of the interval (`next_beat`). A
reply's first token is never held for it: only what follows the first frame
waits for a beat, so no token waits longer than one interval.
"""

from __future__ import annotations

import asyncio
import math

__all__ = ["LEAD_S", "Beat", "next_beat"]

# How long before a beat held transports resume reading: what has collected
# in the kernel is read in the loop turn right after, before the beat fires.
LEAD_S = 0.004
# The least time between resuming held transports and waking their readers
# (uvloop's clock ticks in whole milliseconds).
_READ_TIME_S = 0.001


def next_beat(after: float, interval: float) -> float:
    """The first multiple of `interval` later than loop time `after` (-inf: never, so none)."""
    if after == -math.inf:
        return after
    beat = (after // interval + 1) * interval
    # In floating point, an instant on a beat (uvloop's clock is in whole
    # ms, so it lands on beats often) can divide to one short and give back
    # the instant itself, give or take rounding: a beat due at once. The
    # next beat is always at least a millionth of an interval away.
    return beat if beat - after > interval * 1e-6 else beat + interval


class Beat:
    """Wait for the next beat: one loop timer per beat for every waiter, not one each.

    A waiter may also hand over the transport it reads from (`wait(hold=...)`):
    the transport stops reading until `LEAD_S` before the beat, and then all
    held transports resume together. Tokens that arrive in between wait in
    the kernel's socket buffer and are read in one go, where each would
    otherwise cost its own wake-up, `recv` and trip through the HTTP client
    (bench: the upstream reader alone, 200 streams of 100 tok/s, 22.6 ->
    16.5 us of CPU per token). They are read before the beat, so nothing
    reaches the client later than it would have.
    """

    __slots__ = ("_handle", "_held", "_loop", "_released", "_released_at", "_waiters", "interval")

    def __init__(self, interval: float) -> None:
        if interval <= 0:
            raise ValueError("a beat needs an interval > 0")
        self.interval = interval
        self._waiters: list[asyncio.Future[None]] = []
        self._handle: asyncio.TimerHandle | None = None
        self._held: list[asyncio.ReadTransport] = []
        self._released = True  # the held transports of the coming beat have resumed
        self._released_at = -math.inf
        # The loop it was first waited on: `asyncio.get_running_loop()` costs
        # a getpid() system call (CPython 3.11), once per read of every reply.
        self._loop: asyncio.AbstractEventLoop | None = None

    async def wait(self, hold: asyncio.ReadTransport | None = None) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self._loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        if self._handle is None:
            due = next_beat(loop.time(), self.interval)
            self._handle = loop.call_at(due, self._fire)
            # Too close to the beat to be worth pausing: nothing is held.
            self._released = loop.time() >= due - LEAD_S
            if not self._released:
                loop.call_at(due - LEAD_S, self._release)
        if hold is not None and not self._released and not hold.is_closing():
            hold.pause_reading()
            self._held.append(hold)
        # A cancelled wait cancels only its own future; `_fire` skips it.
        await waiter

    def let_go(self, transport: asyncio.ReadTransport) -> None:
        """Resume `transport` now if it is held (its reader is leaving early)."""
        if transport in self._held:
            self._held.remove(transport)
            _resume(transport)

    def _release(self) -> None:
        self._released = True
        self._released_at = asyncio.get_running_loop().time()
        held, self._held = self._held, []
        for transport in held:
            _resume(transport)

    def _fire(self) -> None:
        loop = asyncio.get_running_loop()
        if loop.time() - self._released_at < _READ_TIME_S:
            # The loop ran late and reached the release and the beat in one
            # go: the resumed transports have not been read yet. Waking the
            # readers now would find nothing and wake each twice (bench B3 at
            # 1,000 streams, where the loop is saturated); wake them after
            # one turn of I/O instead.
            self._handle = loop.call_at(self._released_at + _READ_TIME_S, self._fire)
            return
        self._handle = None
        waiters, self._waiters = self._waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


def _resume(transport: asyncio.ReadTransport) -> None:
    if not transport.is_closing():  # a closed one has nothing left to read
        transport.resume_reading()
