"""The built-in web pages: `/` (chat) and `/admin` (dashboard), and their `/assets/`.

`web/` is a Vite project whose build writes into this package's `static/`
folder (index.html, admin.html, assets/ with content-hashed names), so a
wheel or a checkout that has run `./dev serve` ships the pages. The folder is
read at request time: building while the server runs needs no restart, and a
server without a build answers 503 with how to make one instead of failing.

Pages are never cached (they name the current assets); assets are cached for
a year (their names change when their content does). Pages carry a strict
Content-Security-Policy: the chat page renders model output, and although it
is sanitised, the policy makes sure no injected script, frame or remote image
could run or load even if sanitising failed.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse, HTMLResponse, PlainTextResponse, Response

__all__ = ["STATIC_DIR", "create_router", "router"]

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"

_CSP = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data:",
        "font-src 'self'",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
_PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    "Content-Security-Policy": _CSP,
    "X-Content-Type-Options": "nosniff",
    # `/?token=` signs in; the page drops it from the address at once, and no
    # link it shows may carry it away in a Referer meanwhile.
    "Referrer-Policy": "no-referrer",
}
_ASSET_HEADERS = {
    "Cache-Control": "public, max-age=31536000, immutable",
    "X-Content-Type-Options": "nosniff",
}
# Some systems' MIME tables (the Windows registry, minimal containers) get these wrong;
# a browser refuses a module script served as text/plain.
_TYPES = {
    ".js": "text/javascript",
    ".mjs": "text/javascript",
    ".css": "text/css",
    ".svg": "image/svg+xml",
    ".woff2": "font/woff2",
    ".json": "application/json",
    ".map": "application/json",
}

_NOT_BUILT = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><title>tokenwire: web UI not built</title></head>
<body style="font-family: system-ui, sans-serif; max-width: 40rem; margin: 3rem auto; padding: 0 1rem">
<h1>The web UI is not built</h1>
<p>The web UI is not built: run <code>./dev serve</code> from a tokenwire checkout
(it builds <code>web/</code> and starts the server), or build it yourself with
<code>cd web &amp;&amp; npm ci &amp;&amp; npm run build</code>.</p>
<p>The Socket.IO gateway (<code>/ai</code>) and the HTTP API (<code>/api/...</code>) work without it.</p>
</body>
</html>
"""


def _page(directory: Path, name: str) -> Response:
    path = directory / name
    if not path.is_file():
        return HTMLResponse(
            _NOT_BUILT, status_code=503, headers={"Cache-Control": "no-store", "Retry-After": "60"}
        )
    return FileResponse(path, media_type="text/html; charset=utf-8", headers=_PAGE_HEADERS)


def _asset(directory: Path, relative: str) -> Response:
    root = (directory / "assets").resolve()
    path = (root / relative).resolve()
    # resolve() follows `..` and symlinks, so anything outside assets/ is refused.
    if not path.is_relative_to(root) or not path.is_file():
        return PlainTextResponse("Not found", status_code=404)
    media_type = _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "text/plain"
    return FileResponse(path, media_type=media_type, headers=_ASSET_HEADERS)


def create_router(directory: Path = STATIC_DIR) -> APIRouter:
    """Routes serving the build in `directory` (the package's `static/` unless told otherwise)."""
    web = APIRouter(tags=["web"], include_in_schema=False)

    @web.api_route("/", methods=["GET", "HEAD"])
    async def chat_page() -> Response:
        return _page(directory, "index.html")

    @web.api_route("/admin", methods=["GET", "HEAD"])
    async def admin_page() -> Response:
        return _page(directory, "admin.html")

    @web.api_route("/assets/{relative:path}", methods=["GET", "HEAD"])
    async def asset(relative: str) -> Response:
        return _asset(directory, relative)

    return web


router = create_router()
