"""A lean Server-Sent Events reader: bytes in, each event's `data` out.

Only the part of the SSE grammar that OpenAI-compatible servers use matters
here: `data:` fields (several join with a newline), comments (`:` lines, sent
as keep-alives), blank lines ending an event, and LF, CRLF or CR line ends.
Other fields (`event:`, `id:`, `retry:`) are ignored. Parsing works on bytes
so that the JSON decoder (orjson) gets each payload without a str round trip.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator

__all__ = ["iter_sse_data"]


async def iter_sse_data(chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
    buffer = b""
    data: list[bytes] = []
    async for chunk in chunks:
        buffer += chunk
        if b"\r" in buffer:
            # Normalise CRLF and lone CR, but keep a trailing CR: its LF may
            # be the first byte of the next chunk.
            head, tail = (buffer[:-1], buffer[-1:]) if buffer.endswith(b"\r") else (buffer, b"")
            buffer = head.replace(b"\r\n", b"\n").replace(b"\r", b"\n") + tail
        start = 0
        while (end := buffer.find(b"\n", start)) != -1:
            line = buffer[start:end]
            start = end + 1
            if not line:
                if data:
                    yield data[0] if len(data) == 1 else b"\n".join(data)
                    data = []
            elif line.startswith(b"data:"):
                value = line[5:]
                data.append(value[1:] if value.startswith(b" ") else value)
        buffer = buffer[start:]
    if buffer.startswith(b"data:"):
        value = buffer[5:]
        data.append(value[1:] if value.startswith(b" ") else value)
    if data:
        # A stream that ends without the final blank line still delivered it.
        yield b"\n".join(data)
