"""A polling client's CLOSE packet leaves its pending long-poll GET hanging.

An Engine.IO client that closes sends a CLOSE packet (`1`) in a POST while
its previous GET (the long-poll) is still waiting. python-engineio marks the
session closed but does not answer that GET: it stays open until the ping
interval and timeout pass (45 s with the defaults), holding a connection
and a request task. The reference server (Node `engine.io`) ends the pending
poll at once. Browsers closing a tab and load balancers notice: the request
looks hung.

Run: python docs/repro/close_does_not_wake_long_poll.py   (stock python-socketio, uvicorn, aiohttp)
Exit status 0 when the behaviour reproduces.
"""

import asyncio
import json
import socket
import time

import aiohttp
import socketio
import uvicorn

sio = socketio.AsyncServer(async_mode="asgi")  # ping_interval=25, ping_timeout=20


async def main() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(socketio.ASGIApp(sio), port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    base = f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling"
    async with aiohttp.ClientSession() as http:
        async with http.get(base) as response:
            sid = json.loads((await response.text())[1:])["sid"]
        url = f"{base}&sid={sid}"
        async with http.post(url, data="40") as response:  # Socket.IO CONNECT to "/"
            await response.read()
        async with http.get(url) as response:  # the CONNECT ack
            await response.read()
        poll = asyncio.create_task(http.get(url))  # the long-poll, nothing to send yet
        await asyncio.sleep(0.5)
        async with http.post(url, data="1") as response:  # CLOSE
            close_status = response.status
        started = time.monotonic()
        done, _ = await asyncio.wait({poll}, timeout=3)
        waited = time.monotonic() - started
        poll.cancel()
    server.should_exit = True
    server.force_exit = True  # the hanging poll would hold up a graceful exit
    await serving
    print(f"CLOSE answered {close_status}; long-poll {'answered' if done else 'still pending'} after {waited:.1f} s")
    if not done:
        print("REPRODUCED: the pending long-poll was not answered after the client's CLOSE")
        return 0
    print("not reproduced")
    return 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
