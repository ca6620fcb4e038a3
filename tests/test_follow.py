"""Following a reply from anywhere: chat:join, chat:resume, chat:stop by id, over the real socket.

Every follower's text, assembled chunk by chunk at each chunk's offset, must
equal what was saved: nothing missing, duplicated or out of place.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

from tests.conftest import Client, Gateway, GatewayFactory
from tests.test_fuzz import eventually
from tokenwire.chat.writer import utf16_len
from tokenwire.testing import Script

Factory = Callable[[], Client]


def assembled(client: Client, message_id: str, start: int = 0) -> str:
    """The reply's text as this client holds it: each chunk must start where the last ended."""
    text = ""
    for chunk in client.named("chat:message"):
        if chunk["messageId"] != message_id:
            continue
        assert chunk["offset"] == start + utf16_len(text), (chunk["offset"], text)
        text += chunk["content"]
    return text


async def connected(gateway: Gateway, factory: Factory, user: str = "alice") -> Client:
    client = factory()
    await client.connect(gateway.url, gateway.token(user))
    return client


async def saved(gateway: Gateway, message_id: str) -> Any:
    return await gateway.services.repository.get_message(message_id)


def slow(count: int = 30, delay_s: float = 0.03) -> Script:
    return Script(tokens=[f"w{i}é👋 " for i in range(count)], delay_s=delay_s)


async def test_a_second_socket_joins_mid_reply_and_gets_all_of_it(
    gateway: Gateway, client: Client, client_factory: Factory
) -> None:
    gateway.upstream.enqueue(slow())
    ack = await client.call("chat:start", {"message": "hi"})
    await client.wait_for("chat:message")
    await client.wait_for("chat:message")
    second = await connected(gateway, client_factory)
    joined = await second.call("chat:join", {"conversationId": ack["conversationId"]})
    assert joined["ok"] is True and joined["conversationId"] == ack["conversationId"]
    assert [m["role"] for m in joined["messages"]] == ["user", "assistant"]
    assert joined["streaming"]["messageId"] == ack["messageId"]
    assert joined["streaming"]["offset"] > 0
    end = (await second.wait_for("chat:end"))[1]
    await client.wait_for("chat:end")
    first_chunk = second.named("chat:message")[0]
    assert (
        first_chunk["offset"] == 0
        and utf16_len(first_chunk["content"]) >= (joined["streaming"]["offset"])
    )
    row = await saved(gateway, ack["messageId"])
    assert assembled(second, ack["messageId"]) == row.content == end["content"]
    assert assembled(client, ack["messageId"]) == row.content


async def test_a_joined_socket_receives_the_next_turn_whole(
    gateway: Gateway, client: Client, client_factory: Factory
) -> None:
    gateway.upstream.enqueue(Script(tokens=["one"]), Script(tokens=["two", " more"]))
    ack = await client.call("chat:start", {"message": "first"})
    await client.wait_for("chat:end")
    tab = await connected(gateway, client_factory)
    joined = await tab.call("chat:join", {"conversationId": ack["conversationId"]})
    assert joined["streaming"] is None and len(joined["messages"]) == 2
    await client.call("chat:start", {"message": "second", "conversationId": ack["conversationId"]})
    end = (await tab.wait_for("chat:end"))[1]
    assert tab.order() == ["chat:user-message", "chat:message", "chat:end"]
    assert tab.named("chat:user-message")[0]["content"] == "second"
    assert all(d["conversationId"] == ack["conversationId"] for _, d in tab.events)
    assert assembled(tab, end["messageId"]) == "two more"
    # After chat:leave the tab hears nothing more of it.
    left = await tab.call("chat:leave", {"conversationId": ack["conversationId"]})
    assert left == {"ok": True, "conversationId": ack["conversationId"], "left": True}
    gateway.upstream.enqueue(Script(tokens=["three"]))
    await client.call("chat:start", {"message": "third", "conversationId": ack["conversationId"]})
    await client.wait_for("chat:end")
    await client.wait_for("chat:end")
    assert len(tab.named("chat:end")) == 1


async def test_resume_after_a_reload_continues_at_the_offset(
    gateway: Gateway, client: Client, client_factory: Factory
) -> None:
    gateway.upstream.enqueue(slow())
    ack = await client.call("chat:start", {"message": "hi"})
    for _ in range(3):
        await client.wait_for("chat:message")
    await client.disconnect()  # the page reloads
    held = assembled(client, ack["messageId"])
    offset = utf16_len(held)
    reloaded = await connected(gateway, client_factory)
    resumed = await reloaded.call("chat:resume", {"messageId": ack["messageId"], "offset": offset})
    assert resumed == {
        "ok": True,
        "conversationId": ack["conversationId"],
        "messageId": ack["messageId"],
        "offset": offset,
    }
    end = (await reloaded.wait_for("chat:end"))[1]
    assert reloaded.named("chat:message")[0]["offset"] == offset
    rest = assembled(reloaded, ack["messageId"], start=offset)
    row = await saved(gateway, ack["messageId"])
    assert held + rest == row.content == end["content"]


async def test_resume_of_a_finished_reply_answers_the_tail_and_its_end(
    gateway: Gateway, client: Client, client_factory: Factory
) -> None:
    gateway.upstream.enqueue(Script(tokens=["Hel", "lo 👋", " there"]))
    ack = await client.call("chat:start", {"message": "hi"})
    await client.wait_for("chat:end")
    later = await connected(gateway, client_factory)
    await later.call("chat:resume", {"messageId": ack["messageId"], "offset": 3})
    end = (await later.wait_for("chat:end"))[1]
    assert later.order() == ["chat:message", "chat:end"]
    assert later.named("chat:message") == [
        {
            "content": "lo 👋 there",
            "isComplete": False,
            "messageId": ack["messageId"],
            "conversationId": ack["conversationId"],
            "offset": 3,
        }
    ]
    assert end["content"] == "Hello 👋 there" and end["finishReason"] == "stop"
    # At the end exactly: no chunk, only the final event.
    whole = utf16_len("Hello 👋 there")
    again = await connected(gateway, client_factory)
    await again.call("chat:resume", {"messageId": ack["messageId"], "offset": whole})
    await again.wait_for("chat:end")
    assert again.order() == ["chat:end"]


def thoughts(client: Client, message_id: str) -> str:
    """The reasoning as this client holds it: each piece must start where the last ended."""
    text = ""
    for piece in client.named("chat:reasoning"):
        if piece["messageId"] == message_id:
            assert piece["offset"] == utf16_len(text), (piece["offset"], text)
            text += piece["content"]
    return text


async def test_resume_catches_up_the_reasoning_too(
    gateway: Gateway, client: Client, client_factory: Factory
) -> None:
    """Mid-thought, mid-text and after the end: the reasoning so far comes first, at offset 0."""
    reasoning = [f"step {i} 🤔 " for i in range(10)]
    gateway.upstream.enqueue(
        Script(reasoning=reasoning, tokens=[f"w{i}é " for i in range(30)], delay_s=0.03)
    )
    ack = await client.call("chat:start", {"message": "think"})
    message_id = ack["messageId"]
    for _ in range(3):
        await client.wait_for("chat:reasoning")
    thinking = await connected(gateway, client_factory)  # reloaded while it thinks
    await thinking.call("chat:resume", {"messageId": message_id, "offset": 0})
    await client.wait_for("chat:message")
    await client.wait_for("chat:message")
    held = assembled(client, message_id)
    writing = await connected(gateway, client_factory)  # reloaded while it writes
    await writing.call("chat:resume", {"messageId": message_id, "offset": utf16_len(held)})
    end = (await client.wait_for("chat:end"))[1]
    await thinking.wait_for("chat:end")
    await writing.wait_for("chat:end")
    after = await connected(gateway, client_factory)  # reloaded after the end
    await after.call("chat:resume", {"messageId": message_id, "offset": 0})
    await after.wait_for("chat:end")

    row = await saved(gateway, message_id)
    assert row.reasoning == "".join(reasoning)
    for follower in (thinking, writing, after):
        assert thoughts(follower, message_id) == row.reasoning
        assert follower.order()[0] == "chat:reasoning"  # before any text
    assert len(thinking.named("chat:reasoning")) >= 2  # caught up, then live
    assert writing.order() == ["chat:reasoning", "chat:message", "chat:end"]
    assert held + assembled(writing, message_id, start=utf16_len(held)) == row.content
    assert assembled(thinking, message_id) == assembled(after, message_id) == end["content"]


async def test_stop_from_another_socket_stops_it_for_every_follower(
    gateway: Gateway, client: Client, client_factory: Factory
) -> None:
    gateway.upstream.enqueue(slow(count=200, delay_s=0.02))
    ack = await client.call("chat:start", {"message": "hi"})
    await client.wait_for("chat:message")
    tab = await connected(gateway, client_factory)
    await tab.call("chat:join", {"conversationId": ack["conversationId"]})
    await tab.wait_for("chat:message")
    stopped = await tab.call("chat:stop", {"messageId": ack["messageId"]})
    assert stopped == {
        "ok": True,
        "stopped": True,
        "conversationId": ack["conversationId"],
        "messageId": ack["messageId"],
    }
    mine = (await client.wait_for("chat:stopped"))[1]
    theirs = (await tab.wait_for("chat:stopped"))[1]
    row = await saved(gateway, ack["messageId"])
    assert row.status == "stopped"
    assert mine["content"] == theirs["content"] == row.content
    assert assembled(client, ack["messageId"]) == assembled(tab, ack["messageId"]) == row.content


async def test_stop_by_conversation_id_from_a_third_socket(
    gateway: Gateway, client: Client, client_factory: Factory
) -> None:
    gateway.upstream.enqueue(slow(count=200, delay_s=0.02))
    ack = await client.call("chat:start", {"message": "hi"})
    await client.wait_for("chat:message")
    other = await connected(gateway, client_factory)
    stopped = await other.call("chat:stop", {"conversationId": ack["conversationId"]})
    assert stopped["stopped"] is True and stopped["messageId"] == ack["messageId"]
    await client.wait_for("chat:stopped")
    # The stopping socket did not follow the reply: it only got the ack.
    assert other.events == []


async def test_someone_elses_reply_is_refused_like_a_missing_one(
    gateway: Gateway, client: Client, client_factory: Factory
) -> None:
    gateway.upstream.enqueue(slow(count=100, delay_s=0.02))
    ack = await client.call("chat:start", {"message": "mine"})
    await client.wait_for("chat:message")
    bob = await connected(gateway, client_factory, user="bob")
    answers = {}
    for name, real, missing in [
        ("chat:join", {"conversationId": ack["conversationId"]}, {"conversationId": "nope"}),
        ("chat:resume", {"messageId": ack["messageId"], "offset": 0}, {"messageId": "nope",
                                                                        "offset": 0}),
    ]:  # fmt: skip
        answers[name] = (await bob.call(name, real), await bob.call(name, missing))
    for refused, absent in answers.values():
        assert refused == absent
        assert refused["ok"] is False and refused["error"]["code"] == "NOT_FOUND"
    for payload in ({"messageId": ack["messageId"]}, {"conversationId": ack["conversationId"]}):
        assert await bob.call("chat:stop", payload) == {"ok": True, "stopped": False}
    assert await bob.call("chat:stop", {"messageId": "nope"}) == {"ok": True, "stopped": False}
    end = (await client.wait_for("chat:end"))[1]
    assert end["finishReason"] == "stop"  # bob's stop stopped nothing
    assert [e for e, _ in bob.events if e != "chat:error"] == []


async def test_bad_resume_offsets_are_validation_errors(
    gateway: Gateway, client: Client, client_factory: Factory
) -> None:
    gateway.upstream.enqueue(Script(tokens=["ab👋"]), slow(count=100, delay_s=0.02))
    done = await client.call("chat:start", {"message": "one"})
    await client.wait_for("chat:end")
    other = await connected(gateway, client_factory)
    running = await other.call("chat:start", {"message": "two"})
    await other.wait_for("chat:message")
    for message_id in (done["messageId"], running["messageId"]):
        for offset in (10_000, -1, "3", 1.5, None, 3):  # 3 splits the emoji of "ab👋"
            if offset == 3 and message_id == running["messageId"]:
                continue
            answer = await client.call("chat:resume", {"messageId": message_id, "offset": offset})
            assert answer["ok"] is False, (message_id, offset)
            assert answer["error"]["code"] == "VALIDATION_ERROR"
    assert (await client.call("chat:resume", "x"))["error"]["code"] == "VALIDATION_ERROR"
    assert (await client.call("chat:join", {}))["error"]["code"] == "VALIDATION_ERROR"


async def test_nothing_is_left_behind_once_replies_end_and_sockets_leave(
    gateway_factory: GatewayFactory, client_factory: Factory
) -> None:
    # A socket that goes away keeps its session (and what it follows) for
    # CONNECTION_RECOVERY_S: short here, so its release is seen too.
    async with gateway_factory(connection_recovery_s=0.5) as gateway:
        await _nothing_left_behind(gateway, client_factory)


async def _nothing_left_behind(gateway: Gateway, client_factory: Factory) -> None:
    chat = gateway.services.chat
    client = await connected(gateway, client_factory)
    gateway.upstream.enqueue(slow(count=20, delay_s=0.01))
    ack = await client.call("chat:start", {"message": "hi"})
    tabs = [await connected(gateway, client_factory) for _ in range(3)]
    await tabs[0].call("chat:join", {"conversationId": ack["conversationId"]})
    await tabs[1].call("chat:resume", {"messageId": ack["messageId"], "offset": 0})
    await client.wait_for("chat:end")
    for tab in tabs[:2]:
        await tab.wait_for("chat:end")
    await eventually(lambda: len(chat.replies) == 0, what="the reply to be dropped")
    assert chat.replies._following == {}
    assert len(chat.rooms) == 2  # the starter and the joined tab, until they go
    for c in (client, *tabs):
        await c.disconnect()
    await eventually(lambda: len(chat.rooms) == 0, what="rooms to empty")


async def test_every_follower_holds_the_saved_text_whatever_the_interleaving(
    gateway: Gateway, client_factory: Factory
) -> None:
    """Exactly once: many replies, each followed by joins and resumes at random moments,
    some stopped from another socket; each follower's text equals the saved content."""
    rng = random.Random(13)
    chat = gateway.services.chat
    # One user per reply: MAX_STREAMS_PER_USER is not what this is about.
    users = [f"user{i}" for i in range(6)]
    starters = [await connected(gateway, client_factory, user) for user in users]
    for i in range(len(starters)):
        gateway.upstream.enqueue(slow(count=40 + 5 * i, delay_s=0.01))
    acks = [await s.call("chat:start", {"message": f"q{i}"}) for i, s in enumerate(starters)]
    assert all(ack["ok"] for ack in acks), acks
    followers: list[tuple[Client, str, int]] = []  # client, messageId, starting offset
    late: list[tuple[dict[str, Any], str]] = []  # a join's saved message, messageId

    async def follow(user: str, ack: dict[str, Any]) -> None:
        await asyncio.sleep(rng.uniform(0, 0.4))
        tab = await connected(gateway, client_factory, user)
        if rng.random() < 0.5:
            joined = await tab.call("chat:join", {"conversationId": ack["conversationId"]})
            if joined["streaming"] is None:  # it had ended: the messages hold it whole
                late.append((joined["messages"][-1], ack["messageId"]))
            else:
                followers.append((tab, ack["messageId"], 0))
        else:
            offset = 0
            reply = chat.replies.get(ack["messageId"])
            if reply is not None:
                offset = utf16_len("".join(reply.parts[: rng.randint(0, len(reply.parts))]))
            answer = await tab.call(
                "chat:resume", {"messageId": ack["messageId"], "offset": offset}
            )
            assert answer["ok"] is True, answer
            followers.append((tab, ack["messageId"], offset))

    async def stop_some(user: str, ack: dict[str, Any]) -> None:
        await asyncio.sleep(rng.uniform(0.1, 0.5))
        other = await connected(gateway, client_factory, user)
        await other.call("chat:stop", {"messageId": ack["messageId"]})

    jobs = [follow(user, ack) for user, ack in zip(users, acks, strict=True) for _ in range(4)]
    jobs += [stop_some(user, ack) for user, ack in list(zip(users, acks, strict=True))[::2]]
    await asyncio.gather(*jobs)
    for tab, _, _ in followers:
        await tab.wait_for("chat:end", "chat:stopped", timeout=20)
    for starter in starters:
        await starter.wait_for("chat:end", "chat:stopped", timeout=20)
    for tab, message_id, offset in followers:
        row = await saved(gateway, message_id)
        whole = row.content.encode("utf-16-le")[offset * 2 :].decode("utf-16-le")
        assert assembled(tab, message_id, start=offset) == whole
        final = [d for e, d in tab.events if e in ("chat:end", "chat:stopped")]
        assert len(final) == 1 and final[0]["content"] == row.content
    for message, message_id in late:
        row = await saved(gateway, message_id)
        assert message["id"] == message_id and message["content"] == row.content
    for starter, ack in zip(starters, acks, strict=True):
        assert (
            assembled(starter, ack["messageId"]) == (await saved(gateway, ack["messageId"])).content
        )
    await eventually(lambda: len(chat.replies) == 0)
    assert chat.replies._following == {}
