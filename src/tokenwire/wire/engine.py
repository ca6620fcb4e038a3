"""`asyncio.Queue` and `asyncio.Event` for objects every open connection holds.

`asyncio.Queue()` costs ~3.3 KiB before it holds anything (three deques and
an `Event` with a fourth), `asyncio.Event()` ~0.9 KiB. uvicorn's WebSocket
protocol holds one of each per connection, python-engineio a queue per socket,
and all are empty or idle nearly all the time. These allocate only what is
in use.
"""

from __future__ import annotations

import asyncio
import collections
from typing import Generic, TypeVar

__all__ = ["LeanEvent", "LeanQueue"]

T = TypeVar("T")


class LeanQueue(Generic[T]):
    """An unbounded FIFO with `asyncio.Queue`'s methods, allocated only while in use.

    `asyncio.Queue()` costs ~3.3 KiB before it holds anything (three deques and
    an `Event` with a fourth). Every open connection has two (engine.io's send
    queue and the ASGI server's receive queue), both almost always empty.
    Here the items deque exists only while items wait, and the lists of
    waiting getters and joiners only while someone waits.

    Same semantics as `asyncio.Queue` for what engine.io, uvicorn and the
    gateway call: `put`/`put_nowait`, `get`/`get_nowait`, `task_done`,
    `join`, `qsize`, `empty` (`maxsize` is accepted and ignored: both callers
    use unbounded queues).
    """

    __slots__ = ("_getters", "_items", "_joiners", "_unfinished")

    def __init__(self, maxsize: int = 0) -> None:  # noqa: ARG002 - asyncio.Queue's signature
        self._items: collections.deque[T] | None = None
        self._getters: list[asyncio.Future[None]] | None = None
        self._joiners: list[asyncio.Future[None]] | None = None
        self._unfinished = 0

    def qsize(self) -> int:
        return len(self._items) if self._items else 0

    def empty(self) -> bool:
        return not self._items

    def full(self) -> bool:
        return False

    def put_nowait(self, item: T) -> None:
        if self._items is None:
            self._items = collections.deque()
        self._items.append(item)
        self._unfinished += 1
        self._wake_getter()

    async def put(self, item: T) -> None:
        self.put_nowait(item)

    def get_nowait(self) -> T:
        items = self._items
        if not items:
            raise asyncio.QueueEmpty
        item = items.popleft()
        if not items:
            self._items = None
        return item

    async def get(self) -> T:
        while not self._items:
            getter = asyncio.get_running_loop().create_future()
            if self._getters is None:
                self._getters = []
            self._getters.append(getter)
            try:
                await getter
            except BaseException:
                getter.cancel()
                self._forget_getter(getter)
                if self._items and not getter.cancelled():
                    # Woken for an item, then cancelled: hand the wake-up on.
                    self._wake_getter()
                raise
            self._forget_getter(getter)
        return self.get_nowait()

    def task_done(self) -> None:
        if self._unfinished <= 0:
            raise ValueError("task_done() called too many times")
        self._unfinished -= 1
        if self._unfinished == 0 and self._joiners is not None:
            for joiner in self._joiners:
                if not joiner.done():
                    joiner.set_result(None)
            self._joiners = None

    async def join(self) -> None:
        if self._unfinished:
            joiner = asyncio.get_running_loop().create_future()
            if self._joiners is None:
                self._joiners = []
            self._joiners.append(joiner)
            await joiner

    def _wake_getter(self) -> None:
        while self._getters:
            getter = self._getters.pop(0)
            if not getter.done():
                getter.set_result(None)
                break
        if not self._getters:
            self._getters = None

    def _forget_getter(self, getter: asyncio.Future[None]) -> None:
        if self._getters is not None:
            if getter in self._getters:
                self._getters.remove(getter)
            if not self._getters:
                self._getters = None


class LeanEvent:
    """`asyncio.Event` without the deque it allocates up front (856 bytes -> ~50)."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        if self._set:
            return
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
        return True
