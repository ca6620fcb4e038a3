"""The `tokenwire` command: serve, migrate, token, chat."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from typing import Any

from tokenwire import __version__
from tokenwire.config import Settings, SettingsError, load_settings

__all__ = ["main"]


def _settings(**overrides: Any) -> Settings:
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except SettingsError as exc:
        print(f"tokenwire: configuration error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _program() -> str:
    """How this command was invoked (`.venv/bin/tokenwire`, say), for hints a user can paste."""
    invoked = sys.argv[0]
    if os.path.basename(invoked) == "tokenwire":
        relative = os.path.relpath(invoked)
        return invoked if relative.startswith("..") else relative
    return "python -m tokenwire"


def _serve(args: argparse.Namespace) -> int:
    from tokenwire.compat import IncompatibleDependency
    from tokenwire.logs import configure_logging

    try:
        from tokenwire.app import create_app
        from tokenwire.server import GracefulServer, uvicorn_config
    except IncompatibleDependency as exc:  # one line, not a traceback (see compat)
        print(f"tokenwire: {exc}", file=sys.stderr)
        return 2

    settings = _settings(host=args.host, port=args.port)
    configure_logging(settings.log_level, json=settings.is_production)
    app = create_app(settings)
    shown = "localhost" if settings.host in ("127.0.0.1", "0.0.0.0", "::") else settings.host
    if not settings.is_production:
        print(
            f"\n  tokenwire {__version__} on http://{shown}:{settings.port}  (model: {settings.llm_provider}, "
            f"database: {settings.database_url.split('://')[0]})\n"
            f"  Socket.IO namespace: http://{shown}:{settings.port}/ai   API docs: http://{shown}:{settings.port}/docs\n"
            f"  Get a token:   {_program()} token alice\n"
            f'  Talk to it:    {_program()} chat "Hello!" --url http://{shown}:{settings.port}\n',
            file=sys.stderr,
        )
    server = GracefulServer(uvicorn_config(app, settings), app)
    server.run()
    return 0 if server.started else 1


def _migrate(_args: argparse.Namespace) -> int:
    from tokenwire.storage import Database
    from tokenwire.storage.migrate import upgrade

    settings = _settings()

    async def run() -> None:
        database = Database(settings.database_url)
        try:
            await upgrade(database)
        finally:
            await database.dispose()

    asyncio.run(run())
    print("database is up to date")
    return 0


def _token(args: argparse.Namespace) -> int:
    from tokenwire.auth import Authenticator

    settings = _settings()
    claims: dict[str, Any] = {"role": "admin"} if args.admin else {}
    print(Authenticator(settings).issue(args.user_id, ttl_s=args.ttl, **claims))
    return 0


def _chat(args: argparse.Namespace) -> int:
    from tokenwire.auth import Authenticator

    settings = _settings()
    token = (
        args.token
        or os.environ.get("TOKENWIRE_TOKEN")
        or Authenticator(settings).issue(args.user, ttl_s=3600)
    )
    url = args.url or f"http://127.0.0.1:{settings.port}"
    return asyncio.run(_chat_session(url, token, args))


async def _chat_session(url: str, token: str, args: argparse.Namespace) -> int:
    import socketio

    # A dropped connection reconnects and resumes the reply where the
    # terminal's text ends (chat:resume {messageId, offset}); python-socketio
    # has no connection state recovery of its own.
    client = socketio.AsyncClient(
        reconnection=True,
        reconnection_attempts=10,
        reconnection_delay=0.2,
        reconnection_delay_max=2,
    )
    done = asyncio.Event()
    outcome: dict[str, Any] = {}
    reply: dict[str, Any] = {"messageId": None, "held": 0, "connected": False}

    # With connection state recovery on, every event carries its offset as a last argument.
    async def _conversation(data: dict[str, Any], *_offset: str) -> None:
        outcome["conversationId"] = data.get("conversationId")

    async def _message(data: dict[str, Any], *_offset: str) -> None:
        reply["messageId"] = reply["messageId"] or data.get("messageId")
        content = str(data.get("content", ""))
        if data.get("offset") != reply["held"]:
            return  # not where the text on screen ends: never print twice
        reply["held"] += len(content.encode("utf-16-le", "surrogatepass")) // 2
        try:
            sys.stdout.write(content)
            sys.stdout.flush()
        except BrokenPipeError:
            # Whoever read our output has gone (`| head`): stop reading, as
            # a program killed by SIGPIPE would. The reply is saved whole.
            outcome["kind"] = "pipe"
            done.set()

    async def _connected() -> None:
        if reply["connected"] and reply["messageId"] and not done.is_set():
            answer = await client.call(
                "chat:resume",
                {"messageId": reply["messageId"], "offset": reply["held"]},
                namespace="/ai",
                timeout=10,
            )
            if not answer.get("ok"):
                outcome.update(answer.get("error") or {}, kind="error")
                done.set()
        reply["connected"] = True

    def _started(answer: Any) -> None:
        if isinstance(answer, dict) and answer.get("ok"):
            reply["messageId"] = reply["messageId"] or answer.get("messageId")

    async def _end(data: dict[str, Any], *_offset: str) -> None:
        outcome.update(data, kind="end")
        done.set()

    async def _stopped(data: dict[str, Any], *_offset: str) -> None:
        outcome.update(data, kind="stopped")
        done.set()

    async def _error(data: dict[str, Any], *_offset: str) -> None:
        outcome.update(data, kind="error")
        done.set()

    for event, handler in (
        ("chat:conversation", _conversation),
        ("chat:message", _message),
        ("chat:end", _end),
        ("chat:stopped", _stopped),
        ("chat:error", _error),
    ):
        client.on(event, handler, namespace="/ai")
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[None]] = set()

    def _on_connect() -> None:
        task = loop.create_task(_connected())
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    client.on("connect", _on_connect, namespace="/ai")
    try:
        await client.connect(
            url,
            namespaces=["/ai"],
            auth={"token": token},
            transports=["websocket"],
            wait_timeout=10,
        )
    except socketio.exceptions.ConnectionError as exc:
        print(f"tokenwire chat: could not connect to {url}: {exc}", file=sys.stderr)
        return 1
    stop_sent = False

    def on_interrupt() -> None:
        nonlocal stop_sent
        if stop_sent:
            done.set()
            return
        stop_sent = True
        # By id: after a reconnect this socket is not the one that started it.
        stop = {"messageId": reply["messageId"]} if reply["messageId"] else {}
        task = loop.create_task(client.emit("chat:stop", stop, namespace="/ai"))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    with contextlib.suppress(NotImplementedError):
        loop.add_signal_handler(signal.SIGINT, on_interrupt)
    payload: dict[str, Any] = {"message": args.message}
    if args.conversation:
        payload["conversationId"] = args.conversation
    if args.model:
        payload["model"] = args.model
    await client.emit("chat:start", payload, namespace="/ai", callback=_started)
    await done.wait()
    await client.disconnect()
    kind = outcome.get("kind")
    conversation = outcome.get("conversationId")
    if kind == "pipe":
        # Nothing more may reach the closed pipe, not even the interpreter's
        # flush of stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    if kind == "end":
        print(
            f"\n\n[{outcome.get('finishReason')} · {outcome.get('totalTokens')} tokens · conversation {conversation}]",
            file=sys.stderr,
        )
        return 0
    if kind == "stopped":
        kept = len(str(outcome.get("content", "")))
        print(
            f"\n\n[stopped · {kept} characters kept · conversation {conversation}]", file=sys.stderr
        )
        return 130
    print(f"\n[error {outcome.get('code')}: {outcome.get('message')}]", file=sys.stderr)
    return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tokenwire", description="Real-time AI chat streaming over Socket.IO."
    )
    parser.add_argument("--version", action="version", version=f"tokenwire {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve", help="run the server (HOST, PORT and the rest from the environment/.env)"
    )
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    serve.set_defaults(run=_serve)

    migrate = commands.add_parser(
        "migrate", help="apply database migrations (Alembic) to DATABASE_URL"
    )
    migrate.set_defaults(run=_migrate)

    token = commands.add_parser("token", help="print a JWT for USER_ID signed with JWT_SECRET")
    token.add_argument("user_id")
    token.add_argument(
        "--ttl", type=int, default=3600, help="seconds until it expires (default 3600)"
    )
    token.add_argument("--admin", action="store_true", help="add the claim role=admin (for /admin)")
    token.set_defaults(run=_token)

    chat = commands.add_parser("chat", help="send a message and stream the reply; Ctrl-C stops it")
    chat.add_argument("message")
    chat.add_argument("--conversation", help="continue this conversation id")
    chat.add_argument("--model")
    chat.add_argument("--url", help="server URL (default http://127.0.0.1:PORT)")
    chat.add_argument(
        "--token", help="JWT (default: $TOKENWIRE_TOKEN, or one minted with JWT_SECRET)"
    )
    chat.add_argument(
        "--user", default="cli-user", help="user id for a minted token (default cli-user)"
    )
    chat.set_defaults(run=_chat)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    result: int = args.run(args)
    return result
