"""`AsyncServer.disconnect()` never returns while a polling client is not polling; with no clients it raises.

`engineio.AsyncServer.disconnect()` (what a server calls on shutdown, and
what python-socketio's own disconnect-all ends in) closes each socket with
`wait=True`: it queues a CLOSE packet and waits until the client has taken
it. A polling client that completed the handshake and never polled again (a
closed tab, a phone that lost its network, a health probe) never takes it,
so the call never returns, and a server awaiting it on SIGTERM never exits.
The ping timeout does not end the wait either.

Called with no sockets at all, it raises `ValueError: Set of Tasks/Futures
is empty` (`asyncio.wait` of an empty set) instead of returning.

Run: python docs/repro/disconnect_waits_for_a_poll.py   (stock python-socketio, uvicorn, aiohttp)
Exit status 0 when both behaviours reproduce.
"""

import asyncio
import socket

import aiohttp
import socketio
import uvicorn

sio = socketio.AsyncServer(async_mode="asgi", ping_interval=1, ping_timeout=1)


async def main() -> int:
    try:
        await sio.eio.disconnect()
        empty = "returned"
    except ValueError as exc:
        empty = f"ValueError: {exc}"

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(socketio.ASGIApp(sio), port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.05)
    async with aiohttp.ClientSession() as http:  # the handshake, and no poll after it
        async with http.get(f"http://127.0.0.1:{port}/socket.io/?EIO=4&transport=polling") as r:
            await r.read()
    try:
        # Longer than ping_interval + ping_timeout: the heartbeat does not end the wait.
        await asyncio.wait_for(sio.eio.disconnect(), 5)
        unpolled = "returned"
    except TimeoutError:
        unpolled = "still waiting after 5 s"
    server.should_exit = True
    server.force_exit = True
    await serving
    print(f"disconnect() with no clients: {empty}")
    print(f"disconnect() with a client that stopped polling: {unpolled}")
    if empty.startswith("ValueError") and unpolled.startswith("still waiting"):
        print("REPRODUCED: disconnect() raises with no clients and never returns for an unpolled session")
        return 0
    print("not reproduced")
    return 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
