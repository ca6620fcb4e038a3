"""A TCP proxy between a test's clients and the server that cuts connections on demand.

`cut()` aborts every connection through it at once, both ways, the way a
network that drops does to a client and a server: neither side is told
anything until its next read or write fails. New connections keep working,
so a client that reconnects goes through again.

`lose_response(marker)` loses, once, the next bytes from the server that
contain `marker`, and aborts their connection: the server has written a
response the client never gets, and the client sees its connection close
before any response.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from tokenwire.testing import free_port

__all__ = ["CuttingProxy", "cutting_proxy"]


class CuttingProxy:
    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.cuts = 0
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self._lose: bytes | None = None
        self.lost = asyncio.Event()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)

    def cut(self) -> int:
        """Drop every open connection; returns how many there were."""
        pairs = list(self._pairs)
        for client, upstream in pairs:
            client.transport.abort()
            upstream.transport.abort()
        self._pairs.clear()
        self.cuts += 1
        return len(pairs)

    def lose_response(self, marker: bytes) -> None:
        self._lose = marker
        self.lost.clear()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self.cut()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)
        pumps = [
            asyncio.ensure_future(self._pump(reader, up_writer)),
            asyncio.ensure_future(self._pump(up_reader, writer, losing=True)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
                self._tasks.discard(pump)
            self._pairs.discard(pair)
            for side in pair:
                side.transport.abort()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, losing: bool = False
    ) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                if losing and self._lose is not None and self._lose in data:
                    self._lose = None
                    self.lost.set()
                    return  # the connection is aborted, the data never sent
                writer.write(data)
                await writer.drain()


@asynccontextmanager
async def cutting_proxy(target_port: int) -> AsyncIterator[CuttingProxy]:
    proxy = CuttingProxy(target_port)
    await proxy.start()
    try:
        yield proxy
    finally:
        await proxy.close()
