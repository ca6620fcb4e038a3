"""WS_COMPRESSION: permessage-deflate is off by default and negotiated when the setting turns it on."""

from __future__ import annotations

import json
from typing import Any

import pytest
from websockets.asyncio.client import connect

from tests.conftest import make_settings
from tokenwire.app import create_app
from tokenwire.auth import Authenticator
from tokenwire.server import uvicorn_config
from tokenwire.testing import Script, UpstreamDouble, serve


@pytest.mark.parametrize("enabled", [False, True])
async def test_ws_compression_setting_negotiates_permessage_deflate(
    upstream: tuple[UpstreamDouble, str], sqlite_url: str, enabled: bool
) -> None:
    _, upstream_url = upstream
    settings = make_settings(
        database_url=sqlite_url, openai_base_url=f"{upstream_url}/v1", ws_compression=enabled
    )
    app = create_app(settings)
    config = uvicorn_config(app, settings)  # what `tokenwire serve` runs
    options: dict[str, Any] = {
        "ws": config.ws,
        "ws_per_message_deflate": config.ws_per_message_deflate,
    }
    async with serve(app, **options) as url:
        endpoint = url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        async with connect(endpoint, compression="deflate") as ws:
            assert ws.response is not None
            extensions = ws.response.headers.get("Sec-WebSocket-Extensions", "")
            assert ("permessage-deflate" in extensions) is enabled
            assert str(await ws.recv()).startswith("0{")  # Engine.IO OPEN
            token = Authenticator(settings).issue("alice")
            await ws.send("40/ai," + json.dumps({"token": token}))
            assert str(await ws.recv()).startswith("40/ai,{")  # connected to the namespace
            await ws.send('42/ai,["chat:start",{"message":"squeeze me"}]')
            names = []
            while "chat:end" not in names:
                frame = str(await ws.recv())
                if frame.startswith("42/ai,"):
                    names.append(json.loads(frame[len("42/ai,") :])[0])
            assert names[:3] == ["chat:conversation", "chat:user-message", "chat:message"]


@pytest.mark.parametrize("enabled", [False, True])
async def test_frames_of_every_length_class_reach_a_strict_websocket_client(
    upstream: tuple[UpstreamDouble, str], sqlite_url: str, enabled: bool
) -> None:
    # Uncompressed text frames are framed by tokenwire itself
    # (LeanWebSocketProtocol.send_text_nowait): a 7-bit, a 16-bit and a
    # 64-bit payload length, each read by the `websockets` client, which
    # refuses a malformed frame. With compression, websockets frames them.
    double, upstream_url = upstream
    tokens = ["a" * 100, "b" * 1_000, "c" * 70_000, "d"]
    double.enqueue(Script(tokens=tokens, delay_s=0.05))  # a frame each
    settings = make_settings(
        database_url=sqlite_url,
        openai_base_url=f"{upstream_url}/v1",
        ws_compression=enabled,
        stream_flush_ms=0,
    )
    app = create_app(settings)
    config = uvicorn_config(app, settings)
    options: dict[str, Any] = {
        "ws": config.ws,
        "ws_per_message_deflate": config.ws_per_message_deflate,
    }
    async with serve(app, **options) as url:
        endpoint = url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        async with connect(endpoint, compression="deflate", max_size=2**20) as ws:
            await ws.recv()  # Engine.IO OPEN
            token = Authenticator(settings).issue("alice")
            await ws.send("40/ai," + json.dumps({"token": token}))
            await ws.recv()
            await ws.send('42/ai,["chat:start",{"message":"long"}]')
            chunks: list[str] = []
            while True:
                frame = str(await ws.recv())
                if not frame.startswith("42/ai,"):
                    continue
                name, payload, *_ = json.loads(frame[len("42/ai,") :])
                if name == "chat:message":
                    chunks.append(payload["content"])
                elif name == "chat:end":
                    break
    assert "".join(chunks) == "".join(tokens) == payload["content"]
    assert {len(chunk) for chunk in chunks} >= {100, 1_000, 70_000}
