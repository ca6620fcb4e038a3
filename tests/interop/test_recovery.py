"""Socket.IO connection state recovery with the official socket.io-client, unchanged.

The client runs the guide's way of reading a reply (append each chunk as it
arrives) while the connection is cut under it: by `tests.proxy`, a TCP proxy
that drops every connection at once as a failing network does, or by
socket.io's own test trick (closing the Engine.IO connection). The client
reconnects by itself with its `pid` and `offset`; it must get its session
back (`socket.recovered`, the same id) and end with exactly the saved text.
"""

from __future__ import annotations

import asyncio

from tests.conftest import Gateway
from tests.interop.test_js_client import assert_offsets, run_client, transports
from tests.proxy import cutting_proxy
from tokenwire.testing import Script


async def _saved(gateway: Gateway, message_id: str) -> str:
    messages = await gateway.services.repository.list_messages(
        "alice", (await gateway.services.repository.message_conversation(message_id))
    )
    return next(m.content for m in messages if m.id == message_id)


async def _cut_after(gateway: Gateway, proxy: object, tokens: int) -> None:
    """Cut every connection once the upstream has sent `tokens` tokens of the reply."""
    for _ in range(1000):
        requests = gateway.upstream.requests
        if requests and len(requests[-1].sent) >= tokens:
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.05)
    # Long-polling's requests come and go (an idle keep-alive connection can
    # be cut without the client noticing): keep cutting until the client has
    # noticed and opened a new Engine.IO session, then let it through.
    sessions = set(gateway.app.sio.eio.sockets)
    cut = 0
    for _ in range(400):
        if set(gateway.app.sio.eio.sockets) - sessions:
            break
        cut += proxy.cut()  # type: ignore[attr-defined]
        await asyncio.sleep(0.005)
    assert cut > 0


@transports
async def test_a_cut_connection_recovers_its_session_and_every_missed_chunk(
    gateway: Gateway, transports: str | None, settled: str
) -> None:
    del settled
    gateway.upstream.enqueue(Script(count=120, delay_s=0.01))
    port = int(gateway.url.rsplit(":", 1)[1])
    async with cutting_proxy(port) as proxy:
        cutter = asyncio.ensure_future(_cut_after(gateway, proxy, 30))
        run = await run_client(
            "recover",
            proxy.url,
            token=gateway.token("alice"),
            transports=transports,
            reconnect=True,
        )
        await cutter
    connects = run.one("_connects")
    # Cut while reconnecting too, it may take more than one reconnect; each one recovers.
    assert len(connects) >= 2, str(run)
    assert connects[1:] == [{"id": connects[0]["id"], "recovered": True}] * (len(connects) - 1)
    end = run.one("chat:end")
    expected = "".join(f"token{i} " for i in range(120))
    assert end["content"] == expected
    assert run.one("_text")["text"] == expected  # nothing missing, nothing twice
    assert_offsets(run.named("chat:message"))
    assert len(run.named("chat:end")) == 1


async def test_closing_the_engine_connection_recovers_as_socket_io_documents(
    gateway: Gateway,
) -> None:
    gateway.upstream.enqueue(Script(count=60, delay_s=0.01))
    run = await run_client(
        "recover",
        gateway.url,
        token=gateway.token("alice"),
        transports="websocket",
        reconnect=True,
        cut="engine",
    )
    connects = run.one("_connects")
    assert [c["recovered"] for c in connects] == [False, True], str(run)
    assert connects[0]["id"] == connects[1]["id"]
    assert run.one("_text")["text"] == run.one("chat:end")["content"]
    assert run.one("chat:end")["content"] == "".join(f"token{i} " for i in range(60))
