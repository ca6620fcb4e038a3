"""orjson as Socket.IO's JSON: python-socketio calls `dumps(data, separators=...)` and `loads(text)`.

orjson is several times faster than the standard library on the per-chunk hot
path, produces the same compact output, and refuses input nested deeper than
1024 levels instead of hitting Python's recursion limit.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

__all__ = ["OrjsonCodec"]


class OrjsonCodec:
    """Stands in for the `json` module; only the two functions python-socketio uses."""

    JSONDecodeError = orjson.JSONDecodeError

    @staticmethod
    def dumps(obj: Any, **_: Any) -> str:
        return orjson.dumps(obj).decode()

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
