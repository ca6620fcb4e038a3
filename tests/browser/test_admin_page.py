"""The admin dashboard in a real browser.

Two kinds of test: against a double of the `/admin` namespace that sends
exactly the contract's payloads (so every figure, table and chart is checked
against known values), and against the real namespace (counters move when a
real reply streams; Stop really stops it).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import socketio
from playwright.async_api import Page, expect

from tests.browser.conftest import BROWSER, PHONE, PageFactory
from tests.conftest import Client, Gateway
from tokenwire.auth import Authenticator
from tokenwire.errors import Unauthorized
from tokenwire.testing import Script

pytestmark = BROWSER


class AdminDouble(socketio.AsyncNamespace):  # type: ignore[misc]
    """`/admin` as the contract describes it, with canned figures."""

    def __init__(self, authenticator: Authenticator) -> None:
        super().__init__("/admin")
        self.authenticator = authenticator
        self.stops: list[Any] = []

    async def on_connect(self, sid: str, _environ: dict[str, Any], auth: Any = None) -> None:
        try:
            principal = await self.authenticator.verify((auth or {}).get("token"))
        except Unauthorized as exc:
            raise socketio.exceptions.ConnectionRefusedError(
                "unauthorized", {"code": exc.code, "message": exc.message}
            ) from None
        if not principal.is_admin:
            raise socketio.exceptions.ConnectionRefusedError(
                "unauthorized", {"code": "FORBIDDEN", "message": "This needs the admin role."}
            )
        now = int(time.time() * 1000)
        samples = [
            {
                "ts": now - (60 - i) * 1000,
                "connections": i % 7,
                "streaming": i % 3,
                "tokensPerS": float(i),
                "startsPerS": 0.5,
                "errorsPerS": 0.0,
            }
            for i in range(60)
        ]
        await self.emit("admin:history", {"samples": samples}, to=sid)

    async def trigger_event(self, event: str, *args: Any) -> Any:
        if event == "admin:stop":
            self.stops.append(args[1] if len(args) > 1 else None)
            return {"ok": True}
        return await super().trigger_event(event, *args)


def stats(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "ts": int(time.time() * 1000),
        "connections": 3,
        "streaming": 1,
        "tokensPerS": 42.5,
        "startsPerS": 0.25,
        "errorsPerS": 0.0,
        "errorsByCode": {"RATE_LIMIT": 2, "UPSTREAM_TIMEOUT": 1},
        "ttftP50Ms": 120.4,
        "ttftP95Ms": 480.0,
        "usageByModel": {"gpt-4": {"replies": 5, "promptTokens": 1200, "completionTokens": 3400}},
        "replies": [
            {
                "messageId": "m-1",
                "conversationId": "c-1",
                "userId": "alice",
                "model": "gpt-4",
                "startedAt": "2026-01-01T00:00:00Z",
                "chars": 1234,
            }
        ],
    }
    base.update(overrides)
    return base


def has_admin_namespace(gateway: Gateway) -> bool:
    return "/admin" in gateway.app.sio.namespace_handlers


def with_double(gateway: Gateway) -> AdminDouble:
    double = AdminDouble(Authenticator(gateway.settings))
    gateway.app.sio.register_namespace(double)
    return double


async def sign_in(page: Page, name: str, *, admin: bool) -> None:
    await page.goto("/admin")
    await page.get_by_label("Your name").fill(name)
    if not admin:
        await page.get_by_label("admin").uncheck()
    await page.get_by_role("button", name="Sign in").click()


def figure(page: Page, name: str) -> Any:
    return page.locator(f'[data-figure="{name}"] .value')


async def test_dashboard_shows_the_contracts_figures_and_stop_sends_admin_stop(
    gateway: Gateway, new_page: PageFactory, shot: Any
) -> None:
    # The double stands in for the server's own /admin (of this test's app only).
    double = with_double(gateway)
    page = await new_page()
    await sign_in(page, "root", admin=True)
    await expect(page.locator(".badge")).to_have_text("Connected")
    # History alone draws the charts.
    await expect(page.locator(".chart polyline")).to_have_count(5)

    await double.emit("admin:stats", stats())
    await expect(figure(page, "connections")).to_have_text("3")
    await expect(figure(page, "streaming")).to_have_text("1")
    await expect(figure(page, "tokensPerS")).to_have_text("42.5")
    await expect(figure(page, "startsPerS")).to_have_text("0.3")
    await expect(figure(page, "ttftP50")).to_have_text("120 ms")
    await expect(figure(page, "ttftP95")).to_have_text("480 ms")
    await expect(page.locator('.errors-by-code [data-code="RATE_LIMIT"]')).to_contain_text("2")
    usage = page.locator('.usage [data-model="gpt-4"]')
    await expect(usage).to_contain_text("5")
    await expect(usage).to_contain_text("3,400")
    row = page.locator('.replies [data-message-id="m-1"]')
    await expect(row).to_contain_text("alice")
    await shot(page, "dashboard")

    await row.get_by_role("button", name="Stop").click()
    await expect(row.get_by_role("button", name="Stop")).to_be_disabled()
    assert double.stops == [{"messageId": "m-1"}]

    await double.emit("admin:stats", stats(connections=4, streaming=0, replies=[], ttftP50Ms=None))
    await expect(figure(page, "connections")).to_have_text("4")
    await expect(figure(page, "ttftP50")).to_have_text("—")
    await expect(page.get_by_text("No reply is streaming.")).to_be_visible()


async def test_dashboard_fits_a_phone(gateway: Gateway, new_page: PageFactory, shot: Any) -> None:
    if has_admin_namespace(gateway):
        double = None
    else:
        double = with_double(gateway)
    page = await new_page(viewport=PHONE)
    await sign_in(page, "root", admin=True)
    await expect(page.locator(".badge")).to_have_text("Connected")
    if double is not None:
        await double.emit("admin:stats", stats())
    await expect(figure(page, "connections")).not_to_have_text("—")
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"]
    await shot(page, "phone")


async def test_non_admins_are_told_they_are_not_authorised(
    gateway: Gateway, new_page: PageFactory, shot: Any
) -> None:
    if not has_admin_namespace(gateway):
        with_double(gateway)
    page = await new_page()
    await sign_in(page, "bob", admin=False)

    alert = page.get_by_role("alert")
    await expect(alert).to_contain_text("Not authorised")
    await expect(alert).to_contain_text("“bob”, who is not an admin")
    await expect(page.locator("[data-figure]")).to_have_count(0)
    await shot(page, "not-authorised")


async def test_counters_move_with_a_real_reply_and_stop_stops_it(
    gateway: Gateway, new_page: PageFactory, shot: Any
) -> None:
    if not has_admin_namespace(gateway):
        pytest.skip("admin namespace not yet on the server")
    page = await new_page()
    await sign_in(page, "root", admin=True)
    await expect(page.locator(".badge")).to_have_text("Connected")
    await expect(figure(page, "streaming")).to_have_text("0")

    gateway.upstream.enqueue(Script(count=400, delay_s=0.02))
    client = Client()
    await client.connect(gateway.url, gateway.token("alice"))
    try:
        ack = await client.call("chat:start", {"message": "keep going"})
        await expect(figure(page, "streaming")).to_have_text("1")
        await expect(figure(page, "tokensPerS")).not_to_have_text("0")
        connections = int(await figure(page, "connections").inner_text())
        assert connections >= 1
        row = page.locator(f'.replies [data-message-id="{ack["messageId"]}"]')
        await expect(row).to_contain_text("alice")
        await shot(page, "live")

        await row.get_by_role("button", name="Stop").click()
        request = gateway.upstream.requests[-1]
        await asyncio.wait_for(request.finished.wait(), 5)
        assert request.closed_by_client
        await client.wait_for("chat:stopped")
        await expect(figure(page, "streaming")).to_have_text("0")
        await expect(page.get_by_text("No reply is streaming.")).to_be_visible()
    finally:
        await client.disconnect()
