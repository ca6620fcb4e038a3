"""Which `streaming` replies are abandoned: only those of a node whose lease lapsed.

A reply may wait minutes for its first token (a long prompt on a CPU model,
a reasoning model, a queued request); it is alive all along, and neither its
own node nor another one sharing the database may mark it interrupted.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import timedelta

import pytest

from tests.conftest import Client, GatewayFactory
from tokenwire.storage import Turn
from tokenwire.storage.models import utcnow
from tokenwire.testing import Script

INTERVAL = 0.2  # CHECKPOINT_INTERVAL_S: a sweep every 0.6 s


async def _status(gw: object, message_id: str) -> str:
    message = await gw.services.repository.get_message(message_id)  # type: ignore[attr-defined]
    return str(message.status)


async def test_a_reply_silent_for_many_checkpoint_intervals_is_never_swept(
    gateway_factory: GatewayFactory, client_factory: type[Client], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tokenwire")
    async with gateway_factory(checkpoint_interval_s=INTERVAL) as gw:
        client = client_factory()
        await client.connect(gw.url, gw.token())
        # The first token after 2 s: more than three sweeps' worth of silence.
        gw.upstream.enqueue(Script(tokens=["late ", "but ", "alive"], first_delay_s=2.0))
        ack = await client.call("chat:start", {"message": "a long prompt"})
        for _ in range(6):
            await asyncio.sleep(0.3)
            assert await _status(gw, ack["messageId"]) == "streaming"
        end = (await client.wait_for("chat:end", timeout=10))[1]
        assert end["content"] == "late but alive"
        assert await _status(gw, ack["messageId"]) == "complete"
    assert not [r for r in caplog.records if "abandoned" in r.getMessage()]


async def test_another_node_sweeps_only_a_dead_nodes_replies(
    gateway_factory: GatewayFactory, client_factory: type[Client], database_url: str
) -> None:
    """Two nodes on one database: B leaves A's silent live reply alone, ends a dead node's."""
    settings = {"checkpoint_interval_s": INTERVAL, "database_url": database_url}
    async with gateway_factory(**settings) as a, gateway_factory(**settings) as b:
        assert a.services.chat.node_id != b.services.chat.node_id
        dead = Turn.new(None)
        repository = b.services.repository
        await repository.begin_turn(
            dead, user_id="carol", text="left behind", model="gpt-4", node_id="a-dead-node"
        )
        client = client_factory()
        await client.connect(a.url, a.token())
        a.upstream.enqueue(Script(tokens=["still ", "here"], first_delay_s=2.0))
        ack = await client.call("chat:start", {"message": "think hard"})
        await asyncio.sleep(1.5)  # two sweeps on each node
        assert await _status(a, ack["messageId"]) == "streaming"
        assert await _status(b, dead.assistant_message_id) == "interrupted"
        end = (await client.wait_for("chat:end", timeout=10))[1]
        assert end["content"] == "still here"


async def test_a_reply_swept_while_its_node_lived_is_taken_back(
    gateway_factory: GatewayFactory, client_factory: type[Client]
) -> None:
    """A node that missed its leases (a long pause) reclaims its replies at its next checkpoint,
    the ones still waiting for their first token as well as the ones that grew."""
    async with gateway_factory(checkpoint_interval_s=60) as gw:
        chat = gw.services.chat
        talking, silent = client_factory(), client_factory()
        await talking.connect(gw.url, gw.token("ann"))
        await silent.connect(gw.url, gw.token("ben"))
        gw.upstream.enqueue(Script(count=50, delay_s=0.05), Script(count=3, first_delay_s=2))
        acks = [await talking.call("chat:start", {"message": "long"})]
        await talking.wait_for("chat:message")
        acks.append(await silent.call("chat:start", {"message": "thinking"}))
        # Another node, with a clock far ahead, finds this node's lease lapsed.
        swept = await chat.repository.sweep_stale("other-node", utcnow() + timedelta(hours=1))
        assert swept == 2
        assert [await _status(gw, a["messageId"]) for a in acks] == ["interrupted"] * 2
        await asyncio.sleep(0.1)
        assert await chat.checkpoint_once() == 1  # one of them grew
        assert [await _status(gw, a["messageId"]) for a in acks] == ["streaming"] * 2
        assert await chat.sweep_stale() == 0  # its own lease is fresh again
        for client, ack in zip((talking, silent), acks, strict=True):
            await client.wait_for("chat:end", timeout=10)
            assert await _status(gw, ack["messageId"]) == "complete"
