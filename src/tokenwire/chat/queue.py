"""The line in front of a model server that serves a few requests at a time.

llama.cpp's server and Ollama (by default) generate one reply at a time; a
request sent while another runs either waits inside the server, where
tokenwire cannot see it, or (llama.cpp with `interrupt_requests`) cuts the
running one short. With UPSTREAM_MAX_CONCURRENCY, at most that many replies
talk to the upstream at once; the others wait here, first come first
served, and are told where they stand (`chat:queued`).

A waiter that leaves (stop, delete, timeout, shutdown) leaves the line and
everyone behind it moves up. Every change wakes every waiter to recompute
its place: O(n) per change, which is nothing at the queue lengths one model
server can be asked to carry.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from tokenwire.errors import ServerShutdown

__all__ = ["UpstreamQueue"]

Notify = Callable[[int], Awaitable[None]]


class UpstreamQueue:
    def __init__(self, limit: int | None) -> None:
        self.limit = limit
        self.active = 0  # replies holding a slot
        self._line: deque[object] = deque()
        self._sleepers: list[asyncio.Future[None]] = []
        self._closed = False

    @property
    def waiting(self) -> int:
        return len(self._line)

    def try_acquire(self) -> bool:
        """Take a slot if one is free and nobody is ahead; the fast path, no await."""
        if self._closed:
            raise ServerShutdown()
        if self.limit is None or (not self._line and self.active < self.limit):
            self.active += 1
            return True
        return False

    async def acquire(self, notify: Notify) -> None:
        """Wait in line for a slot; `notify(position)` each time the place changes (1 = next)."""
        if self.try_acquire():
            return
        me = object()
        self._line.append(me)
        told = 0
        try:
            while True:
                if self._closed:
                    raise ServerShutdown()
                assert self.limit is not None
                if self._line[0] is me and self.active < self.limit:
                    self._line.popleft()
                    self.active += 1
                    self._wake()  # everyone behind moves up
                    return
                position = self._line.index(me) + 1
                if position != told:
                    told = position
                    await notify(position)
                    continue  # the line may have moved while we told
                sleeper = asyncio.get_running_loop().create_future()
                self._sleepers.append(sleeper)
                await sleeper
        except BaseException:
            # Stopped, timed out or shut down while waiting: leave the line.
            if me in self._line:
                self._line.remove(me)
                self._wake()
            raise

    def release(self) -> None:
        self.active -= 1
        self._wake()

    def close(self) -> None:
        """Shutdown: everyone still waiting gets `ServerShutdown`; running replies keep their slots."""
        self._closed = True
        self._wake()

    def _wake(self) -> None:
        sleepers, self._sleepers = self._sleepers, []
        for sleeper in sleepers:
            if not sleeper.done():
                sleeper.set_result(None)
