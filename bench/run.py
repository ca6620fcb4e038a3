"""tokenwire's benchmark suite: one command, a quick mode (~3 min) and a full mode.

    uv run python bench/run.py --quick        # or: uv run python -m bench --quick
    uv run python bench/run.py --full

Starts an OpenAI-compatible upstream double (bench/upstream.py), the gateway
(`python -m tokenwire serve`, or the NestJS peer for B5) and Node load
generators (bench/loadgen, the official socket.io-client) as separate
processes, measures B1-B7, prints one table with the machine described and
rewrites docs/benchmarks.md. Every process it starts is ended when it exits,
also on Ctrl-C or an error. See bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `python bench/run.py`: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import follow
from bench.procs import Processes, machine, raise_fd_limit
from bench.report import Figure, markdown_table, write_doc
from bench.scenarios import Bench, Settings, StreamResult, Target, cpu_count

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT.parent / "shared" / "peers" / "nestjs-gateway"


def _export(ref: str, logs: Path, name: str = "tree") -> Path:
    """The tree at git revision `ref` (its src/), so concurrent edits do not move the target."""
    tree = logs / name
    tree.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref, "src"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
    return tree


def _python(tree: Path) -> str:
    """The tree's own interpreter if it has a .venv, else this one (the project's)."""
    python = tree / ".venv" / "bin" / "python"
    return str(python) if python.exists() else sys.executable


def _short(rev: str) -> str:
    return subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", rev],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()


def _settings(args: argparse.Namespace, logs: Path) -> Settings:
    tree = _export(args.ref, logs) if args.ref else Path(args.tree).resolve()
    python = _python(tree)
    against = _export(args.against, logs, "against") if args.against else None
    cache = ROOT / ".cache" / "bench"
    common = {
        "tree": tree,
        "python": python,
        "cache": cache,
        "logs": logs,
        "coalesce_ms": args.coalesce_ms,
        "double": args.double,
        "profile": Path(args.profile).resolve() if args.profile else None,
        "b2_reply_tokens": args.reply_tokens,
        "b2_clients": args.clients,
        "turns_per_conversation": args.turns,
        "against": against,
        "against_python": _python(against) if against else "",
    }
    if args.b3_levels:
        # Exactly these levels, in order, with no bisection and no time budget.
        levels = tuple(int(level) for level in args.b3_levels.split(","))
        common |= {"b3_levels": levels, "b3_bisect": 0, "b3_budget_s": 3600.0}
    if args.full:
        b3 = {"b3_levels": (25, 50, 100, 200, 400, 800, 1600, 3200), "b3_bisect": 3}
        b3 |= {"b3_budget_s": 420.0} | common  # --b3-levels wins
        return Settings(
            mode="full",
            b1_samples=300,
            b2_warmup_s=4,
            b2_window_s=args.window or 20,
            b2_flush_extra=(20,),
            b5_pairs=2,
            b6_pairs=2,
            b7_rounds=5,
            b3_warmup_s=4,
            b3_window_s=10,
            b4_clients=10_000,
            b4_hold_s=30,
            b4_ping_s=10,  # every connection answers 3 heartbeats in the hold
            **b3,
        )
    # Quick mode tries B3's target level only: each level's warm-up covers a
    # whole reply (6 s, see `Bench.stream_run`), so a search would not fit
    # in two minutes. --full searches.
    quick_b3 = {"b3_levels": (1000,), "b3_bisect": 0, "b3_budget_s": 60.0}
    return Settings(mode="quick", b2_window_s=args.window or 4.0, **(quick_b3 | common))


SCENARIOS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7")
DEFAULT_FLUSH_MS = 50.0  # STREAM_FLUSH_MS's default in src/tokenwire/config.py


def _capacity(capacity: int, levels: tuple[int, ...]) -> str:
    """B3's result: the capacity found, or what a run of chosen levels showed."""
    if len(levels) == 1:
        level = levels[0]
        return f"{level:,} held (only level run)" if capacity else f"{level:,} not held"
    return f"{capacity:,}" + (" (search bound)" if capacity == levels[-1] else "")


def _b3_budget(run: StreamResult, rate: float, streams: int = 1000) -> str:
    """What B3's target would cost the machine, from the CPU per token and per frame measured in `run`.

    The upstream double and the load generators share the machine with the
    gateway; at the target they would need this much of it on their own.
    """
    tokens_per_s = streams * rate
    frames_per_s = run.frames / run.window_s / max(run.clients, 1) * streams
    upstream = run.upstream_cpu_s / max(run.tokens, 1) * tokens_per_s
    loadgen = sum(run.loadgen_cpu_s) / max(run.frames, 1) * frames_per_s
    gateway = run.gateway_cpu_s / max(run.tokens, 1) * tokens_per_s
    return (
        f"B3 budget at {streams:,} streams ({tokens_per_s:,.0f} tokens/s, ~{frames_per_s:,.0f} "
        f"frames/s), scaled from the {run.clients}-client run: upstream double {upstream:.1f} "
        f"cores, load generators {loadgen:.1f} cores, gateway {gateway:.1f} cores, on a "
        f"{cpu_count()}-core machine."
    )


def _npm(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["npm", *args, "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=cwd,
        check=True,
        stdout=subprocess.DEVNULL,
    )


def _digest(*files: Path) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


def prepare_node(cache: Path, need_nest: bool) -> None:
    """Install the loadgen's socket.io-client and build the NestJS peer, once; cached by lockfile."""
    cache.mkdir(parents=True, exist_ok=True)
    loadgen_src = ROOT / "bench" / "loadgen"
    loadgen = cache / "loadgen"
    stamp = _digest(loadgen_src / "package-lock.json")
    if (loadgen / ".stamp").exists() and (loadgen / ".stamp").read_text() == stamp:
        pass
    else:
        print("  installing socket.io-client for the load generator ...", flush=True)
        shutil.rmtree(loadgen, ignore_errors=True)
        loadgen.mkdir(parents=True)
        for name in ("package.json", "package-lock.json"):
            shutil.copy(loadgen_src / name, loadgen / name)
        _npm(loadgen, "ci")
        (loadgen / ".stamp").write_text(stamp)
    if not need_nest:
        return
    nest = cache / "nest"
    stamp = _digest(*(sorted(p for p in PEER.rglob("*") if p.is_file())))
    if (nest / ".stamp").exists() and (nest / ".stamp").read_text() == stamp:
        return
    print("  building the NestJS peer (npm ci && npm run build; once) ...", flush=True)
    shutil.rmtree(nest, ignore_errors=True)
    shutil.copytree(PEER, nest)
    for path in (nest, *nest.rglob("*")):
        path.chmod(path.stat().st_mode | 0o200)
    _npm(nest, "ci")
    subprocess.run(["npm", "run", "build"], cwd=nest, check=True, stdout=subprocess.DEVNULL)
    (nest / ".stamp").write_text(stamp)


def _ms(x: float) -> str:
    return f"{x:.2f} ms"


_CLIENTS = {"node": "socket.io-client", "python": "python-socketio"}
_DOUBLES = {
    "realistic": "bench/upstream.py --shape realistic (as OpenAI streams: a role event alone, "
    "then one ~300-byte event per token, each its own write)",
    "lean": "bench/upstream.py --shape lean (the first token with the headers, ~150-byte events)",
    "repo": "python -m tokenwire.testing upstream",
}


async def run(args: argparse.Namespace, logs: Path) -> int:
    started = time.monotonic()
    load_before = os.getloadavg()
    s = _settings(args, logs)
    only = set(args.only.upper().split(",")) if args.only else set(SCENARIOS)
    fds = raise_fd_limit()
    prepare_node(s.cache, "B5" in only)
    host = machine(s.python)
    print(f"\nmachine: {host.line()}\nopen files: {fds}; logs: {logs}\n", flush=True)

    processes = Processes(logs)
    bench = Bench(s, processes)
    figures: list[Figure] = []
    runs: list[StreamResult] = []
    notes: list[str] = []
    try:
        # B2 and B5, interleaved in pairs so drift on the machine hits both
        # stacks alike: tokenwire as shipped (STREAM_FLUSH_MS=coalesce_ms),
        # the NestJS peer, tokenwire at STREAM_FLUSH_MS=0 (one frame per
        # token, as the peer sends); then any extra coalescing values.
        tw: dict[float, list[StreamResult]] = {}
        nest: list[StreamResult] = []
        # --against: the same load on another revision, and on this tree with
        # CONNECTION_RECOVERY=false, in the same pairs.
        against: dict[float, list[StreamResult]] = {}
        recovery_off: dict[float, list[StreamResult]] = {}
        rev = _short(args.against) if args.against else ""
        if only & {"B2", "B5"}:
            for pair in range(args.pairs or (s.b5_pairs if "B5" in only else 1)):
                for flush in (s.coalesce_ms, 0.0):
                    print(
                        f"B2/B5 pair {pair + 1}: tokenwire STREAM_FLUSH_MS={flush:g} ...",
                        flush=True,
                    )
                    tw.setdefault(flush, []).append(
                        await bench.b2(flush, f"B2 flush {flush:g} #{pair + 1}")
                    )
                    if s.against is not None:
                        print(
                            f"B2 pair {pair + 1}: {rev} STREAM_FLUSH_MS={flush:g} ...", flush=True
                        )
                        against.setdefault(flush, []).append(
                            await bench.b2(
                                flush, f"B2 {rev} flush {flush:g} #{pair + 1}", against=True
                            )
                        )
                        print(
                            f"B2 pair {pair + 1}: CONNECTION_RECOVERY=false "
                            f"STREAM_FLUSH_MS={flush:g} ...",
                            flush=True,
                        )
                        recovery_off.setdefault(flush, []).append(
                            await bench.b2(
                                flush,
                                f"B2 recovery off flush {flush:g} #{pair + 1}",
                                env={"CONNECTION_RECOVERY": "false"},
                            )
                        )
                    if "B5" in only and flush == s.coalesce_ms:
                        print(f"B2/B5 pair {pair + 1}: NestJS peer ...", flush=True)
                        nest.append(await bench.b5_nest(f"B5 NestJS #{pair + 1}"))
            if "B2" in only:
                for flush in s.b2_flush_extra:
                    print(f"B2: tokenwire STREAM_FLUSH_MS={flush:g} ...", flush=True)
                    tw[flush] = [await bench.b2(flush, f"B2 flush {flush:g}")]
            runs += [r for results in tw.values() for r in results] + nest
            runs += [r for arm in (against, recovery_off) for rs in arm.values() for r in rs]
            # A turn's own cost (chat:start, the database, history, the
            # request, the save, chat:end) with almost no tokens in it.
            turn_runs: dict[str, StreamResult] = {}
            targets: tuple[Target, ...] = ("tokenwire", "nest") if "B5" in only else ("tokenwire",)
            for target in targets:
                print(
                    f"B2: {target}, {s.turn_clients} clients looping 1-token replies ...",
                    flush=True,
                )
                turn_runs[target] = await bench.turns(target, f"B2 turns {target}")
            runs += list(turn_runs.values())

        def per_token(results: list[StreamResult]) -> float:
            return sum(r.gateway_cpu_s for r in results) / sum(r.tokens for r in results) * 1e6

        def per_turn(results: list[StreamResult]) -> float:
            return sum(r.gateway_cpu_s for r in results) / sum(r.replies for r in results) * 1e3

        def frames_per_token(results: list[StreamResult]) -> float:
            return sum(r.frames for r in results) / sum(r.tokens for r in results)

        nest_us = per_token(nest) if nest else None
        for flush, results in sorted(tw.items(), key=lambda item: item[0] != s.coalesce_ms):
            us = per_token(results)
            shipped = " (the default)" if flush == DEFAULT_FLUSH_MS else ""
            figures.append(
                Figure(
                    "B2",
                    f"CPU per delivered token, {s.b2_clients} × {s.b2_rate:g} tok/s, "
                    f"STREAM_FLUSH_MS={flush:g}{shipped}",
                    f"{us:.1f} µs ({frames_per_token(results):.2f} frames/token)",
                    f"≤ 0.5 × NestJS ({0.5 * nest_us:.1f} µs)" if nest_us else "≤ 0.5 × NestJS",
                    (us <= 0.5 * nest_us) if nest_us else None,
                )
            )
            figures.append(
                Figure(
                    "B2",
                    f"CPU per turn ({s.b2_reply_tokens}-token reply, conversations of "
                    f"{s.turns_per_conversation} turns), STREAM_FLUSH_MS={flush:g}",
                    f"{per_turn(results):.2f} ms",
                )
            )
        if only & {"B2", "B5"}:
            tw_turn = turn_runs["tokenwire"].cpu_per_turn_ms
            nest_turn = turn_runs["nest"].cpu_per_turn_ms if "nest" in turn_runs else None
            figures.append(
                Figure(
                    "B2",
                    f"CPU per turn of a 1-token reply ({s.turn_clients} clients looping them), "
                    f"STREAM_FLUSH_MS={s.coalesce_ms:g}"
                    + (f"; NestJS {nest_turn:.2f} ms" if nest_turn else ""),
                    f"{tw_turn:.2f} ms"
                    + (f" ({tw_turn / nest_turn:.2f} × NestJS)" if nest_turn else ""),
                )
            )

        def arm(results: list[StreamResult]) -> str:
            # CPU per token falls when a gateway lags and coalesces: show how
            # alike the arms' loads were.
            held = sum(r.tokens_per_s for r in results) / sum(r.clients * r.rate for r in results)
            return (
                f"{per_token(results):.1f} µs, {frames_per_token(results):.2f} frames/token, "
                f"{held:.0%} held"
            )

        for flush, results in against.items():
            ratio = per_token(tw[flush]) / per_token(results)
            off = per_token(tw[flush]) / per_token(recovery_off[flush])
            figures.append(
                Figure(
                    "B2",
                    f"CPU per delivered token, this tree ÷ {rev} (`--against {args.against}`), "
                    f"STREAM_FLUSH_MS={flush:g}",
                    f"{ratio:.2f} ({arm(tw[flush])} vs {arm(results)})",
                    "≤ 1.10",
                    ratio <= 1.10,
                )
            )
            figures.append(
                Figure(
                    "B2",
                    "CPU per delivered token, CONNECTION_RECOVERY on (the default) ÷ off, "
                    f"STREAM_FLUSH_MS={flush:g}",
                    f"{off:.2f} (off: {arm(recovery_off[flush])})",
                )
            )
        if nest_us is not None:
            figures.append(
                Figure(
                    "B5",
                    "NestJS peer CPU per delivered token, same load (1.00 frames/token)",
                    f"{nest_us:.1f} µs ({per_turn(nest):.2f} ms per turn)",
                )
            )
            for flush in (s.coalesce_ms, 0.0):
                if flush not in tw:
                    continue
                ratio = per_token(tw[flush]) / nest_us
                if flush == s.coalesce_ms:
                    name = f"**tokenwire / NestJS CPU per token** (STREAM_FLUSH_MS={flush:g})"
                    value = f"**{ratio:.2f}**"
                else:
                    name = "tokenwire / NestJS CPU per token, STREAM_FLUSH_MS=0 (a frame per token, as NestJS)"
                    value = f"{ratio:.2f}"
                figures.append(Figure("B5", name, value, "≤ 0.50", ratio <= 0.5))

        if "B6" in only:
            b6_figures, b6_runs = await follow.b6(bench)
            figures += b6_figures
            runs += b6_runs
        if "B7" in only:
            b7_figures, b7_notes = await follow.b7(bench)
            figures += b7_figures
            notes += b7_notes

        capacity = 0
        if "B3" in only:
            print(
                f"B3: capacity at {s.b3_rate:g} tok/s, STREAM_FLUSH_MS={s.coalesce_ms:g} ...",
                flush=True,
            )
            capacity, b3_runs = await bench.b3()
            runs += b3_runs
            if b3_runs:
                # Scaled from the largest run that held: past capacity the
                # gateway coalesces into fewer frames and its per-token
                # figures stop describing the load it carries.
                held = [r for r in b3_runs if bench.b3_ok(r)] or b3_runs
                notes.append(_b3_budget(max(held, key=lambda r: r.clients), s.b3_rate))
            figures.append(
                Figure(
                    "B3",
                    f"capacity: concurrent {s.b3_rate:g} tok/s replies held "
                    f"(all tokens, p99 gap ≤ {s.coalesce_ms + 50:g} ms, STREAM_FLUSH_MS={s.coalesce_ms:g})",
                    _capacity(capacity, s.b3_levels),
                    "≥ 1,000",
                    capacity >= 1000,
                )
            )
        if "B1" in only:
            loaded = int(0.8 * (capacity or args.capacity))
            print(f"B1: time to first token, 1 stream and {loaded} streams ...", flush=True)
            b1 = await bench.b1(loaded)
            for client in s.b1_clients:
                one = b1[f"1 stream, {client}"]
                who = f"{client} client: {_CLIENTS[client]}"
                figures.append(
                    Figure(
                        "B1",
                        f"added TTFT p50, 1 stream, {who} (direct {_ms(one['direct_p50'])}, "
                        f"via {_ms(one['via_p50'])})",
                        _ms(one["added_p50"]),
                        "≤ 1 ms",
                        one["added_p50"] <= 1,
                    )
                )
                figures.append(
                    Figure(
                        "B1",
                        f"added TTFT p99, 1 stream, {who} (direct {_ms(one['direct_p99'])}, "
                        f"via {_ms(one['via_p99'])})",
                        _ms(one["added_p99"]),
                        "≤ 5 ms",
                        one["added_p99"] <= 5,
                    )
                )
            if "B5" in only:  # the NestJS peer is built
                for client, f in (await bench.b1_nest()).items():
                    figures.append(
                        Figure(
                            "B1",
                            f"NestJS peer: added TTFT p50 / p99, 1 stream, {_CLIENTS[client]} "
                            f"(direct {_ms(f['direct_p50'])}, via {_ms(f['via_p50'])})",
                            f"{_ms(f['added_p50'])} / {_ms(f['added_p99'])}",
                        )
                    )
            for name, f in b1.items():
                if name.startswith("1 stream"):
                    continue
                figures.append(
                    Figure(
                        "B1",
                        f"added TTFT p50 / p99 at 80% of capacity ({name}, gateway CPU {f['gateway_cpu']:.0%})",
                        f"{_ms(f['added_p50'])} / {_ms(f['added_p99'])}",
                    )
                )
        if "B4" in only:
            print(f"B4: {s.b4_clients:,} idle connections ...", flush=True)
            b4 = await bench.b4()
            held = b4["open_after_hold"] == s.b4_clients and b4["disconnects"] == 0
            figures.append(
                Figure(
                    "B4",
                    f"memory per idle connection (RSS growth over {s.b4_clients:,})",
                    f"{b4['kib_per_conn']:.1f} KiB",
                    "≤ 20 KiB",
                    b4["kib_per_conn"] <= 20,
                )
            )
            figures.append(
                Figure(
                    "B4",
                    f"idle connections held {b4['hold_s']:g} s with heartbeats every {s.b4_ping_s:g} s",
                    f"{int(b4['open_after_hold']):,} of {s.b4_clients:,}",
                    "10,000 held" if s.mode == "full" else "all held (10,000 in --full)",
                    held,
                )
            )
            figures.append(
                Figure(
                    "B4",
                    "connections accepted per second (50 in flight per client process)",
                    f"{b4['accept_per_s']:,.0f}/s ({b4['connect_cpu_ms_per_conn']:.2f} ms CPU each)",
                )
            )
            notes.append(
                f"B4: gateway RSS {b4['rss_before'] / 2**20:.0f} MiB before, "
                f"{b4['rss_connected'] / 2**20:.0f} MiB connected, "
                f"{b4['rss_after_hold'] / 2**20:.0f} MiB after the hold; "
                f"load generators {b4['loadgen_rss'] / 2**20:.0f} MiB."
            )
    finally:
        await processes.close()

    elapsed = time.monotonic() - started
    # The machine may be shared (other jobs' test suites): say how busy it was.
    load = " / ".join(f"{x:.2f}" for x in load_before)
    load_after = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    notes.insert(0, f"Load average (1/5/15 min) {load} at the start, {load_after} at the end.")
    table = markdown_table(
        [
            {"id": f.key, "figure": f.name, "result": f.value, "target": f.target, "": f.verdict}
            for f in figures
        ]
    )
    print(f"\n{host.line()}\n\n{table}\n")
    run_rows = [r.row() for r in runs]
    print(markdown_table(run_rows))
    print(f"\n{s.mode} run: {elapsed:.0f} s")
    notes += [
        f"Upstream double: {_DOUBLES[s.double]}; "
        f"B2/B5 replies of {s.b2_reply_tokens} tokens at {s.b2_rate:g} tok/s, "
        f"B3 and B1 replies of {int(s.b3_rate * s.b3_reply_s)} tokens at {s.b3_rate:g} tok/s. "
        "A token is 4 characters; clients count characters. "
        f"Each client continues a conversation for {s.turns_per_conversation} turns, so "
        "history is loaded; CPU per turn is all the gateway's CPU per reply ended.",
        "tokenwire runs with SQLite (a file in a temp dir), the NestJS peer with SQLite in memory, "
        "as its README defaults. Both write the user message and the reply per turn; "
        "neither writes per token.",
        "CPU is user+sys from /proc/PID/stat over the measurement window (all threads); "
        "loadgen and upstream CPU are shown to prove they were not the bottleneck.",
        "B1 probes: one process per client library alternates a request straight to the "
        "upstream (Node: node:http; Python: httpx) and a chat:start through the gateway "
        "(socket.io-client; python-socketio), 2-token replies, time to the first text; "
        "added = p(via) - p(direct).",
    ]
    if not args.no_write:
        write_doc(
            ROOT / "docs" / "benchmarks.md",
            date=dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            command=f"uv run python bench/run.py --{s.mode}"
            + (f" --double {s.double}" if s.double != "realistic" else "")
            + (f" --only {args.only}" if args.only else "")
            + (f" --ref {args.ref}" if args.ref else "")
            + (f" --against {args.against}" if args.against else ""),
            mode=s.mode,
            machine=host.line(),
            figures=figures,
            runs=run_rows,
            notes=notes,
            elapsed_s=elapsed,
        )
        print("wrote docs/benchmarks.md")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__.split("\n\n")[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="about 3 minutes (default)")
    size.add_argument("--full", action="store_true", help="longer windows, 10,000 idle clients")
    parser.add_argument("--only", help="comma-separated subset, e.g. B2,B5")
    parser.add_argument(
        "--coalesce-ms",
        type=float,
        default=50,
        help="the coalescing STREAM_FLUSH_MS (B2, B3, B1)",
    )
    parser.add_argument(
        "--capacity", type=int, default=500, help="B1's capacity when B3 is not run (default 500)"
    )
    parser.add_argument(
        "--tree", default=str(ROOT), help="tokenwire tree to measure (its src/ and .venv)"
    )
    parser.add_argument(
        "--ref", help="measure this git revision's src/ (e.g. HEAD) instead of the work tree"
    )
    parser.add_argument(
        "--against",
        metavar="REV",
        help="also run B2's tokenwire arms on git revision REV and with CONNECTION_RECOVERY=false, "
        "in the same pairs (e.g. b883273^, the commit before connection state recovery)",
    )
    parser.add_argument(
        "--pairs",
        type=int,
        help="B2/B5 pairs (with --against, each pair also runs REV and recovery off); "
        "default 1, 2 in --full with B5",
    )
    parser.add_argument(
        "--double",
        choices=("realistic", "lean", "repo"),
        default="realistic",
        help="the upstream double: bench/upstream.py shaped as OpenAI streams (default) or "
        "its lean shape (the figures before issue 14), or python -m tokenwire.testing upstream",
    )
    parser.add_argument(
        "--profile",
        metavar="DIR",
        help="py-spy the gateway in each B2 and B3 window; raw stacks to DIR",
    )
    parser.add_argument(
        "--window",
        type=float,
        help="B2/B5 measurement window in seconds (quick 4, full 20): longer for steadier A/B runs",
    )
    parser.add_argument(
        "--b3-levels",
        metavar="N,N,...",
        help="run B3 at exactly these client counts (no search), e.g. 800,1000",
    )
    parser.add_argument(
        "--reply-tokens", type=int, default=200, help="B2/B5 reply length (default 200)"
    )
    parser.add_argument(
        "--clients", type=int, default=200, help="B2/B5 concurrent clients (default 200)"
    )
    parser.add_argument(
        "--turns",
        type=int,
        default=2,
        help="turns per conversation before a client starts a new one (default 2)",
    )
    parser.add_argument("--no-write", action="store_true", help="do not rewrite docs/benchmarks.md")
    parser.add_argument("--keep-logs", action="store_true", help="keep the process logs")
    args = parser.parse_args(argv)
    logs = Path(tempfile.mkdtemp(prefix="tokenwire-bench-"))
    failed = True
    try:
        code = asyncio.run(run(args, logs))
        failed = False
        return code
    except KeyboardInterrupt:
        print("\ninterrupted; every process was stopped", file=sys.stderr)
        return 130
    finally:
        if args.keep_logs or failed:
            print(f"logs kept in {logs}")
        else:
            with contextlib.suppress(OSError):
                shutil.rmtree(logs)


if __name__ == "__main__":
    raise SystemExit(main())
