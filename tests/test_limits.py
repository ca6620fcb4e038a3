"""Limits keep one user from slowing down or breaking the others."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import socketio

from tests.conftest import REDIS_URL, GatewayFactory, require_service
from tokenwire.testing import Script


async def test_chat_rate_per_user_answers_rate_limit_with_retry_after(
    gateway_factory: GatewayFactory, client_factory: Any
) -> None:
    async with gateway_factory(rate_limit_chat="2/minute") as gw:
        alice, bob = client_factory(), client_factory()
        await alice.connect(gw.url, gw.token("alice"))
        await bob.connect(gw.url, gw.token("bob"))
        for _ in range(2):
            assert (await alice.call("chat:start", {"message": "hi"}))["ok"]
            await alice.wait_for("chat:end")
        refused = await alice.call("chat:start", {"message": "again"})
        assert refused["error"]["code"] == "RATE_LIMIT"
        assert 0 < refused["error"]["retryAfter"] <= 60
        error = (await alice.wait_for("chat:error"))[1]
        assert error["retryAfter"] == refused["error"]["retryAfter"]
        # Bob has his own budget.
        assert (await bob.call("chat:start", {"message": "hi"}))["ok"]


async def test_concurrent_replies_per_user_are_capped(
    gateway_factory: GatewayFactory, client_factory: Any
) -> None:
    async with gateway_factory(max_streams_per_user=1) as gw:
        gw.upstream.enqueue(Script(count=100, delay_s=0.02))
        first, second = client_factory(), client_factory()
        await first.connect(gw.url, gw.token("alice"))
        await second.connect(gw.url, gw.token("alice"))
        assert (await first.call("chat:start", {"message": "one"}))["ok"]
        refused = await second.call("chat:start", {"message": "two"})
        assert refused["error"]["code"] == "RATE_LIMIT"
        await first.call("chat:stop")
        assert (await second.call("chat:start", {"message": "two"}))["ok"]


async def test_connections_per_user_are_capped(
    gateway_factory: GatewayFactory, client_factory: Any
) -> None:
    async with gateway_factory(max_connections_per_user=2) as gw:
        clients = [client_factory() for _ in range(3)]
        for c in clients[:2]:
            await c.connect(gw.url, gw.token("alice"))
        with pytest.raises(socketio.exceptions.ConnectionError):
            await clients[2].connect(gw.url, gw.token("alice"))
        assert clients[2].connect_error["message"] == "rate_limited"
        other = client_factory()
        await other.connect(gw.url, gw.token("bob"))
        await clients[0].disconnect()
        await asyncio.sleep(0.1)
        retry = client_factory()
        await retry.connect(gw.url, gw.token("alice"))
        assert retry.sio.connected


async def test_connection_attempts_per_ip_are_capped(
    gateway_factory: GatewayFactory, client_factory: Any
) -> None:
    async with gateway_factory(connect_rate_per_ip="3/minute") as gw:
        for _ in range(3):
            c = client_factory()
            await c.connect(gw.url, gw.token("alice"))
            await c.disconnect()
        late = client_factory()
        with pytest.raises(socketio.exceptions.ConnectionError):
            await late.connect(gw.url, gw.token("alice"))
        assert late.connect_error["message"] == "rate_limited"
        assert late.connect_error["data"]["retryAfter"] > 0


@pytest.mark.redis
async def test_redis_makes_every_node_count_against_one_budget(
    gateway_factory: GatewayFactory, client_factory: Any
) -> None:
    require_service("Redis", REDIS_URL, 6379)
    import redis.asyncio as aioredis

    store = aioredis.from_url(REDIS_URL)
    await store.flushdb()
    await store.aclose()
    async with (
        gateway_factory(rate_limit_chat="2/minute", redis_url=REDIS_URL) as node_a,
        gateway_factory(rate_limit_chat="2/minute", redis_url=REDIS_URL) as node_b,
    ):
        on_a, on_b = client_factory(), client_factory()
        await on_a.connect(node_a.url, node_a.token("alice"))
        await on_b.connect(node_b.url, node_b.token("alice"))
        assert (await on_a.call("chat:start", {"message": "1"}))["ok"]
        await on_a.wait_for("chat:end")
        assert (await on_b.call("chat:start", {"message": "2"}))["ok"]
        await on_b.wait_for("chat:end")
        assert (await on_a.call("chat:start", {"message": "3"}))["error"]["code"] == "RATE_LIMIT"
        assert (await on_b.call("chat:start", {"message": "4"}))["error"]["code"] == "RATE_LIMIT"


async def test_client_that_stops_reading_is_cut_off_and_its_reply_is_saved(
    gateway_factory: GatewayFactory,
) -> None:
    """A long-polling client that never polls again: its queue would grow forever."""
    async with gateway_factory(max_socket_backlog=8) as gw:
        # Once the client lags, chunks coalesce (one frame per 50 ms), so the
        # queue grows slowly; 400 tokens over ~2 s overflow 8 frames for sure.
        gw.upstream.enqueue(Script(count=400, delay_s=0.005))
        async with httpx.AsyncClient(base_url=gw.url, timeout=10) as http:
            opened = await http.get("/socket.io/", params={"EIO": "4", "transport": "polling"})
            sid = opened.text.split('"sid":"')[1].split('"')[0]
            params = {"EIO": "4", "transport": "polling", "sid": sid}
            await http.post(
                "/socket.io/", params=params, content='40/ai,{"token":"' + gw.token() + '"}'
            )
            connected = await http.get("/socket.io/", params=params)
            assert connected.text.startswith("40/ai,")
            await http.post(
                "/socket.io/", params=params, content='42/ai,["chat:start",{"message":"hi"}]'
            )
            # ... and never poll again.
            for _ in range(300):
                if gw.upstream.requests and gw.upstream.requests[-1].finished.is_set():
                    break
                await asyncio.sleep(0.05)
            assert gw.app.sio.eio.sockets.get(sid) is None or gw.app.sio.eio.sockets[sid].closed
        for _ in range(100):
            rows, _ = await gw.services.repository.list_conversations("alice", limit=1, offset=0)
            messages = (
                await gw.services.repository.list_messages("alice", rows[0].id) if rows else []
            )
            if messages and messages[-1].status != "streaming":
                break
            await asyncio.sleep(0.05)
        assert messages[-1].status == "complete"
        assert messages[-1].content == "".join(f"token{i} " for i in range(400))


async def test_memory_counters_sweep_expired_keys_at_most_once_a_second() -> None:
    # limits' MemoryStorage walks every key it holds after every hit; at
    # 1,000 users that was ~200 µs per chat:start. The sweep now runs at most
    # once a second, and counting is unchanged.
    from limits import parse
    from limits.aio.strategies import SlidingWindowCounterRateLimiter

    from tokenwire.chat.limits import SweepingMemoryStorage

    storage = SweepingMemoryStorage()
    limiter = SlidingWindowCounterRateLimiter(storage)
    item = parse("3/minute")
    sweeps = []
    for user in range(200):
        assert await limiter.hit(item, "chat", f"u{user}")
        await asyncio.sleep(0)  # as between two chat:starts: a started sweep runs and ends
        if storage.timer is not None and (not sweeps or sweeps[-1] is not storage.timer):
            sweeps.append(storage.timer)
    assert len(sweeps) == 1
    assert [await limiter.hit(item, "chat", "u0") for _ in range(3)] == [True, True, False]
    storage._swept_at -= 1.0  # a second later
    await asyncio.sleep(0)  # the first sweep has run by now
    assert await limiter.hit(item, "chat", "u1")
    assert storage.timer is not sweeps[0]
