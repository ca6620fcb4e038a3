"""EVENT packets whose payload is not a list starting with a string: tracebacks, or dispatched anyway.

Socket.IO's EVENT payload is a JSON array whose first element is the event
name. python-socketio indexes `data[0]` without checking it:

- `42{}` and `42[]` raise KeyError / IndexError inside the packet handler:
  a logged traceback per frame (a client can fill the error log), no answer;
- `42[1,2]` dispatches an event whose name is the integer 1 (to a `*`
  catch-all handler, or to `trigger_event` of a namespace class);
- `42"connect"` dispatches the string's first character, `c`, as the name.

Run: python docs/repro/malformed_event_payloads.py   (stock python-socketio, uvicorn, websockets)
Exit status 0 when the behaviour reproduces.
"""

import asyncio
import logging
import socket

import socketio
import uvicorn
from websockets.asyncio.client import connect as ws_connect


class Errors(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(repr(record.exc_info[1]) if record.exc_info else record.getMessage())


errors = Errors()
logging.getLogger("engineio.server").addHandler(errors)
logging.getLogger("engineio.server").propagate = False
sio = socketio.AsyncServer(async_mode="asgi")
dispatched: list[object] = []


@sio.on("*")
async def any_event(event, sid, *args):
    dispatched.append(event)


async def main() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(socketio.ASGIApp(sio), port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    url = f"ws://127.0.0.1:{port}/socket.io/?EIO=4&transport=websocket"
    async with ws_connect(url, proxy=None) as ws:
        await ws.recv()  # OPEN
        await ws.send("40")
        await ws.recv()  # CONNECT ack
        for frame in ("42{}", "42[]", "42[1,2]", '42"connect"'):
            await ws.send(frame)
        await asyncio.sleep(0.5)
    server.should_exit = True
    await serving
    print("logged errors:", errors.seen)
    print("dispatched event names:", dispatched)
    if len(errors.seen) == 2 and dispatched == [1, "c"]:
        print("REPRODUCED: two tracebacks, and events named 1 and 'c' dispatched")
        return 0
    print("not reproduced")
    return 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
