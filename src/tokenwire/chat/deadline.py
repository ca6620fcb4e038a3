"""The upstream deadlines of one reply: time to the first token, then silence between tokens.

`asyncio.timeout(...).reschedule()` per token costs about 5 µs (a timer-heap
removal and insertion); at tens of thousands of tokens per second that is a
tenth of a core. Here a token costs one float store: the timer is armed once
for the first token, re-armed once when it arrives, and afterwards only
re-arms itself when it fires and finds that a token came in the meantime.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["Deadline"]


class Deadline:
    __slots__ = ("_handle", "_idle_s", "_loop", "_on_expire", "expired", "last")

    def __init__(self, first_s: float, idle_s: float, on_expire: Callable[[], None]) -> None:
        self._loop = asyncio.get_running_loop()
        self._idle_s = idle_s
        self._on_expire = on_expire
        self.last: float | None = None
        self.expired = False
        self._handle = self._loop.call_later(first_s, self._check)

    def touch(self, now: float) -> None:
        """A token arrived at `now` (the loop's clock)."""
        if self.last is None:
            self._handle.cancel()
            self._handle = self._loop.call_at(now + self._idle_s, self._check)
        self.last = now

    def cancel(self) -> None:
        self._handle.cancel()

    def _check(self) -> None:
        if self.last is not None:
            due = self.last + self._idle_s
            if due > self._loop.time():
                self._handle = self._loop.call_at(due, self._check)
                return
        self.expired = True
        self._on_expire()
