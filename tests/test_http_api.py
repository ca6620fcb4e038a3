"""The REST API: a user sees only their own conversations; someone else's id answers 404 like a missing one."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import Client, Gateway
from tokenwire.testing import Script


async def _converse(
    client: Client, text: str, conversation_id: str | None = None
) -> dict[str, Any]:
    payload: dict[str, Any] = {"message": text}
    if conversation_id:
        payload["conversationId"] = conversation_id
    await client.emit("chat:start", payload)
    end: dict[str, Any] = (await client.wait_for("chat:end"))[1]
    return end


async def test_conversations_and_messages_for_their_owner(gateway: Gateway, client: Client) -> None:
    gateway.upstream.enqueue(Script(tokens=["A"]), Script(tokens=["B"]), Script(tokens=["C"]))
    first = await _converse(client, "first conversation")
    await _converse(client, "follow-up", first["conversationId"])
    second = await _converse(client, "second conversation")
    headers = {"Authorization": f"Bearer {gateway.token('alice')}"}
    async with httpx.AsyncClient(base_url=gateway.url, headers=headers) as http:
        page = (await http.get("/api/conversations")).json()
        assert [c["id"] for c in page["items"]] == [
            second["conversationId"],
            first["conversationId"],
        ]
        assert page["total"] == 2
        assert page["items"][1]["title"] == "first conversation"
        assert set(page["items"][0]) == {"id", "title", "model", "createdAt", "updatedAt"}
        paged = (await http.get("/api/conversations", params={"limit": 1, "offset": 1})).json()
        assert [c["id"] for c in paged["items"]] == [first["conversationId"]]

        messages = (await http.get(f"/api/conversations/{first['conversationId']}/messages")).json()
        assert [(m["role"], m["content"], m["status"]) for m in messages] == [
            ("user", "first conversation", "complete"),
            ("assistant", "A", "complete"),
            ("user", "follow-up", "complete"),
            ("assistant", "B", "complete"),
        ]
        assert set(messages[1]) == {
            "id",
            "role",
            "content",
            "status",
            "finishReason",
            "model",
            "promptTokens",
            "completionTokens",
            "usageSource",
            "reasoning",
            "reasoningMs",
            "createdAt",
        }
        assert messages[1]["finishReason"] == "stop" and messages[1]["completionTokens"] == 1

        deleted = await http.delete(f"/api/conversations/{first['conversationId']}")
        assert deleted.status_code == 204
        gone = await http.get(f"/api/conversations/{first['conversationId']}/messages")
        assert gone.status_code == 404


async def test_other_users_ids_answer_exactly_like_missing_ones(
    gateway: Gateway, client: Client
) -> None:
    mine = await _converse(client, "private")
    bob = {"Authorization": f"Bearer {gateway.token('bob')}"}
    async with httpx.AsyncClient(base_url=gateway.url, headers=bob) as http:
        assert (await http.get("/api/conversations")).json()["items"] == []
        theirs = await http.get(f"/api/conversations/{mine['conversationId']}/messages")
        missing = await http.get("/api/conversations/nope/messages")
        assert theirs.status_code == missing.status_code == 404
        assert (
            theirs.json()
            == missing.json()
            == {"error": {"code": "NOT_FOUND", "message": "Conversation not found."}}
        )
        assert (
            await http.delete(f"/api/conversations/{mine['conversationId']}")
        ).status_code == 404
    # And alice's conversation is untouched.
    messages = await gateway.services.repository.list_messages("alice", mine["conversationId"])
    assert len(messages) == 2


async def test_requests_without_a_valid_token_get_401(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        for headers in ({}, {"Authorization": "Bearer nope"}, {"Authorization": "Basic abc"}):
            response = await http.get("/api/conversations", headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "UNAUTHORIZED"
            assert response.headers["www-authenticate"] == "Bearer"


async def test_bad_query_is_a_validation_error(gateway: Gateway) -> None:
    headers = {"Authorization": f"Bearer {gateway.token()}"}
    async with httpx.AsyncClient(base_url=gateway.url, headers=headers) as http:
        response = await http.get("/api/conversations", params={"limit": 0})
        assert response.status_code == 422
        assert response.json()["error"]["code"] == "VALIDATION_ERROR"


async def test_health_models_and_docs(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        ready = await http.get("/readyz")
        assert ready.status_code == 200 and ready.json()["database"] == "ok"
        assert (await http.get("/api/models")).json() == {"default": "gpt-4", "models": ["gpt-4"]}
        assert (await http.get("/openapi.json")).status_code == 200


async def test_delete_stops_a_reply_streaming_in_that_conversation(
    gateway: Gateway, client: Client
) -> None:
    gateway.upstream.enqueue(Script(count=300, delay_s=0.02))
    ack = await client.call("chat:start", {"message": "long"})
    await client.wait_for("chat:message")
    headers = {"Authorization": f"Bearer {gateway.token('alice')}"}
    async with httpx.AsyncClient(base_url=gateway.url, headers=headers) as http:
        response = await http.delete(f"/api/conversations/{ack['conversationId']}")
    assert response.status_code == 204
    stopped = (await client.wait_for("chat:stopped"))[1]
    assert stopped["messageId"] == ack["messageId"]
    assert len(gateway.services.chat.replies) == 0


async def test_dev_token_route_exists_only_in_development(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as http:
        response = await http.post("/api/dev/token", json={"name": "erin"})
        assert response.status_code == 200
        body = response.json()
        assert body["userId"] == "erin"
        principal = await gateway.services.authenticator.verify(body["token"])
        assert principal.user_id == "erin"
        assert (await http.post("/api/dev/token", json={"name": ""})).status_code == 422


async def test_dev_token_route_is_absent_in_production(gateway_factory: Any) -> None:
    async with gateway_factory(env="production") as gw, httpx.AsyncClient(base_url=gw.url) as http:
        response = await http.post("/api/dev/token", json={"name": "erin"})
        assert response.status_code == 404
