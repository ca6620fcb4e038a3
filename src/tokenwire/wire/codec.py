"""orjson as Socket.IO's JSON: python-socketio calls `dumps(data, separators=...)` and `loads(text)`.

orjson is several times faster than the standard library on the per-chunk hot
path, produces the same compact output, and refuses input nested deeper than
1024 levels instead of hitting Python's recursion limit.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["OrjsonCodec", "event_packet"]


class OrjsonCodec:
    """Stands in for the `json` module; only the two functions python-socketio uses."""

    JSONDecodeError = orjson.JSONDecodeError

    @staticmethod
    def dumps(obj: Any, **_: Any) -> str:
        try:
            return orjson.dumps(obj).decode()
        except TypeError:
            # orjson refuses a lone surrogate (half an emoji) in a str; the
            # standard library writes it as an escape, as JSON.stringify does.
            return json.dumps(obj, separators=(",", ":"))

    @staticmethod
    def loads(data: str | bytes, **_: Any) -> Any:
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError as exc:
            # JSON.stringify writes a lone surrogate (an emoji cut in half) as
            # an escape that orjson refuses; the standard library reads it, so
            # the event can still be answered (payload validation refuses the
            # text). Anything else stays an error.
            if "surrogate" not in str(exc):
                raise
            return json.loads(data)


def event_packet(namespace: str, event: str, payload: Any, offset: int | None = None) -> str:
    """The text of a Socket.IO EVENT packet without an ack id: `2/ns,["event",payload]`.

    Byte for byte what python-socketio's `Packet.encode` writes for text data
    (tests/test_codec.py checks), without its per-call walk for binary parts.
    With an `offset` (connection state recovery) it is the last argument, as
    a string: `2/ns,["event",payload,"17"]`.
    """
    prefix = "2" if namespace == "/" else f"2{namespace},"
    if offset is None:
        return prefix + OrjsonCodec.dumps([event, payload])
    return prefix + OrjsonCodec.dumps([event, payload, str(offset)])
