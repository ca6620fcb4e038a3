"""UPSTREAM_MAX_CONCURRENCY: a model server that serves one request at a time (llama.cpp, Ollama).

The double serves one request at a time too, like those servers; replies
beyond the limit wait in tokenwire's line, in order, told where they stand.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from tests.conftest import Client, Gateway, GatewayFactory
from tokenwire.testing import Script

WORDS = "".join(f"token{i} " for i in range(10))


@pytest.fixture
async def one_at_a_time(gateway_factory: GatewayFactory) -> AsyncIterator[Gateway]:
    # UPSTREAM_TIMEOUT_S is shorter than a turn in line: the wait must not count.
    async with gateway_factory(upstream_max_concurrency=1, upstream_timeout_s=0.4) as gw:
        gw.upstream.max_concurrency = 1
        yield gw


async def _clients(gw: Gateway, make: Callable[[], Client], n: int) -> list[Client]:
    clients = []
    for index in range(n):
        client = make()
        await client.connect(gw.url, gw.token(f"user{index}"))
        clients.append(client)
    return clients


def _positions(client: Client) -> list[int]:
    return [e["position"] for e in client.named("chat:queued")]


async def test_replies_beyond_the_limit_wait_in_order_and_are_told_their_place(
    one_at_a_time: Gateway, client_factory: Callable[[], Client]
) -> None:
    gw = one_at_a_time
    a, b, c = await _clients(gw, client_factory, 3)
    gw.upstream.enqueue(*[Script(count=10, delay_s=0.05) for _ in range(3)])
    acks = []
    for client in (a, b, c):
        acks.append(await client.call("chat:start", {"message": "wait your turn"}))
        await asyncio.sleep(0.05)
    ends = [(await client.wait_for("chat:end", "chat:error", timeout=15)) for client in (a, b, c)]
    assert [name for name, _ in ends] == ["chat:end"] * 3
    assert [data["content"] for _, data in ends] == [WORDS] * 3
    assert _positions(a) == []  # a slot was free
    assert _positions(b) == [1, 0]
    assert _positions(c) == [2, 1, 0]
    for client, ack in zip((b, c), acks[1:], strict=True):
        assert all(e["messageId"] == ack["messageId"] for e in client.named("chat:queued"))
        # Told after the turn was announced, and before any of the reply.
        order = client.order()
        assert order.index("chat:user-message") < order.index("chat:queued")
        assert order.index("chat:queued") < order.index("chat:message")
    assert gw.upstream.peak_active == 1
    # In order: each request went out after the previous reply ended.
    assert [r.messages[-1]["content"] for r in gw.upstream.requests] == ["wait your turn"] * 3


async def test_stop_and_disconnect_while_queued(
    one_at_a_time: Gateway, client_factory: Callable[[], Client]
) -> None:
    gw = one_at_a_time
    a, b, c, d = await _clients(gw, client_factory, 4)
    gw.upstream.enqueue(Script(count=10, delay_s=0.2), Script(count=10), Script(count=10))
    await a.call("chat:start", {"message": "first"})
    b_ack = await b.call("chat:start", {"message": "second"})
    await b.wait_for("chat:queued")
    c_ack = await c.call("chat:start", {"message": "third"})
    await c.wait_for("chat:queued")
    await d.call("chat:start", {"message": "fourth"})
    await d.wait_for("chat:queued")
    assert (_positions(b), _positions(c), _positions(d)) == ([1], [2], [3])

    stopped = await b.call("chat:stop")
    assert stopped["ok"] is True and stopped["stopped"] is True
    assert (await b.wait_for("chat:stopped"))[1]["content"] == ""
    await c.disconnect()  # its reply keeps its place, is generated and saved
    for _ in range(100):
        if _positions(d)[-1] == 2:
            break
        await asyncio.sleep(0.02)
    assert _positions(d) == [3, 2]

    assert (await a.wait_for("chat:end", timeout=10))[1]["content"] == WORDS
    assert (await d.wait_for("chat:end", timeout=10))[1]["content"] == WORDS
    repository = gw.services.repository
    b_saved = await repository.get_message(b_ack["messageId"])
    assert (b_saved.status, b_saved.content) == ("stopped", "")
    c_saved = await repository.get_message(c_ack["messageId"])
    assert (c_saved.status, c_saved.content) == ("complete", WORDS)
    assert [r.messages[-1]["content"] for r in gw.upstream.requests] == ["first", "third", "fourth"]


async def test_the_wait_has_its_own_timeout(
    gateway_factory: GatewayFactory, client_factory: Callable[[], Client]
) -> None:
    async with gateway_factory(upstream_max_concurrency=1, upstream_queue_timeout_s=0.3) as gw:
        a, b = await _clients(gw, client_factory, 2)
        gw.upstream.enqueue(Script(count=20, delay_s=0.05))
        await a.call("chat:start", {"message": "long"})
        b_ack = await b.call("chat:start", {"message": "waits too long"})
        error = (await b.wait_for("chat:error", timeout=5))[1]
        assert error["code"] == "UPSTREAM_TIMEOUT" and "busy" in error["message"]
        assert error["messageId"] == b_ack["messageId"]
        saved = await gw.services.repository.get_message(b_ack["messageId"])
        assert saved.status == "error"
        await a.wait_for("chat:end", timeout=10)
        assert len(gw.upstream.requests) == 1


async def test_shutdown_interrupts_the_queued_and_lets_the_running_finish(
    one_at_a_time: Gateway, client_factory: Callable[[], Client]
) -> None:
    gw = one_at_a_time
    a, b = await _clients(gw, client_factory, 2)
    gw.upstream.enqueue(Script(count=10, delay_s=0.1))
    await a.call("chat:start", {"message": "running"})
    b_ack = await b.call("chat:start", {"message": "queued"})
    await b.wait_for("chat:queued")
    shutdown = asyncio.create_task(gw.services.chat.shutdown(5))
    error: Any = (await b.wait_for("chat:error", timeout=2))[1]
    assert error["code"] == "SERVER_SHUTDOWN" and error["messageId"] == b_ack["messageId"]
    assert not a.named("chat:end")  # b did not wait for a's reply to end
    assert (await a.wait_for("chat:end", timeout=5))[1]["content"] == WORDS
    await shutdown
    saved = await gw.services.repository.get_message(b_ack["messageId"])
    assert (saved.status, saved.content) == ("interrupted", "")
    assert len(gw.upstream.requests) == 1
