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
    """Incremental: `feed` each network read, `close` at the end of the stream.

    An event is kept whole in the buffer until the blank line that ends it
    arrives, then decoded in one piece. The common shape (one `data:` line
    per event, LF line ends, as every OpenAI-compatible server sends) costs
    a `split` and a slice per event; anything else (CR or CRLF line ends,
    comments, other fields, multi-line data) takes the general path.
    """

    __slots__ = ("_buffer",)

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[bytes]:
        """The data of every event that `chunk` completes."""
        buffer = self._buffer + chunk if self._buffer else chunk
        if b"\r" in buffer:
            # Normalise CRLF and lone CR, but keep a trailing CR: its LF may
            # be the first byte of the next chunk.
            head, tail = (buffer[:-1], buffer[-1:]) if buffer.endswith(b"\r") else (buffer, b"")
            buffer = head.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + tail
        *blocks, self._buffer = buffer.split(b"\n\n")
        events: list[bytes] = []
        for block in blocks:
            if block.startswith(b"data: ") and b"\n" not in block:
                events.append(block[6:])
            elif block:
                data = _block_data(block)
                if data is not None:
                    events.append(data)
        return events

    def close(self) -> list[bytes]:
        """What an unterminated last event held, when the stream ends."""
        block, self._buffer = self._buffer.rstrip(b"\r\n"), b""
        data = _block_data(block.replace(b"\r\n", b"\n").replace(b"\r", b"\n")) if block else None
        return [] if data is None else [data]


def _block_data(block: bytes) -> bytes | None:
    """The data of one event (its lines, without the blank line), or None if it has none."""
    data = [_field_value(line) for line in block.split(b"\n") if line.startswith(b"data:")]
    if not data:
        return None
    return data[0] if len(data) == 1 else b"\n".join(data)


async def iter_sse_data(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    decoder = SSEDecoder()
    async for chunk in chunks:
        for event in decoder.feed(chunk):
            yield event
    for event in decoder.close():
        yield event
