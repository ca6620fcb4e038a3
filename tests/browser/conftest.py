"""Browser fixtures: Debian's Chromium, driven by Playwright, against the real server.

The pages are the built ones that tokenwire serves (`web/` built into
`src/tokenwire/static/` by `npm run build`, which `./dev check` runs first).
Chromium is the system's (`apt-get install chromium`): Playwright never
downloads a browser here. Without Chromium or the build, these tests skip
with the reason; with TOKENWIRE_REQUIRE_SERVICES=1 they fail instead.

One Chromium serves the whole session (starting Playwright and a browser
costs seconds); each test gets fresh contexts. So that the browser, the
server and the test share one event loop, the tests here (`pytestmark =
BROWSER`), and the `upstream` and `gateway` fixtures they use, run in the
session's loop.

Screenshots go to `test-artifacts/` at the repository root.
"""

from __future__ import annotations

import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Literal

import pytest
import pytest_asyncio
from playwright.async_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    ViewportSize,
    async_playwright,
    expect,
)

from tests.conftest import Gateway, GatewayFactory, skip_or_fail
from tokenwire.api.web import STATIC_DIR
from tokenwire.testing import Script, UpstreamDouble, serve

CHROMIUM = Path(os.environ.get("TOKENWIRE_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
PHONE: ViewportSize = {"width": 390, "height": 844}
DESKTOP: ViewportSize = {"width": 1280, "height": 800}

# Mark for every module here: needs Chromium, and runs in the browser's event loop.
BROWSER = [pytest.mark.browser, pytest.mark.asyncio(loop_scope="session")]

# A page that fails an assertion should say so quickly, not after 30 s.
expect.set_options(timeout=10_000)

PageFactory = Callable[..., Awaitable[Page]]


def _require(present: bool, reason: str) -> None:
    if not present:
        skip_or_fail(reason)


def _require_chromium_and_build() -> None:
    _require(CHROMIUM.is_file(), f"Chromium not found at {CHROMIUM} (apt-get install chromium)")
    _require(
        (STATIC_DIR / "index.html").is_file() and (STATIC_DIR / "admin.html").is_file(),
        "the web UI is not built (cd web && npm ci && npm run build)",
    )


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def browser() -> AsyncIterator[Browser]:
    _require_chromium_and_build()
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest_asyncio.fixture(loop_scope="session")
async def upstream() -> AsyncIterator[tuple[UpstreamDouble, str]]:
    double = UpstreamDouble(Script(count=5))
    async with serve(double) as url:
        yield double, url


@pytest_asyncio.fixture(loop_scope="session")
async def gateway(gateway_factory: GatewayFactory) -> AsyncIterator[Gateway]:
    async with gateway_factory() as gw:
        yield gw


@pytest_asyncio.fixture(loop_scope="session")
async def new_page(
    browser: Browser, gateway: Gateway, request: pytest.FixtureRequest
) -> AsyncIterator[PageFactory]:
    """`await new_page(viewport=PHONE, color_scheme="dark")`: a fresh tab on the test server.

    Every uncaught exception in a page fails the test at teardown.
    """
    errors: list[str] = []
    contexts: list[BrowserContext] = []

    async def make(
        *, viewport: ViewportSize = DESKTOP, color_scheme: Literal["light", "dark"] = "light"
    ) -> Page:
        context = await browser.new_context(
            base_url=gateway.url, viewport=viewport, color_scheme=color_scheme
        )
        contexts.append(context)
        page = await context.new_page()
        page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))

        def console(message: ConsoleMessage) -> None:
            if message.type == "error":
                errors.append(f"console: {message.text}")

        page.on("console", console)
        return page

    yield make
    for context in contexts:
        await context.close()
    # A refused connection or an HTTP error status is logged by Chromium as a
    # console error on purpose in some tests; uncaught exceptions never are.
    uncaught = [e for e in errors if e.startswith("uncaught")]
    assert not uncaught, f"{request.node.name}: {uncaught}"


@pytest.fixture
def shot(request: pytest.FixtureRequest) -> Callable[[Page, str], Awaitable[None]]:
    """`await shot(page, "streaming")` saves test-artifacts/<test>-streaming.png."""
    ARTIFACTS.mkdir(exist_ok=True)
    stem = re.sub(r"[^\w.-]+", "_", request.node.name)

    async def take(page: Page, label: str) -> None:
        await page.screenshot(path=str(ARTIFACTS / f"{stem}-{label}.png"), full_page=False)

    return take
