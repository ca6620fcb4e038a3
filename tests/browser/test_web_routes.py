"""The routes serving the built pages (`tokenwire.api.web`): no browser needed."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import Gateway
from tokenwire.api import web

# The `gateway` fixture of this folder runs in the session's event loop.
pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
def build(tmp_path: Path) -> Path:
    """A small stand-in for `npm run build`'s output."""
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html><title>chat</title>")
    (tmp_path / "admin.html").write_text("<!doctype html><title>admin</title>")
    (tmp_path / "assets" / "index-abc123.js").write_text("console.log('hi')")
    (tmp_path / "assets" / "index-abc123.css").write_text("body{}")
    (tmp_path / "secret.txt").write_text("not an asset")
    return tmp_path


def client_for(directory: Path) -> httpx.AsyncClient:
    app = FastAPI()
    app.include_router(web.create_router(directory))
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")


async def test_pages_are_served_uncached_with_a_strict_policy(build: Path) -> None:
    async with client_for(build) as client:
        chat = await client.get("/")
        admin = await client.get("/admin")
        head = await client.head("/")
    assert chat.status_code == 200 and "<title>chat</title>" in chat.text
    assert admin.status_code == 200 and "<title>admin</title>" in admin.text
    assert head.status_code == 200
    for response in (chat, admin):
        assert response.headers["content-type"] == "text/html; charset=utf-8"
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["referrer-policy"] == "no-referrer"
        policy = response.headers["content-security-policy"]
        assert "script-src 'self'" in policy and "object-src 'none'" in policy


async def test_assets_are_cached_for_a_year_with_their_type(build: Path) -> None:
    async with client_for(build) as client:
        script = await client.get("/assets/index-abc123.js")
        style = await client.get("/assets/index-abc123.css")
    assert script.status_code == 200 and script.text == "console.log('hi')"
    assert script.headers["content-type"].startswith("text/javascript")
    assert style.headers["content-type"].startswith("text/css")
    assert script.headers["cache-control"] == "public, max-age=31536000, immutable"


@pytest.mark.parametrize(
    "path", ["/assets/missing.js", "/assets/%2e%2e/secret.txt", "/assets/..%2fsecret.txt"]
)
async def test_nothing_outside_assets_is_served(build: Path, path: str) -> None:
    async with client_for(build) as client:
        response = await client.get(path)
    assert response.status_code == 404
    assert "not an asset" not in response.text


async def test_without_a_build_the_pages_say_how_to_build(tmp_path: Path) -> None:
    async with client_for(tmp_path / "static") as client:
        chat = await client.get("/")
        admin = await client.get("/admin")
        asset = await client.get("/assets/index.js")
    for response in (chat, admin):
        assert response.status_code == 503
        assert "The web UI is not built: run <code>./dev serve</code>" in response.text
        assert response.headers["cache-control"] == "no-store"
    assert asset.status_code == 404


async def test_the_app_serves_the_pages_at_its_root(gateway: Gateway) -> None:
    async with httpx.AsyncClient(base_url=gateway.url) as client:
        page = await client.get("/")
        api = await client.get("/api/models")
    built = (web.STATIC_DIR / "index.html").is_file()
    assert page.status_code == (200 if built else 503)
    assert api.status_code == 200, "the pages must not shadow the API"
