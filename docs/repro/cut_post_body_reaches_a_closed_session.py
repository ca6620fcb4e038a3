"""A polling POST cut off half-way is handed on as if complete, even to a session that has closed.

engine.io's ASGI body reader (`translate_request`'s payload) stops at the
`http.disconnect` of a client that went away mid-body and returns what had
arrived, and `handle_post_request` decodes and dispatches it like a whole
body. If the session was closed meanwhile (a server shutdown, a ping
timeout), python-socketio's `_handle_eio_message` then looks up the closed
session's environ without a guard, and logs a KeyError traceback
("message async handler error") for every such request.

Run: python docs/repro/cut_post_body_reaches_a_closed_session.py   (stock python-socketio, uvicorn, aiohttp)
Exit status 0 when it reproduces.
"""

import asyncio
import json
import logging
import socket

import aiohttp
import socketio
import uvicorn

sio = socketio.AsyncServer(async_mode="asgi")


@sio.event(namespace="/ai")
async def connect(sid: str, environ: dict, auth: object = None) -> None:
    pass


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.seen: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.append(record)


async def main() -> int:
    records = Records()
    logging.getLogger("engineio.server").addHandler(records)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(socketio.ASGIApp(sio), port=port, log_level="critical"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling") as r:
            sid = json.loads((await r.text())[1:])["sid"]  # the OPEN packet: "0{...}"
    # A POST announcing 1000 bytes, of which only a CONNECT packet's prefix arrives.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\n"
        "Host: x\r\nContent-Length: 1000\r\n\r\n40/ai,".encode()
    )
    await writer.drain()
    await asyncio.sleep(0.3)
    # The session closes (as on shutdown), then the client's connection goes.
    await sio.eio.sockets[sid].close(wait=False, abort=True)
    writer.transport.abort()
    await asyncio.sleep(0.5)
    server.should_exit = True
    await serving
    errors = [r for r in records.seen if r.exc_info and r.exc_info[0] is KeyError]
    for record in errors:
        print(f"logged: {record.getMessage()}: KeyError {record.exc_info[1]}")  # type: ignore[index]
    if errors:
        print("REPRODUCED: a cut-off POST body was dispatched to a closed session (KeyError)")
        return 0
    print("not reproduced")
    return 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
