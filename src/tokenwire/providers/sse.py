"""A lean Server-Sent Events decoder: bytes in, each event's `data` out.

Only the part of the SSE grammar that OpenAI-compatible servers use matters
here: `data:` fields (several join with a newline), comments (`:` lines, sent
as keep-alives), blank lines ending an event, and LF, CRLF or CR line ends.
Other fields (`event:`, `id:`, `retry:`) are ignored. Decoding works on bytes
so that the JSON decoder (orjson) gets each payload without a str round trip,
and a whole network read is decoded in one call (`SSEDecoder.feed`), with no
coroutine step per event.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

__all__ = ["SSEDecoder", "iter_sse_data"]


def _field_value(line: bytes) -> bytes:
    value = line[5:]
    return value[1:] if value.startswith(b" ") else value


class SSEDecoder:
    __slots__ = ("_buffer", "_data")

    def __init__(self) -> None:
        self._buffer = b""
        self._data: list[bytes] = []

    def feed(self, chunk: bytes) -> list[bytes]:
        """The data of every event that `chunk` completes."""
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:
            # Normalise CRLF and lone CR, but keep a trailing CR: its LF may
            # be the first byte of the next chunk.
            head, tail = (buffer[:-1], buffer[-1:]) if buffer.endswith(b"\r") else (buffer, b"")
            buffer = head.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + tail
        events: list[bytes] = []
        data = self._data
        start = 0
        while (end := buffer.find(b"\n", start)) != -1:
            line = buffer[start:end]
            start = end + 1
            if not line:
                if data:
                    events.append(data[0] if len(data) == 1 else b"\n".join(data))
                    data.clear()
            elif line.startswith(b"data:"):
                data.append(_field_value(line))
        self._buffer = buffer[start:]
        return events

    def close(self) -> list[bytes]:
        """What an unterminated last event held, when the stream ends."""
        if self._buffer.startswith(b"data:"):
            self._data.append(_field_value(self._buffer))
        self._buffer = b""
        if not self._data:
            return []
        event = b"\n".join(self._data)
        self._data.clear()
        return [event]


async def iter_sse_data(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    decoder = SSEDecoder()
    async for chunk in chunks:
        for event in decoder.feed(chunk):
            yield event
    for event in decoder.close():
        yield event
