"""The hand-written Socket.IO event encoding matches python-socketio's own, byte for byte."""

from __future__ import annotations

import json
from typing import Any

import pytest
import socketio

from tokenwire.wire.codec import OrjsonCodec, event_packet

PAYLOADS: list[Any] = [
    {"content": " tok", "isComplete": False, "messageId": "m", "offset": 0},
    {"content": 'héllo 👋 世界\n\t"quoted" \\ </script>', "offset": 12},
    {"content": "half an emoji \ud83d", "offset": 3},
    {"nested": [1, 2.5, None, True, {"a": []}], "empty": ""},
]


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("namespace", ["/ai", "/"])
def test_event_packet_matches_python_socketio(namespace: str, payload: Any) -> None:
    reference = socketio.packet.Packet(
        socketio.packet.EVENT, data=["chat:message", payload], namespace=namespace
    )
    reference.json = OrjsonCodec  # what the server is configured with
    assert event_packet(namespace, "chat:message", payload) == reference.encode()


@pytest.mark.parametrize("payload", PAYLOADS)
def test_event_packet_decodes_to_the_payload(payload: Any) -> None:
    text = event_packet("/ai", "chat:message", payload)
    assert text.startswith("2/ai,")
    assert json.loads(text[len("2/ai,") :]) == ["chat:message", payload]
