"""A WebSocket frame that is not an Engine.IO packet leaves the session open until the ping timeout.

python-engineio decodes each frame outside the handler's error handling:
a frame like `x` (no packet type) or an empty one raises out of the
WebSocket handler. The exception is logged, the WebSocket is closed by the
ASGI server, but the Engine.IO session is not: it stays in `server.sockets`,
Socket.IO still counts the client as connected, and `disconnect` runs only
when the ping timeout notices, PING_INTERVAL + PING_TIMEOUT later (45 s
with the defaults). One bad client frame costs a session that long.

A frame larger than `max_http_buffer_size`, by comparison, ends the session
at once (the handler's `except: break`); the script checks that too.

Run: python docs/repro/bad_websocket_frame_leaves_session_open.py   (stock python-socketio, uvicorn, websockets)
Exit status 0 when the behaviour reproduces.
"""

import asyncio
import json
import logging
import socket

import socketio
import uvicorn
from websockets.asyncio.client import connect as ws_connect

logging.getLogger("engineio").setLevel(logging.CRITICAL)  # the escaped exception's traceback
sio = socketio.AsyncServer(async_mode="asgi", max_http_buffer_size=1000)
disconnects: list[object] = []


@sio.event
async def disconnect(sid, reason=None):
    disconnects.append(reason)


async def still_open_after(seconds: float, sid: str) -> bool:
    await asyncio.sleep(seconds)
    return sid in sio.eio.sockets


async def main() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(socketio.ASGIApp(sio), port=port, log_level="critical"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    results = {}

    # 1. A WebSocket session sends a frame that is not an Engine.IO packet.
    url = f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
    async with ws_connect(url, proxy=None) as ws:
        sid = json.loads((await ws.recv())[1:])["sid"]  # OPEN
        await ws.send("40")
        await ws.recv()  # CONNECT ack
        await ws.send("x")
        results["frame 'x'"] = await still_open_after(2, sid)

    # For comparison: an oversized frame (over max_http_buffer_size) ends the session at once.
    async with ws_connect(url, proxy=None, max_size=None) as ws:
        sid = json.loads((await ws.recv())[1:])["sid"]
        await ws.send("40")
        await ws.recv()
        await ws.send('42["x","' + "a" * 2000 + '"]')
        oversized_still_open = await still_open_after(2, sid)

    server.should_exit = True
    server.force_exit = True
    await serving
    print(f"session still open 2 s after the bad frame: {results}; disconnect calls: {disconnects}")
    print(f"session still open 2 s after an oversized frame: {oversized_still_open}")
    if all(results.values()) and not oversized_still_open:
        print("REPRODUCED: the Engine.IO session stayed open after a frame that is not a packet "
              "(until PING_INTERVAL + PING_TIMEOUT)")
        return 0
    print("not reproduced")
    return 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
