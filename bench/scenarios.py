"""The measurements (B1-B7) and the runs they are made of.

A *stream run* starts a fresh upstream, a fresh gateway (tokenwire or the
NestJS peer) and a few load-generator processes; the clients connect, loop
`chat:start` -> `chat:end`, and after a warm-up the counters and every
process's CPU are read at the start and the end of a measurement window.
B6's clients each bring followers (more sockets of the same user joined to
the conversation); B7 is not a stream run but rounds of resumes.
"""

from __future__ import annotations

import asyncio
import math
import os
import resource
import secrets
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, cast

import jwt
import orjson

from bench.procs import Proc, Processes, free_port, wait_http

__all__ = ["Bench", "Resumes", "Settings", "StreamResult", "Target"]

TOKEN_CHARS = 4  # bench/upstream.py sends " tok"
BENCH = Path(__file__).resolve().parent
Target = Literal["tokenwire", "nest"]


@dataclass
class Settings:
    """Sizes and durations of one invocation (quick or full)."""

    mode: str
    tree: Path  # the tokenwire source tree under test (its src/ and .venv)
    python: str  # the interpreter that runs the gateway, the upstream and the probe
    cache: Path  # .cache/bench: built NestJS peer, loadgen node_modules
    logs: Path
    coalesce_ms: float = 50.0
    b1_samples: int = 60
    b2_clients: int = 200
    b2_rate: float = 100.0
    b2_reply_tokens: int = 200
    # Each client continues its conversation once before starting a new one
    # (issue 14's load), so half the turns load history.
    turns_per_conversation: int = 2
    turn_clients: int = 50  # B2's turn runs: clients looping 1-token replies
    b2_warmup_s: float = 2.0
    b2_window_s: float = 4.0
    b2_flush_extra: tuple[float, ...] = ()
    b5_pairs: int = 1
    b3_rate: float = 50.0
    b3_reply_s: float = 6.0
    b3_levels: tuple[int, ...] = (50, 100, 200, 400, 800, 1600)
    b3_bisect: int = 1
    b3_warmup_s: float = 2.0
    b3_window_s: float = 3.0
    b3_budget_s: float = 30.0
    b4_clients: int = 5000
    b4_hold_s: float = 12.0
    b4_ping_s: float = 10.0
    b4_env: dict[str, str] = field(default_factory=dict)
    b6_clients: int = 200  # streams, each followed by b6_followers more sockets of its user
    b6_followers: int = 2
    b6_pairs: int = 1  # (followed, unfollowed) runs
    b7_trios: int = 10  # concurrent replies resumed in a round
    b7_rounds: int = 2
    b7_rate: float = 1000.0  # fast, so a reply reaches 10 KB in 2.5 s
    b7_reply_tokens: int = 3000  # 12,000 characters
    b7_resume_at_chars: int = 10_000
    # Another tree measured beside `tree` in B2 (`--against REV`), and its interpreter.
    against: Path | None = None
    against_python: str = ""
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(48))
    users: int = 1000
    # bench/upstream.py's shape ("realistic", as OpenAI streams; "lean", the
    # double of the figures before it), or "repo": python -m tokenwire.testing upstream
    double: str = "realistic"
    b1_clients: tuple[str, ...] = ("node", "python")
    profile: Path | None = None  # write py-spy profiles of the gateway's B2 windows here


@dataclass
class StreamResult:
    label: str
    target: Target
    flush_ms: float | None
    clients: int
    rate: float
    window_s: float
    connect_failed: int
    tokens: float
    frames: int
    replies: int
    complete: int
    short: int
    errors: int
    disconnects: int
    gateway_cpu_s: float
    upstream_cpu_s: float
    loadgen_cpu_s: list[float]
    p50_gap_ms: float
    p99_gap_ms: float
    codes: dict[str, int] = field(default_factory=dict)
    followers: int = 0  # sockets following each client's conversations (B6)
    follower_replies: int = 0
    follower_complete: int = 0  # every character, each chunk at its offset, text == chat:end's
    follower_short: int = 0
    misplaced: int = 0  # chunks whose offset was not the length the socket held

    @property
    def cpu_per_token_us(self) -> float:
        return self.gateway_cpu_s / self.tokens * 1e6 if self.tokens else math.inf

    @property
    def cpu_per_turn_ms(self) -> float:
        """All the gateway's CPU per reply ended in the window: its tokens and its turn's work."""
        return self.gateway_cpu_s / self.replies * 1e3 if self.replies else math.inf

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.window_s

    @property
    def held(self) -> float:
        """Delivered tokens as a fraction of what every client (and follower) streaming at
        `rate` would get."""
        subscribers = self.clients * (1 + self.followers)
        return self.tokens_per_s / (subscribers * self.rate) if self.clients else 0.0

    def row(self) -> dict[str, str]:
        w = self.window_s
        return {
            "run": self.label,
            "gateway": self.target,
            "STREAM_FLUSH_MS": "-" if self.flush_ms is None else f"{self.flush_ms:g}",
            "clients": str(self.clients),
            "tokens/s": f"{self.tokens_per_s:,.0f}",
            "held": f"{self.held:.0%}",
            "frames/s": f"{self.frames / w:,.0f}",
            "gateway CPU": f"{self.gateway_cpu_s / w:.0%}",
            "µs CPU/token": f"{self.cpu_per_token_us:.1f}",
            "ms CPU/turn": f"{self.cpu_per_turn_ms:.2f}",
            "upstream CPU": f"{self.upstream_cpu_s / w:.0%}",
            "loadgen CPU (max proc)": f"{sum(self.loadgen_cpu_s) / w:.0%} "
            f"({max(self.loadgen_cpu_s, default=0) / w:.0%})",
            "p50/p99 gap ms": f"{self.p50_gap_ms:.0f}/{self.p99_gap_ms:.0f}",
            "replies ok/short/err": f"{self.complete}/{self.short}/{self.errors}"
            + (f" {self.codes}" if self.codes else "")
            + (
                f"; followers {self.follower_complete}/{self.follower_short}"
                if self.followers
                else ""
            )
            + (f"; {self.misplaced} misplaced" if self.misplaced else ""),
        }

    @property
    def followers_whole(self) -> bool:
        """Every follower's reply arrived whole, and they followed (almost) every reply.

        Replies straddle the window's edges, so a follower may count one more
        or one fewer reply than its starter; 2% allows for that.
        """
        expected = self.replies * self.followers
        return (
            self.follower_short == 0
            and self.misplaced == 0
            and self.errors == 0
            and self.follower_complete >= 0.98 * expected
        )


@dataclass
class Resumes:
    """B7's samples: per resumed reply, what its two resumers measured (see loadgen.js)."""

    samples: list[dict[str, float | bool]]
    connect_failed: int
    errors: int
    codes: dict[str, int]
    misplaced: int

    def _ms(self, key: str) -> list[float]:
        return [float(x[key]) for x in self.samples if key in x]

    def p(self, key: str, q: float) -> float:
        """`key`'s percentile in ms: catchupMs, ackMs (offset 0) or baselineAckMs (nothing missed)."""
        return percentile(self._ms(key), q)

    @property
    def held(self) -> float:
        """Median characters the reply held when it was resumed."""
        return statistics.median(self._ms("held")) if self.samples else 0.0

    @property
    def catchup_frames(self) -> list[int]:
        """chat:message frames the offset-0 resumer took to hold what the starter held."""
        return [int(x.get("catchupFrames", 0)) for x in self.samples]

    @property
    def complete(self) -> int:
        """Samples where all three sockets ended with the saved text (starter and late
        resumer all of it, the baseline the part after its offset)."""
        return sum(1 for x in self.samples if x.get("complete"))


def _percentile(hist: list[int], q: float) -> float:
    total = sum(hist)
    if not total:
        return 0.0
    rank, seen = q * total, 0
    for bucket, count in enumerate(hist):
        seen += count
        if seen >= rank:
            return float(bucket)
    return float(len(hist) - 1)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class LoadGroup:
    """Load-generator processes sharing a set of clients; commands go to all of them."""

    def __init__(self, procs: list[Proc], spread_s: float = 1.0) -> None:
        self.procs = procs
        self.spread_s = spread_s  # `run` starts each client's first reply within this

    async def run(self, warmup_s: float) -> None:
        """Start every client's reply loop; return once all of them stream.

        The warm-up covers the spread of first replies, so every client
        streams in the measurement window that follows.
        """
        await self.all("run", "running", 10)
        await asyncio.sleep(max(warmup_s, self.spread_s + 1))

    async def all(self, word: str, expect: str, within_s: float) -> list[dict[str, object]]:
        return list(await asyncio.gather(*(p.command(word, expect, within_s) for p in self.procs)))

    def cpu(self) -> list[float]:
        return [p.cpu() for p in self.procs]

    def rss(self) -> int:
        return sum(p.rss() for p in self.procs)


class Bench:
    def __init__(self, settings: Settings, processes: Processes) -> None:
        self.s = settings
        self.procs = processes
        self._tokens = [self.token(f"bench-u{i}") for i in range(settings.users)]
        self._users = [f"bench-u{i}" for i in range(settings.users)]
        self._run = 0
        self._groups = 0
        self._probes = 0

    def token(self, user: str) -> str:
        now = int(time.time())
        claims = {"sub": user, "iat": now, "nbf": now, "exp": now + 7200}
        return jwt.encode(claims, self.s.secret, algorithm="HS256")

    # --- processes

    async def upstream(self, rate: float, tokens: int) -> tuple[Proc, str]:
        port = free_port()
        args = ["--port", str(port), "--tokens", str(tokens), "--tokens-per-s", str(rate)]
        if self.s.double == "repo":
            argv = [self.s.python, "-m", "tokenwire.testing", "upstream", *args]
        else:
            argv = [self.s.python, str(BENCH / "upstream.py"), *args, "--shape", self.s.double]
        proc = await self.procs.start(
            f"upstream-{port}", argv, env={"PYTHONPATH": str(self.s.tree / "src")}
        )
        url = f"http://127.0.0.1:{port}/v1"
        await wait_http(f"{url}/models", proc)
        return proc, url

    async def tokenwire(
        self,
        upstream: str,
        flush_ms: float,
        extra: dict[str, str] | None = None,
        *,
        against: bool = False,
    ) -> tuple[Proc, str]:
        """The gateway, from the tree under test or (`against`) the `--against` tree."""
        tree, python = (self.s.against, self.s.against_python) if against else (None, "")
        tree, python = tree or self.s.tree, python or self.s.python
        port = free_port()
        self._run += 1
        work = self.s.logs / f"tokenwire-{self._run}"
        work.mkdir(parents=True, exist_ok=True)
        env = {
            "PYTHONPATH": str(tree / "src"),
            "LLM_PROVIDER": "openai",
            "OPENAI_BASE_URL": upstream,
            "OPENAI_API_KEY": "sk-bench",
            # The old default's spelling: every revision reads it (newer ones
            # map it to sqlite3), so --ref/--tree can measure older trees.
            "DATABASE_URL": f"sqlite+aiosqlite:///{work}/bench.db",
            "JWT_SECRET": self.s.secret,
            "RATE_LIMIT_CHAT": "1000000/minute",
            "CONNECT_RATE_PER_IP": "1000000/minute",
            "MAX_STREAMS_PER_USER": "100000",
            "MAX_CONNECTIONS_PER_USER": "100000",
            "LOG_LEVEL": "WARNING",
            "STREAM_FLUSH_MS": f"{flush_ms:g}",
            **(extra or {}),
        }
        argv = [python, "-m", "tokenwire", "serve", "--port", str(port)]
        proc = await self.procs.start(f"tokenwire-{port}", argv, env=env, cwd=work)
        url = f"http://127.0.0.1:{port}"
        await wait_http(f"{url}/healthz", proc)
        return proc, url

    async def nest(self, upstream: str) -> tuple[Proc, str]:
        port = free_port()
        env = {
            "PORT": str(port),
            "JWT_SECRET": self.s.secret,
            "OPENAI_BASE_URL": upstream,
            "OPENAI_API_KEY": "sk-bench",
            "NODE_ENV": "production",
        }
        # `npm start` is `node dist/main.js`; run node directly so the PID we
        # measure is the server, not npm.
        nest_dir = self.s.cache / "nest"
        proc = await self.procs.start(
            f"nest-{port}", ["node", "dist/main.js"], env=env, cwd=nest_dir
        )
        url = f"http://127.0.0.1:{port}"
        await wait_http(f"{url}/socket.io/?EIO=4&transport=polling", proc)
        return proc, url

    async def loadgen(
        self,
        url: str,
        clients: int,
        *,
        expect_chars: int = 0,
        per_proc: int = 300,
        spread_s: float = 1.0,
        extra: dict[str, object] | None = None,
        sockets_per_client: int = 1,
    ) -> LoadGroup:
        """Load generator processes for `clients` connections; `run` starts each
        one's first reply at a random moment within `spread_s`. `extra` goes
        into their configuration (`followers`, `mode`: see loadgen.js)."""
        count = max(1, min(4, math.ceil(clients * sockets_per_client / per_proc)))
        self._groups += 1
        procs = []
        for i in range(count):
            share = clients // count + (1 if i < clients % count else 0)
            config = {
                "url": url,
                "clients": share,
                "tokens": self._tokens,
                "users": self._users,
                "expectChars": expect_chars,
                "connectConcurrency": 50,
                "staggerMs": spread_s * 1000,
                "turnsPerConversation": self.s.turns_per_conversation,
                **(extra or {}),
            }
            path = self.s.logs / f"loadgen-{self._groups}-{i}.json"
            path.write_bytes(orjson.dumps(config))
            proc = await self.procs.start(
                f"loadgen-{self._groups}-{i}",
                ["node", str(BENCH / "loadgen" / "loadgen.js"), str(path)],
                env={"NODE_PATH": str(self.s.cache / "loadgen" / "node_modules")},
                pipe=True,
            )
            procs.append(proc)
        return LoadGroup(procs, spread_s)

    async def reply_load(
        self, url: str, clients: int, *, rate: float, tokens: int, followers: int = 0
    ) -> LoadGroup:
        """Clients looping replies of `tokens` at `rate`, their first replies spread over one.

        Each client's first reply starts at a random moment within one
        reply's length, so turns then arrive at a steady rate (clients /
        reply length per second), as independent users' do. Every reply
        lasts the same, so a shorter spread would repeat forever: with the
        old 1 s spread, B3 at 1,000 clients started 1,000 turns in the same
        second every 6 s, and measured that wave rather than the load held.
        """
        return await self.loadgen(
            url,
            clients,
            expect_chars=tokens * TOKEN_CHARS,
            spread_s=tokens / rate,
            extra={"followers": followers} if followers else None,
            sockets_per_client=1 + followers,
        )

    async def _connect(self, group: LoadGroup, within_s: float) -> tuple[int, int, float]:
        replies = await group.all("connect", "connected", within_s)
        ok = sum(int(r["ok"]) for r in replies)  # type: ignore[call-overload]
        failed = sum(int(r["failed"]) for r in replies)  # type: ignore[call-overload]
        ms = max(float(r["ms"]) for r in replies)  # type: ignore[arg-type]
        return ok, failed, ms / 1000

    # --- a stream run

    async def stream_run(
        self,
        label: str,
        target: Target,
        *,
        flush_ms: float | None,
        clients: int,
        rate: float,
        reply_tokens: int,
        warmup_s: float,
        window_s: float,
        followers: int = 0,
        env: dict[str, str] | None = None,
        against: bool = False,
    ) -> StreamResult:
        upstream, up_url = await self.upstream(rate, reply_tokens)
        if target == "nest":
            server, url = await self.nest(up_url)
        else:
            server, url = await self.tokenwire(up_url, flush_ms or 0, env, against=against)
        group = await self.reply_load(
            url, clients, rate=rate, tokens=reply_tokens, followers=followers
        )
        try:
            _, failed, _ = await self._connect(group, 120)
            await group.run(warmup_s)
            await group.all("reset", "reset", 10)
            cpu0 = (server.cpu(), upstream.cpu(), group.cpu())
            started = time.monotonic()
            spy = await self._profile(label, server, window_s) if target == "tokenwire" else None
            await asyncio.sleep(window_s)
            if spy is not None:
                await spy.process.wait()
            snaps = await group.all("snap", "snap", 30)
            elapsed = time.monotonic() - started
            cpu1 = (server.cpu(), upstream.cpu(), group.cpu())
            await group.all("quit", "bye", 10)
        finally:
            for proc in (*group.procs, server, upstream):
                await self.procs.stop(proc)
        gaps = [sum(col) for col in zip(*(s["gaps"] for s in snaps), strict=True)]  # type: ignore[misc]

        def total(key: str) -> int:
            return sum(int(s[key]) for s in snaps)  # type: ignore[call-overload]

        return StreamResult(
            label=label,
            target=target,
            flush_ms=None if target == "nest" else flush_ms,
            clients=clients,
            rate=rate,
            window_s=elapsed,
            connect_failed=failed,
            tokens=total("chars") / TOKEN_CHARS,
            frames=total("frames"),
            replies=total("replies"),
            complete=total("complete"),
            short=total("short"),
            errors=total("errors"),
            disconnects=total("disconnects"),
            gateway_cpu_s=cpu1[0] - cpu0[0],
            upstream_cpu_s=cpu1[1] - cpu0[1],
            loadgen_cpu_s=[b - a for a, b in zip(cpu0[2], cpu1[2], strict=True)],
            p50_gap_ms=_percentile(gaps, 0.50),
            p99_gap_ms=_percentile(gaps, 0.99),
            codes=_codes(snaps),
            followers=followers,
            follower_replies=total("followerReplies"),
            follower_complete=total("followerComplete"),
            follower_short=total("followerShort"),
            misplaced=total("misplaced"),
        )

    async def _profile(self, label: str, server: Proc, window_s: float) -> Proc | None:
        """py-spy the gateway through the window (its CPU then counts against the machine).

        `--gil` keeps only samples of the thread holding the GIL: on this VM
        py-spy cannot tell an idle thread from a busy one, so without it the
        event loop's epoll wait and the idle aiosqlite worker show up as
        "busy" (about half the samples of a 70%-loaded gateway).
        """
        if self.s.profile is None or not label.startswith(("B2", "B3")):
            return None
        name = label.replace(" ", "-").replace("#", "")
        self.s.profile.mkdir(parents=True, exist_ok=True)
        argv = [
            "py-spy",
            "record",
            "--pid",
            str(server.pid),
            "--rate",
            "250",
            "--nonblocking",
            "--gil",
        ]
        argv += ["--duration", str(max(1, int(window_s))), "--format", "raw"]
        argv += ["-o", str(self.s.profile / f"{name}.txt")]
        return await self.procs.start(f"py-spy-{name}", argv)

    # --- B2 and B5: CPU per token, tokenwire and the NestJS peer

    async def b2(
        self,
        flush_ms: float,
        label: str,
        *,
        env: dict[str, str] | None = None,
        against: bool = False,
    ) -> StreamResult:
        """B2's load; `env` adds to the gateway's environment, `against` runs the `--against` tree."""
        s = self.s
        return await self.stream_run(
            label,
            "tokenwire",
            flush_ms=flush_ms,
            clients=s.b2_clients,
            rate=s.b2_rate,
            reply_tokens=s.b2_reply_tokens,
            warmup_s=s.b2_warmup_s,
            window_s=s.b2_window_s,
            env=env,
            against=against,
        )

    async def b5_nest(self, label: str) -> StreamResult:
        s = self.s
        return await self.stream_run(
            label,
            "nest",
            flush_ms=None,
            clients=s.b2_clients,
            rate=s.b2_rate,
            reply_tokens=s.b2_reply_tokens,
            warmup_s=s.b2_warmup_s,
            window_s=s.b2_window_s,
        )

    async def turns(self, target: Target, label: str) -> StreamResult:
        """Clients looping 1-token replies: CPU per turn with almost nothing but the turn in it."""
        s = self.s
        return await self.stream_run(
            label,
            target,
            flush_ms=s.coalesce_ms if target == "tokenwire" else None,
            clients=s.turn_clients,
            rate=s.b2_rate,
            reply_tokens=1,
            warmup_s=s.b2_warmup_s,
            window_s=s.b2_window_s,
        )

    # --- B6: followers

    async def b6(self, followers: int, label: str) -> StreamResult:
        """B2's load (at the coalescing flush), each stream followed by `followers` more sockets."""
        s = self.s
        return await self.stream_run(
            label,
            "tokenwire",
            flush_ms=s.coalesce_ms,
            clients=s.b6_clients,
            rate=s.b2_rate,
            reply_tokens=s.b2_reply_tokens,
            warmup_s=s.b2_warmup_s,
            window_s=s.b2_window_s,
            followers=followers,
        )

    # --- B7: resume at 10 KB missed

    async def b7(self) -> Resumes:
        """Rounds of `b7_trios` concurrent replies, each resumed twice once it holds 10 KB.

        A first round warms the gateway up (lazy imports, the first database
        writes) and is not counted.
        """
        s = self.s
        upstream, up_url = await self.upstream(s.b7_rate, s.b7_reply_tokens)
        server, url = await self.tokenwire(up_url, s.coalesce_ms)
        reply_s = s.b7_reply_tokens / s.b7_rate
        config: dict[str, object] = {
            "mode": "resume",
            "resumeAtChars": s.b7_resume_at_chars,
            "roundTimeoutMs": (reply_s + 10) * 1000,
        }
        group = await self.loadgen(url, s.b7_trios, spread_s=0.5, extra=config)
        samples: list[dict[str, float | bool]] = []
        within = reply_s + 30
        try:
            _, failed, _ = await self._connect(group, 60)
            await group.all("round", "round", within)
            await group.all("reset", "reset", 10)
            for _ in range(s.b7_rounds):
                for reply in await group.all("round", "round", within):
                    samples += reply["samples"]  # type: ignore[arg-type]
            snaps = await group.all("snap", "snap", 10)
            await group.all("quit", "bye", 10)
        finally:
            for proc in (*group.procs, server, upstream):
                await self.procs.stop(proc)
        return Resumes(
            samples=samples,
            connect_failed=failed,
            errors=sum(int(x["errors"]) for x in snaps),  # type: ignore[call-overload]
            codes=_codes(snaps),
            misplaced=sum(int(x["misplaced"]) for x in snaps),  # type: ignore[call-overload]
        )

    # --- B3: capacity

    def b3_ok(self, r: StreamResult) -> bool:
        limit = (r.flush_ms or 0) + 50
        return (
            r.connect_failed == 0
            and r.short == 0
            and r.errors == 0
            and r.disconnects == 0
            and r.held >= 0.95
            and r.p99_gap_ms <= limit
        )

    async def b3(self) -> tuple[int, list[StreamResult]]:
        s = self.s
        deadline = time.monotonic() + s.b3_budget_s
        runs: list[StreamResult] = []

        async def attempt(clients: int) -> bool:
            result = await self.stream_run(
                f"B3 {clients}",
                "tokenwire",
                flush_ms=s.coalesce_ms,
                clients=clients,
                rate=s.b3_rate,
                reply_tokens=int(s.b3_rate * s.b3_reply_s),
                warmup_s=s.b3_warmup_s,
                window_s=s.b3_window_s,
            )
            runs.append(result)
            ok = self.b3_ok(result)
            print(
                f"  B3 {clients:>5} clients: {result.tokens_per_s:,.0f} tok/s "
                f"({result.held:.0%} held), p99 gap {result.p99_gap_ms:.0f} ms, "
                f"short {result.short}, errors {result.errors} -> {'ok' if ok else 'FAIL'}",
                flush=True,
            )
            return ok

        best, worst = 0, 0
        for level in s.b3_levels:
            if time.monotonic() > deadline:
                break
            if await attempt(level):
                best = level
            else:
                worst = level
                break
        for _ in range(s.b3_bisect):
            if not worst or worst - best <= max(25, best // 20) or time.monotonic() > deadline:
                break
            middle = (best + worst) // 2
            if await attempt(middle):
                best = middle
            else:
                worst = middle
        return best, runs

    # --- B1: added time to first token

    async def probe(
        self, client: str, gateway: str, upstream: str, samples: int
    ) -> dict[str, list[float | None]]:
        """TTFT samples, direct and via the gateway, from one client: "node"
        (socket.io-client, bench/loadgen/probe.js) or "python" (python-socketio, bench/probe.py)."""
        token = self.token("bench-probe")
        if client == "node":
            config = {"gateway": gateway, "upstream": upstream, "token": token, "samples": samples}
            argv = ["node", str(BENCH / "loadgen" / "probe.js"), orjson.dumps(config).decode()]
            env = {"NODE_PATH": str(self.s.cache / "loadgen" / "node_modules")}
        else:
            argv = [self.s.python, str(BENCH / "probe.py"), "--gateway", gateway]
            argv += ["--upstream", upstream, "--token", token, "--samples", str(samples)]
            env = {"PYTHONPATH": str(self.s.tree / "src")}
        self._probes += 1
        proc = await self.procs.start(f"probe-{client}-{self._probes}", argv, env=env, pipe=True)
        assert proc.process.stdout is not None
        try:
            line = await asyncio.wait_for(proc.process.stdout.readline(), 120)
        finally:
            await self.procs.stop(proc)
        if not line:
            raise RuntimeError(f"the TTFT probe failed; see {proc.log}")
        result: dict[str, list[float | None]] = orjson.loads(line)
        return result

    async def b1(self, loaded_clients: int) -> dict[str, dict[str, float]]:
        s = self.s
        tokens = int(s.b3_rate * s.b3_reply_s)
        upstream, up_url = await self.upstream(s.b3_rate, tokens)
        server, url = await self.tokenwire(up_url, s.coalesce_ms)
        figures: dict[str, dict[str, float]] = {}
        group: LoadGroup | None = None
        try:
            for client in s.b1_clients:
                figures[f"1 stream, {client}"] = _ttft(
                    await self.probe(client, url, up_url, s.b1_samples)
                )
            if loaded_clients:
                group = await self.reply_load(url, loaded_clients, rate=s.b3_rate, tokens=tokens)
                await self._connect(group, 120)
                await group.run(s.b3_warmup_s)
                for client in s.b1_clients:
                    cpu0, t0 = server.cpu(), time.monotonic()
                    name = f"{loaded_clients} streams, {client}"
                    figures[name] = _ttft(await self.probe(client, url, up_url, s.b1_samples))
                    figures[name]["gateway_cpu"] = (server.cpu() - cpu0) / (time.monotonic() - t0)
                await group.all("quit", "bye", 10)
        finally:
            for proc in (*(group.procs if group else ()), server, upstream):
                await self.procs.stop(proc)
        return figures

    async def b1_nest(self) -> dict[str, dict[str, float]]:
        """B1's one-stream probes against the NestJS peer: what the guide's stack adds."""
        s = self.s
        upstream, up_url = await self.upstream(s.b3_rate, int(s.b3_rate * s.b3_reply_s))
        server, url = await self.nest(up_url)
        try:
            return {
                client: _ttft(await self.probe(client, url, up_url, s.b1_samples))
                for client in s.b1_clients
            }
        finally:
            for proc in (server, upstream):
                await self.procs.stop(proc)

    # --- B4: idle connections

    async def b4(self) -> dict[str, float]:
        s = self.s
        # The gateway holds a socket per client, plus its own files (the load
        # generators share the clients between up to 4 processes). Short of
        # that, connections fail with EMFILE: say why, and measure anyway.
        open_files = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if open_files < s.b4_clients + 1024:
            print(
                f"  B4: only {open_files:,} open files per process (the hard limit, "
                f"`ulimit -Hn`) for {s.b4_clients:,} connections; expect failed "
                f"connections unless it is {s.b4_clients + 1024:,} or more",
                flush=True,
            )
        upstream, up_url = await self.upstream(1, 1)
        server, url = await self.tokenwire(
            up_url, 0, {"PING_INTERVAL": f"{s.b4_ping_s:g}", "PING_TIMEOUT": "20", **self.s.b4_env}
        )
        group = await self.loadgen(url, s.b4_clients, per_proc=2500)
        warm: LoadGroup | None = None
        try:
            # One connection first, so lazily imported code is not counted per connection.
            warm = await self.loadgen(url, 1)
            await self._connect(warm, 30)
            await asyncio.sleep(0.5)
            rss0 = server.rss()
            cpu0 = server.cpu()
            ok, failed, connect_s = await self._connect(group, 600)
            connect_cpu = server.cpu() - cpu0
            rss1 = server.rss()
            await asyncio.sleep(s.b4_hold_s)
            snaps = await group.all("snap", "snap", 60)
            rss2 = server.rss()
            open_now = sum(int(x["open"]) for x in snaps)  # type: ignore[call-overload]
            disconnects = sum(int(x["disconnects"]) for x in snaps)  # type: ignore[call-overload]
            loadgen_rss = group.rss()
            await group.all("quit", "bye", 30)
            await warm.all("quit", "bye", 10)
        finally:
            for proc in (*group.procs, *(warm.procs if warm else ()), server, upstream):
                await self.procs.stop(proc)
        return {
            "clients": s.b4_clients,
            "connected": ok,
            "failed": failed,
            "open_after_hold": open_now,
            "disconnects": disconnects,
            "connect_s": connect_s,
            "accept_per_s": ok / connect_s if connect_s else 0.0,
            "connect_cpu_ms_per_conn": connect_cpu / max(ok, 1) * 1000,
            "rss_before": rss0,
            "rss_connected": rss1,
            "rss_after_hold": rss2,
            "kib_per_conn": (rss2 - rss0) / max(ok, 1) / 1024,
            "hold_s": s.b4_hold_s,
            "loadgen_rss": loadgen_rss,
        }


def _codes(snaps: list[dict[str, object]]) -> dict[str, int]:
    """The error codes the load generators counted, summed."""
    counts: Counter[str] = Counter()
    for snap in snaps:
        counts.update(cast(dict[str, int], snap["codes"]))
    return dict(counts)


def _ttft(samples: dict[str, list[float | None]]) -> dict[str, float]:
    # A reply with no chat:message is None (node) or NaN (python): left out.
    pairs = [
        (d * 1000, v * 1000)
        for d, v in zip(samples["direct"], samples["via"], strict=True)
        if d is not None and v is not None and not math.isnan(v)
    ]
    direct = [d for d, _ in pairs]
    via = [v for _, v in pairs]
    return {
        "n": len(via),
        "direct_p50": percentile(direct, 0.5),
        "direct_p99": percentile(direct, 0.99),
        "via_p50": percentile(via, 0.5),
        "via_p99": percentile(via, 0.99),
        "added_p50": percentile(via, 0.5) - percentile(direct, 0.5),
        "added_p99": percentile(via, 0.99) - percentile(direct, 0.99),
        # the median of per-pair differences, less sensitive to drift under load
        "paired_p50": statistics.median(v - d for d, v in pairs) if pairs else math.nan,
    }


def cpu_count() -> int:
    return os.cpu_count() or 1
