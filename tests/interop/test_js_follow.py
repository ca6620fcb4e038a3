"""The official socket.io-client follows a reply another socket started: join, resume, stop.

A python-socketio client starts a slow reply; the JS client joins its
conversation, resumes it at an offset as a reloaded page would, or stops it
from another tab, on each transport. Its text, put together at each chunk's
offset, must be the saved reply's.
"""

from __future__ import annotations

import pytest

from tests.conftest import Client, Gateway
from tests.interop.test_js_client import (
    _require_node,  # noqa: F401 - the autouse fixture that skips without Node
    run_client,
    utf16_len,
)
from tokenwire.testing import Script

pytestmark = pytest.mark.node

on_each_transport = pytest.mark.parametrize(
    "transports",
    ["websocket", None, "polling"],
    ids=["websocket", "polling-then-upgrade", "polling"],
)


def slow(count: int = 40, delay_s: float = 0.03) -> Script:
    return Script(tokens=[f"w{i}é👋 " for i in range(count)], delay_s=delay_s)


async def started(gateway: Gateway, client: Client, script: Script) -> dict[str, str]:
    gateway.upstream.enqueue(script)
    ack = await client.call("chat:start", {"message": "hi"})
    assert ack["ok"] is True, ack
    await client.wait_for("chat:message")
    return ack  # type: ignore[no-any-return]


@on_each_transport
async def test_js_client_joins_mid_reply_and_holds_the_saved_text(
    gateway: Gateway, client: Client, transports: str | None
) -> None:
    ack = await started(gateway, client, slow())
    run = await run_client(
        "join",
        gateway.url,
        token=gateway.token("alice"),
        transports=transports,
        extra_env={"INTEROP_CONVERSATION": ack["conversationId"]},
    )
    joined = run.ack("join")
    assert joined["ok"] is True and joined["streaming"]["messageId"] == ack["messageId"]
    saved = await gateway.services.repository.get_message(ack["messageId"])
    assert run.one("_text") == {
        "text": saved.content,
        "length": utf16_len(saved.content),
        "misplaced": 0,
    }
    assert run.one("chat:end")["content"] == saved.content


@on_each_transport
async def test_js_client_resumes_after_a_reload_at_its_offset(
    gateway: Gateway, client: Client, transports: str | None
) -> None:
    ack = await started(gateway, client, slow())
    await client.wait_for("chat:message")
    await client.disconnect()  # the page reloads
    held = "".join(c["content"] for c in client.named("chat:message"))
    offset = utf16_len(held)
    run = await run_client(
        "resume",
        gateway.url,
        token=gateway.token("alice"),
        transports=transports,
        extra_env={"INTEROP_MESSAGE_ID": ack["messageId"], "INTEROP_OFFSET": str(offset)},
    )
    assert run.ack("resume")["ok"] is True
    assert run.named("chat:message")[0]["offset"] == offset
    saved = await gateway.services.repository.get_message(ack["messageId"])
    rest = run.one("_text")
    assert rest["misplaced"] == 0
    assert held + rest["text"] == saved.content == run.one("chat:end")["content"]


async def test_js_client_stops_a_reply_started_in_another_tab(
    gateway: Gateway, client: Client
) -> None:
    ack = await started(gateway, client, slow(count=300, delay_s=0.02))
    run = await run_client(
        "stop-id",
        gateway.url,
        token=gateway.token("alice"),
        extra_env={"INTEROP_MESSAGE_ID": ack["messageId"]},
    )
    assert run.ack("stop") == {
        "ok": True,
        "stopped": True,
        "conversationId": ack["conversationId"],
        "messageId": ack["messageId"],
    }
    stopped = (await client.wait_for("chat:stopped"))[1]
    saved = await gateway.services.repository.get_message(ack["messageId"])
    assert saved.status == "stopped" and stopped["content"] == saved.content
    # Someone else's tab cannot: answered as for a missing reply.
    other = await started(gateway, client, slow(count=100, delay_s=0.02))
    refused = await run_client(
        "stop-id",
        gateway.url,
        token=gateway.token("bob"),
        extra_env={"INTEROP_MESSAGE_ID": other["messageId"]},
    )
    assert refused.ack("stop") == {"ok": True, "stopped": False}
