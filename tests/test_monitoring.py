"""Prometheus metrics, and the live /admin namespace for operators."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
import socketio

from tests.conftest import Client, Gateway, GatewayFactory
from tokenwire.testing import Script


async def test_metrics_count_replies_tokens_errors_and_latency(
    gateway: Gateway, client: Client
) -> None:
    gateway.upstream.enqueue(Script(tokens=["a", "b", "c"]), Script(status=500))
    await client.emit("chat:start", {"message": "hi"})
    end = (await client.wait_for("chat:end"))[1]
    await client.emit("chat:start", {"message": "again", "conversationId": end["conversationId"]})
    await client.wait_for("chat:error")
    await client.call("chat:start", {"message": 5})
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    text = response.text
    assert "tokenwire_connections 1.0" in text
    assert 'tokenwire_replies_started_total{model="gpt-4"} 2.0' in text
    assert 'tokenwire_replies_finished_total{finish_reason="stop",status="complete"} 1.0' in text
    assert "tokenwire_tokens_out_total 3.0" in text
    assert 'tokenwire_errors_total{code="UPSTREAM_ERROR"} 1.0' in text
    assert 'tokenwire_errors_total{code="VALIDATION_ERROR"} 1.0' in text
    assert "tokenwire_upstream_ttft_seconds_count 1.0" in text
    assert 'tokenwire_event_handling_seconds_count{event="chat:start"} 3.0' in text


async def test_metrics_token_is_required_when_set(gateway_factory: GatewayFactory) -> None:
    async with (
        gateway_factory(metrics_token="scrape-me") as gw,
        httpx.AsyncClient(base_url=gw.url) as http,
    ):
        assert (await http.get("/metrics")).status_code == 401
        assert (
            await http.get("/metrics", headers={"Authorization": "Bearer wrong"})
        ).status_code == 401
        ok = await http.get("/metrics", headers={"Authorization": "Bearer scrape-me"})
        assert ok.status_code == 200 and "tokenwire_connections" in ok.text


async def _admin(gw: Gateway, token: str) -> tuple[socketio.AsyncClient, list[tuple[str, Any]]]:
    sio = socketio.AsyncClient(reconnection=False)
    seen: list[tuple[str, Any]] = []
    for name in ("admin:history", "admin:stats"):
        sio.on(name, (lambda n: lambda data: seen.append((n, data)))(name), namespace="/admin")
    await sio.connect(
        gw.url,
        namespaces=["/admin"],
        auth={"token": token},
        transports=["websocket"],
        wait_timeout=5,
    )
    return sio, seen


async def test_admin_namespace_refuses_non_admins(gateway: Gateway) -> None:
    sio = socketio.AsyncClient(reconnection=False)
    errors: list[Any] = []
    sio.on("connect_error", errors.append, namespace="/admin")
    with pytest.raises(socketio.exceptions.ConnectionError):
        await sio.connect(
            gateway.url,
            namespaces=["/admin"],
            auth={"token": gateway.token("bob")},
            transports=["websocket"],
            wait_timeout=5,
        )
    assert errors[0]["message"] == "unauthorized"
    if sio.eio.http is not None:
        await sio.eio.http.close()
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        response = await http.get(
            "/api/admin/stats", headers={"Authorization": f"Bearer {gateway.token('bob')}"}
        )
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "FORBIDDEN"


async def test_admin_sees_live_figures_and_can_stop_any_reply(
    gateway_factory: GatewayFactory, client_factory: Any
) -> None:
    async with gateway_factory(admin_users="ops") as gw:
        gw.upstream.enqueue(Script(count=400, delay_s=0.01))
        user = client_factory()
        await user.connect(gw.url, gw.token("alice"))
        ack = await user.call("chat:start", {"message": "long"})
        await user.wait_for("chat:message")

        admin, seen = await _admin(gw, gw.token("ops"))  # an ADMIN_USERS member
        try:
            for _ in range(40):
                stats = [data for name, data in seen if name == "admin:stats"]
                if stats and stats[-1]["replies"] and stats[-1]["tokensPerS"] > 0:
                    break
                await asyncio.sleep(0.1)
            assert seen[0][0] == "admin:history"
            latest = stats[-1]
            assert latest["connections"] == 1 and latest["streaming"] == 1
            assert latest["ttftP50Ms"] is not None
            assert latest["replies"][0]["messageId"] == ack["messageId"]
            assert latest["replies"][0]["userId"] == "alice"

            result = await admin.call(
                "admin:stop", {"messageId": ack["messageId"]}, namespace="/admin"
            )
            assert result == {"ok": True, "messageId": ack["messageId"]}
            stopped = (await user.wait_for("chat:stopped"))[1]
            assert stopped["messageId"] == ack["messageId"]
            again = await admin.call(
                "admin:stop", {"messageId": ack["messageId"]}, namespace="/admin"
            )
            assert again["error"]["code"] == "NOT_FOUND"
            bad = await admin.call("admin:stop", "nope", namespace="/admin")
            assert bad["error"]["code"] == "VALIDATION_ERROR"
        finally:
            await admin.disconnect()
        async with httpx.AsyncClient(base_url=gw.url) as http:
            token = gw.token("root", role="admin")  # a role=admin claim works too
            body = (
                await http.get("/api/admin/stats", headers={"Authorization": f"Bearer {token}"})
            ).json()
            assert body["usageByModel"]["gpt-4"]["replies"] == 1
