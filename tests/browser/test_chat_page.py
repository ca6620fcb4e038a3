"""The chat page in a real browser: sign-in, streaming, Stop, history, errors, phone width."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Awaitable, Callable
from typing import Any

from playwright.async_api import Locator, Page, WebSocket, expect

from tests.browser.conftest import BROWSER, PHONE, PageFactory
from tests.conftest import Client, Gateway
from tests.test_fuzz import eventually
from tokenwire.chat.writer import utf16_len
from tokenwire.testing import Script

pytestmark = BROWSER

Shot = Callable[[Page, str], Awaitable[None]]


async def sign_in_by_name(page: Page, name: str) -> None:
    await page.goto("/")
    await page.get_by_label("Your name").fill(name)
    await page.get_by_role("button", name="Sign in").click()
    await expect(page.locator(".badge")).to_have_text("Connected")


async def send(page: Page, text: str) -> None:
    box = page.get_by_placeholder("Type your message...")
    await box.fill(text)
    await box.press("Enter")


def last_reply(page: Page) -> Locator:
    return page.locator(".message.assistant").last


async def stored_session(page: Page) -> dict[str, str]:
    raw = await page.evaluate("sessionStorage.getItem('tokenwire.session.chat')")
    assert isinstance(raw, str)
    session: dict[str, str] = json.loads(raw)
    return session


async def test_token_in_the_address_signs_in_and_leaves_the_address(
    gateway: Gateway, new_page: PageFactory
) -> None:
    token = gateway.token("alice")
    page = await new_page()
    await page.goto(f"/?token={token}")

    await expect(page.locator(".badge")).to_have_text("Connected")
    await expect(page.locator(".who")).to_have_text("alice")
    assert "token" not in page.url
    assert (await stored_session(page))["token"] == token


async def test_reply_streams_in_with_a_cursor_then_settles(
    gateway: Gateway, new_page: PageFactory, shot: Shot
) -> None:
    words = [f"word{i} " for i in range(60)]
    gateway.upstream.enqueue(Script(tokens=words, delay_s=0.03))
    page = await new_page()
    await sign_in_by_name(page, "bob")
    box = page.get_by_placeholder("Type your message...")

    # Shift+Enter is a new line, Enter sends.
    await box.fill("line one")
    await box.press("Shift+Enter")
    await box.type("line two")
    assert await box.input_value() == "line one\nline two"
    await box.press("Enter")

    reply = last_reply(page)
    await expect(reply.locator(".cursor")).to_be_visible()
    await expect(reply).to_contain_text("word5")
    await expect(page.get_by_role("button", name="Stop")).to_be_visible()
    early = len(await reply.inner_text())
    await shot(page, "streaming")
    await expect(reply).to_contain_text("word30")
    assert len(await reply.inner_text()) > early

    await expect(reply).to_have_attribute("data-status", "complete")
    await expect(reply.locator(".cursor")).to_have_count(0)
    assert (await reply.inner_text()).strip() == "".join(words).strip()
    assert await page.locator(".message.user .text").inner_text() == "line one\nline two"
    assert await box.input_value() == ""
    await expect(page.get_by_role("button", name="Send")).to_be_visible()
    await shot(page, "complete")


async def test_markdown_renders_and_html_in_a_reply_stays_inert(
    gateway: Gateway, new_page: PageFactory
) -> None:
    gateway.upstream.enqueue(
        Script(
            tokens=[
                "**bold** and `code`\n\n",
                '<img src="x" onerror="window.__pwned = 1">\n\n',
                "<script>window.__pwned = 2</script>\n\n",
                "[click](javascript:window.__pwned=3) ",
                '<iframe src="/"></iframe><a href="/" onclick="window.__pwned=4">x</a>',
            ]
        )
    )
    page = await new_page()
    await sign_in_by_name(page, "mallory")
    await send(page, "show me markup")
    reply = last_reply(page)
    await expect(reply).to_have_attribute("data-status", "complete")

    await expect(reply.locator("strong")).to_have_text("bold")
    await expect(reply.locator("code")).to_have_text("code")
    assert await reply.locator("script, iframe, [onerror], [onclick], [style]").count() == 0
    hrefs = await reply.locator("a").evaluate_all("links => links.map(a => a.getAttribute('href'))")
    assert not any(h and h.lower().startswith("javascript:") for h in hrefs)
    for link in await reply.locator("a").all():
        await link.click(modifiers=["Shift"], no_wait_after=True, trial=False)
    await asyncio.sleep(0.2)
    assert await page.evaluate("window.__pwned") is None


async def test_stop_button_stops_the_reply_and_closes_the_upstream_request(
    gateway: Gateway, new_page: PageFactory, shot: Shot
) -> None:
    gateway.upstream.enqueue(Script(count=200, delay_s=0.02))
    page = await new_page()
    await sign_in_by_name(page, "dave")
    await send(page, "a long one please")
    reply = last_reply(page)
    await expect(reply).to_contain_text("token5")

    await page.get_by_role("button", name="Stop").click()

    request = gateway.upstream.requests[-1]
    await asyncio.wait_for(request.finished.wait(), 5)
    assert request.closed_by_client
    assert len(request.sent) < 200
    await expect(reply).to_have_attribute("data-status", "stopped")
    await expect(reply.locator(".note")).to_have_text("Stopped")
    await expect(reply.locator(".cursor")).to_have_count(0)
    await expect(page.get_by_role("button", name="Send")).to_be_visible()
    await shot(page, "stopped")


async def test_escape_stops_the_reply(gateway: Gateway, new_page: PageFactory) -> None:
    gateway.upstream.enqueue(Script(count=200, delay_s=0.02))
    page = await new_page()
    await sign_in_by_name(page, "erin")
    await send(page, "another long one")
    await expect(last_reply(page)).to_contain_text("token3")

    await page.keyboard.press("Escape")

    request = gateway.upstream.requests[-1]
    await asyncio.wait_for(request.finished.wait(), 5)
    assert request.closed_by_client
    await expect(last_reply(page)).to_have_attribute("data-status", "stopped")


async def test_after_reload_the_conversation_is_in_the_list_and_opens(
    gateway: Gateway, new_page: PageFactory, shot: Shot
) -> None:
    gateway.upstream.enqueue(Script(tokens=["Paris ", "is ", "the ", "capital."]))
    page = await new_page()
    await sign_in_by_name(page, "frank")
    await send(page, "What is the capital of France?")
    await expect(last_reply(page)).to_have_attribute("data-status", "complete")

    await page.reload()
    await expect(page.locator(".badge")).to_have_text("Connected")
    item = page.locator(".conversations li").filter(has_text="capital of France")
    await expect(item).to_have_count(1)
    # The tab reopens the conversation it had open (sessionStorage), as it was saved.
    await expect(page.locator(".message.user")).to_have_text("What is the capital of France?")
    await expect(last_reply(page)).to_have_text("Paris is the capital.")

    await page.get_by_role("button", name="New chat").click()
    await expect(page.locator(".message")).to_have_count(0)
    await item.locator(".open").click()
    await expect(page.locator(".message.user")).to_have_text("What is the capital of France?")
    await expect(last_reply(page)).to_have_text("Paris is the capital.")
    await shot(page, "reopened")

    # A follow-up continues that conversation.
    gateway.upstream.enqueue(Script(tokens=["About ", "2.1 million."]))
    await send(page, "How many people live there?")
    await expect(last_reply(page)).to_have_attribute("data-status", "complete")
    assert gateway.upstream.requests[-1].messages[0]["content"] == "What is the capital of France?"
    await expect(page.locator(".conversations li")).to_have_count(1)


async def test_rate_limit_is_shown_in_words_with_when_to_retry(
    gateway: Gateway, new_page: PageFactory, shot: Shot
) -> None:
    gateway.upstream.enqueue(Script(status=429, headers={"retry-after": "30"}))
    page = await new_page()
    await sign_in_by_name(page, "grace")
    await send(page, "hello?")

    banner = page.get_by_role("alert").filter(has_text="Too many requests")
    await expect(banner).to_be_visible()
    await expect(banner).to_have_attribute("data-code", "RATE_LIMIT")
    await expect(banner).to_contain_text(re.compile(r"try again in (30|29|28) seconds"))
    await expect(page.get_by_role("button", name="Send")).to_be_visible()
    await shot(page, "rate-limited")


async def test_phone_width_has_no_sideways_scroll(
    gateway: Gateway, new_page: PageFactory, shot: Shot
) -> None:
    gateway.upstream.enqueue(
        Script(
            tokens=[
                "An unbroken word: " + "x" * 300 + "\n\n",
                "```\n" + "y = 1  # " + "z" * 300 + "\n```\n\n",
                "| a | b |\n|---|---|\n| " + "w" * 200 + " | 1 |\n\n",
                "https://example.com/" + "a" * 200,
            ]
        )
    )
    page = await new_page(viewport=PHONE)
    await sign_in_by_name(page, "heidi")
    await send(page, "q" * 400)
    await expect(last_reply(page)).to_have_attribute("data-status", "complete")

    async def overflow() -> int:
        width = await page.evaluate(
            "Math.max(document.documentElement.scrollWidth, document.body.scrollWidth)"
        )
        return int(width) - PHONE["width"]

    assert await overflow() <= 0
    for name in ("Send", "Sign out"):
        box = await page.get_by_role("button", name=name).bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    await shot(page, "phone")

    await page.get_by_role("button", name="Conversations").click()
    await expect(page.locator(".conversations li")).to_have_count(1)
    assert await overflow() <= 0
    await shot(page, "phone-drawer")


async def test_expired_token_is_renewed_for_the_same_name(
    gateway: Gateway, new_page: PageFactory
) -> None:
    page = await new_page()
    await sign_in_by_name(page, "ivan")
    expired = gateway.token("ivan", ttl_s=-60)
    await page.evaluate(
        "t => sessionStorage.setItem('tokenwire.session.chat', JSON.stringify("
        "{token: t, devName: 'ivan', devAdmin: false}))",
        expired,
    )
    await page.reload()

    await expect(page.locator(".badge")).to_have_text("Connected")
    await expect(page.locator(".who")).to_have_text("ivan")
    assert (await stored_session(page))["token"] != expired
    gateway.upstream.enqueue(Script(tokens=["still ", "here"]))
    await send(page, "are you there?")
    await expect(last_reply(page)).to_have_text("still here")


async def test_expired_token_without_a_name_asks_to_sign_in_again(
    gateway: Gateway, new_page: PageFactory
) -> None:
    page = await new_page()
    await page.goto(f"/?token={gateway.token('judy', ttl_s=-60)}")

    await expect(page.get_by_role("status").filter(has_text="sign in again")).to_be_visible()
    await expect(page.get_by_label("Your name")).to_be_visible()


async def test_dark_scheme_is_followed_and_the_toggle_switches(
    new_page: PageFactory, gateway: Gateway
) -> None:
    page = await new_page(color_scheme="dark")
    await page.goto(f"/?token={gateway.token('kim')}")
    await expect(page.locator(".badge")).to_have_text("Connected")

    async def background() -> str:
        return str(await page.evaluate("getComputedStyle(document.body).backgroundColor"))

    assert await background() == "rgb(20, 22, 26)"
    await page.get_by_role("button", name="Switch to light theme").click()
    assert await background() == "rgb(255, 255, 255)"
    await page.reload()
    assert await background() == "rgb(255, 255, 255)"


async def test_reasoning_shows_collapsed_with_how_long_the_model_thought(
    gateway: Gateway, new_page: PageFactory, shot: Shot
) -> None:
    thoughts = ["The user ", "greets me; ", "<b>I</b> should ", "greet back."]
    gateway.upstream.enqueue(Script(tokens=["Hello ", "there!"], reasoning=thoughts, delay_s=0.4))
    page = await new_page()
    await sign_in_by_name(page, "dora")
    await send(page, "hi")
    reply = last_reply(page)
    reasoning = reply.locator("details.reasoning")
    await expect(reasoning.locator("summary")).to_have_text("Thinking…")
    await expect(reply).to_have_attribute("data-status", "complete")
    await expect(reasoning.locator("summary")).to_have_text(re.compile(r"^Thought for [1-4] s$"))
    text = reasoning.locator(".reasoning-text")
    await expect(text).to_be_hidden()  # collapsed
    await reasoning.locator("summary").click()
    await expect(text).to_have_text("".join(thoughts))  # as text, never as HTML
    await expect(reply.locator(".markdown")).to_have_text("Hello there!")
    await shot(page, "reasoning-open")

    # Reloaded from the server: the same, with the saved duration.
    await page.reload()
    await expect(page.locator(".badge")).to_have_text("Connected")
    await page.locator(".conversations li .open").first.click()
    summary = last_reply(page).locator("details.reasoning summary")
    await expect(summary).to_have_text(re.compile(r"^Thought for [1-4] s$"))


async def test_a_queued_reply_says_it_waits_for_the_model(
    gateway: Gateway, new_page: PageFactory
) -> None:
    from tokenwire.chat.queue import UpstreamQueue

    gateway.services.chat.queue = UpstreamQueue(1)  # UPSTREAM_MAX_CONCURRENCY=1
    # The first reply runs until it is stopped, however slowly the page loads.
    gateway.upstream.enqueue(Script(count=600, delay_s=0.05), Script(tokens=["my turn"]))
    other = Client()
    try:
        await other.connect(gateway.url, gateway.token("someone-else"))
        await other.emit("chat:start", {"message": "first in line"})
        await other.wait_for("chat:message")
        page = await new_page()
        await sign_in_by_name(page, "erin")
        await send(page, "second")
        reply = last_reply(page)
        await expect(reply.locator(".note.queued")).to_have_text(
            "Waiting for the model: next in line"
        )
        await other.call("chat:stop")  # the slot frees: erin's reply goes
        await expect(reply.locator(".markdown")).to_have_text("my turn", timeout=10_000)
        await expect(reply.locator(".note.queued")).to_have_count(0)
    finally:
        await other.close()


class Frames:
    """The Socket.IO packets of a page's WebSockets, decoded: (direction, ack id, payload, connection)."""

    def __init__(self, page: Page) -> None:
        self.packets: list[tuple[str, int | None, Any, int]] = []
        # Per connection: the recovery offset its CONNECT asked for, if any.
        self.resumed_from: dict[int, int] = {}
        self._connections = 0
        page.on("websocket", self._socket)

    def _socket(self, ws: WebSocket) -> None:
        n = self._connections
        self._connections += 1
        ws.on("framesent", lambda frame: self._record("sent", frame, n))
        ws.on("framereceived", lambda frame: self._record("received", frame, n))

    def _record(self, direction: str, frame: str | bytes, n: int) -> None:
        text = frame if isinstance(frame, str) else frame.decode()
        if direction == "sent" and text.startswith("40/ai,{"):
            offset = json.loads(text[6:]).get("offset")
            if isinstance(offset, str) and offset.isdigit():
                self.resumed_from[n] = int(offset)
        match = re.fullmatch(r"4([23])/ai,(\d*)(.*)", text, re.DOTALL)
        if match is not None:
            ack = int(match[2]) if match[2] else None
            self.packets.append((direction, ack, json.loads(match[3]), n))

    def events(self, name: str) -> list[Any]:
        """The `name` events the page's socket.io-client handled, in order.

        A frame can reach the browser's network stack (and so Playwright) as
        the connection closes under it, and never reach the page: the next
        connection's CONNECT then asks to recover from the last offset the
        client handled, and the frames after it are replayed there. Those
        frames of the closed connection are left out here; whatever else
        arrived twice counts twice.
        """
        handled = []
        for direction, _, payload, n in self.packets:
            if direction != "received" or payload[0] != name:
                continue
            resumed = self.resumed_from.get(n + 1)
            offset = payload[-1] if len(payload) > 2 else None
            if resumed is not None and isinstance(offset, str) and int(offset) > resumed:
                continue  # replayed on the next connection: the page never had it here
            handled.append(payload[1])
        return handled

    def text(self, message_id: str) -> str:
        """The reply as the page received it: every chunk must start where the text ends.

        The page drops a chunk that does not (and `chat:end` then replaces
        its text with the saved one), so the text on screen at the end
        cannot show a hole; the frames can.
        """
        text = ""
        for chunk in self.events("chat:message"):
            if chunk["messageId"] == message_id:
                assert chunk["offset"] == utf16_len(text), (chunk, text)
                text += chunk["content"]
        return text

    def answer(self, event: str) -> Any:
        """The acknowledgement of the last `event` the page sent."""
        ack = [a for d, a, p, _ in self.packets if d == "sent" and p[0] == event][-1]
        return next(p[0] for d, a, p, _ in self.packets if d == "received" and a == ack)


async def saved_reply(gateway: Gateway, user: str) -> Any:
    repository = gateway.services.repository
    conversations, _ = await repository.list_conversations(user, limit=1, offset=0)
    return (await repository.list_messages(user, conversations[0].id))[-1]


async def test_reload_mid_reply_continues_where_it_was_and_ends_with_the_saved_text(
    gateway: Gateway, new_page: PageFactory
) -> None:
    gateway.upstream.enqueue(Script(count=80, delay_s=0.03))
    page = await new_page()
    await sign_in_by_name(page, "gina")
    await send(page, "a long one")
    await expect(last_reply(page)).to_contain_text("token5")

    frames = Frames(page)  # the reloaded page's
    await page.reload()  # mid-reply: the tab rejoins its conversation (chat:join)
    await expect(page.locator(".badge")).to_have_text("Connected")
    reply = last_reply(page)
    await expect(reply).to_have_attribute("data-status", "streaming")
    await expect(reply).to_have_attribute("data-status", "complete", timeout=15_000)
    saved = await saved_reply(gateway, "gina")
    assert saved.status == "complete" and "token79" in saved.content
    await expect(page.locator(".message.assistant")).to_have_count(1)
    shown = await reply.locator(".markdown").inner_text()
    assert " ".join(shown.split()) == " ".join(saved.content.split())
    # The path it claims: a join that found the reply running, then its text
    # so far in one chunk at offset 0, then live chunks (not a resume, not a
    # recovered session: a reloaded page has no pid).
    joined = frames.answer("chat:join")
    assert joined["streaming"]["messageId"] == saved.id and joined["streaming"]["offset"] > 0
    chunks = [c for c in frames.events("chat:message") if c["messageId"] == saved.id]
    assert chunks[0]["offset"] == 0 and len(chunks[0]["content"]) >= joined["streaming"]["offset"]
    assert len(chunks) > 1
    assert frames.text(saved.id) == saved.content


async def test_offline_mid_reply_and_back_loses_and_repeats_nothing(
    gateway: Gateway, new_page: PageFactory
) -> None:
    """Playwright's `set_offline` mid-reply, for long enough to miss chunks, then back online.

    Found out first (Chromium 156): offline emulation does close an open
    WebSocket, within 0.3 s (the server sees the transport close, the
    page's badge says Reconnecting), and socket.io-client reconnects about
    a second after the network is back. So this needs no proxy: it checks
    that the server noticed, that the page got its session back (connection
    state recovery, the same sid) and that the page held exactly the saved
    text when the end arrived (from its frames: see `Frames.text`), and
    shows it once.
    """
    gateway.upstream.enqueue(Script(count=150, delay_s=0.02))
    page = await new_page()
    frames = Frames(page)
    await sign_in_by_name(page, "olga")
    await send(page, "a long one")
    await expect(last_reply(page)).to_contain_text("token5")
    store = gateway.app.sio.recovery
    (session,) = store._by_pid.values()
    request = gateway.upstream.requests[-1]

    await page.context.set_offline(True)
    await eventually(lambda: session.away, what="the server to see the connection drop")
    await expect(page.locator(".badge")).to_have_text("Reconnecting…")
    missed_from = len(request.sent)
    await eventually(lambda: len(request.sent) >= missed_from + 20, what="chunks to be missed")
    await page.context.set_offline(False)

    await expect(page.locator(".badge")).to_have_text("Connected", timeout=15_000)
    reply = last_reply(page)
    await expect(reply).to_have_attribute("data-status", "complete", timeout=15_000)
    assert not session.away and list(store._by_pid.values()) == [session]  # recovered
    saved = await saved_reply(gateway, "olga")
    assert saved.status == "complete" and "token149" in saved.content
    assert frames.text(saved.id) == saved.content  # before chat:end: no hole, nothing twice
    assert len(frames.events("chat:end")) == 1
    await expect(page.locator(".message.assistant")).to_have_count(1)
    shown = await reply.locator(".markdown").inner_text()
    assert " ".join(shown.split()) == " ".join(saved.content.split())


async def test_two_tabs_both_stream_the_reply_and_stop_in_either_stops_it(
    gateway: Gateway, new_page: PageFactory
) -> None:
    gateway.upstream.enqueue(Script(tokens=["Hi."]))
    first = await new_page()
    await sign_in_by_name(first, "hank")
    await send(first, "opening question")
    await expect(last_reply(first)).to_have_attribute("data-status", "complete")

    second = await new_page()  # another tab, signed in as the same person
    await sign_in_by_name(second, "hank")
    item = second.locator(".conversations li").filter(has_text="opening question")
    await item.locator(".open").click()
    await expect(last_reply(second)).to_have_text("Hi.")

    gateway.upstream.enqueue(Script(count=300, delay_s=0.02))
    await send(first, "now a long one")
    await expect(last_reply(first)).to_contain_text("token5")
    await expect(last_reply(second)).to_contain_text("token5")  # streams in this tab too
    await expect(second.locator(".message.user").last).to_have_text("now a long one")

    await second.get_by_role("button", name="Stop").click()  # Stop in the tab that did not start it
    request = gateway.upstream.requests[-1]
    await asyncio.wait_for(request.finished.wait(), 5)
    assert request.closed_by_client
    for page in (first, second):
        await expect(last_reply(page)).to_have_attribute("data-status", "stopped")
    assert await last_reply(first).inner_text() == await last_reply(second).inner_text()
