"""The long-lived objects of one running app, built and closed by `Services.start`.

Everything that holds a connection lives here and nowhere else: the database
engine, the HTTP client for the upstream, the chat service and its background
housekeeping. Handlers reach them through this one object.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp

from tokenwire.auth import Authenticator
from tokenwire.chat import ChatService
from tokenwire.closing import CLOSE_RESOURCE_S, close_within
from tokenwire.config import Settings
from tokenwire.providers import Provider
from tokenwire.providers.demo import DemoProvider
from tokenwire.providers.openai import OpenAIProvider
from tokenwire.storage import Database, Repository
from tokenwire.storage import migrate as migrations
from tokenwire.tokens import encoding

__all__ = ["Services"]

_PROXY_VARIABLES = (
    "HTTPS_PROXY",
    "https_proxy",
    "HTTP_PROXY",
    "http_proxy",
    "ALL_PROXY",
    "all_proxy",
)

log = logging.getLogger(__name__)


def _build_provider(settings: Settings, client: aiohttp.ClientSession) -> Provider:
    if settings.llm_provider == "demo":
        return DemoProvider(settings.demo_tokens_per_s)
    return OpenAIProvider(
        client,
        base_url=settings.openai_base_url,
        api_key=settings.openai_api_key,
        retries=settings.upstream_retries,
        pace_s=settings.stream_flush_ms / 1000,
    )


@dataclass(slots=True)
class Services:
    settings: Settings
    database: Database
    repository: Repository
    http: aiohttp.ClientSession
    authenticator: Authenticator
    chat: ChatService

    @classmethod
    @asynccontextmanager
    async def start(cls, settings: Settings) -> AsyncIterator[Services]:
        database = Database(settings.database_url)
        http = aiohttp.ClientSession(
            # No total or read timeout: a reply may stream for minutes; the
            # chat service enforces UPSTREAM_TIMEOUT_S and UPSTREAM_IDLE_TIMEOUT_S.
            timeout=aiohttp.ClientTimeout(total=None, connect=10, sock_connect=10),
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30),
            # Honour HTTPS_PROXY / NO_PROXY when they are set; otherwise
            # trust_env would also re-read ~/.netrc on every request (1.3% of
            # the gateway's CPU under bench/'s B2 load).
            trust_env=any(os.environ.get(v) for v in _PROXY_VARIABLES),
            raise_for_status=False,
        )
        housekeeping: asyncio.Task[None] | None = None
        chat: ChatService | None = None
        try:
            if database.is_sqlite:
                await migrations.upgrade(database)
            elif not await migrations.is_current(database):
                raise RuntimeError("the database schema is not current; run `tokenwire migrate`")
            await asyncio.to_thread(encoding)  # load the token table now, not on the first reply
            repository = Repository(database)
            chat = ChatService(settings, repository, _build_provider(settings, http))
            await chat.checkpoint_once()  # take this node's lease before anyone sweeps
            await chat.sweep_stale()
            services = cls(
                settings, database, repository, http, Authenticator(settings, http), chat
            )
            housekeeping = asyncio.create_task(chat.run_housekeeping(), name="housekeeping")
            log.info(
                "tokenwire ready: provider=%s database=%s",
                chat.provider.name,
                database.describe(),
            )
            yield services
            await chat.shutdown(settings.shutdown_grace_s)
            # Bounded like the closes below: a database that stopped answering
            # must not hold the exit (the lease then lapses by itself).
            await close_within(
                repository.leave(chat.node_id), CLOSE_RESOURCE_S, "this node's lease"
            )
        finally:
            # Each close waits on a peer (Redis, the upstream, the database),
            # so each is bounded: a silent peer must not hold the exit.
            if housekeeping is not None:
                housekeeping.cancel()
                await asyncio.wait({housekeeping}, timeout=CLOSE_RESOURCE_S)
            if chat is not None:
                await close_within(chat.limits.aclose(), CLOSE_RESOURCE_S, "the rate limits' Redis")
            await close_within(http.close(), CLOSE_RESOURCE_S, "the upstream HTTP client")
            await close_within(database.dispose(), CLOSE_RESOURCE_S, "the database")
