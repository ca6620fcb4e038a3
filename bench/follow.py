"""B6 and B7: following a reply from more sockets than the one that started it (issue 13).

B6 is B2's load with each stream followed by two more sockets of its user
that `chat:join` the conversation, against the same load unfollowed, in the
same run: gateway CPU per *delivered* token (each token counted once per
socket that received it), and the ratio of the two. Every follower's reply
must arrive whole and in place, so the figure cannot pass by dropping.

B7 resumes a reply holding ~10 KB from a new socket at offset 0 and times the
catch-up, against a resume at the length the client holds (nothing missed)
on the same replies: the catch-up must be one chat:message carrying all the
missed text, not a replay per token.
"""

from __future__ import annotations

from bench.report import Figure
from bench.scenarios import Bench, StreamResult

__all__ = ["B6_HELD", "B6_TARGET", "B7_TARGET", "b6", "b7"]

# With two followers, three sockets receive each token; if a follower's token
# costs at most half a stream's, the three cost at most (1 + 2 × ½) / 3 of
# three streams' per token.
B6_TARGET = 2 / 3
# The ratio is judged only when both arms delivered this share of the tokens
# offered: a gateway that falls behind (on a machine busy with other work)
# coalesces more tokens into each frame, which lowers its CPU per token and
# says nothing about followers. Dropping is judged always.
B6_HELD = 0.90
# A 10 KB catch-up is one more frame after the ack; a replay per token would
# be thousands.
B7_TARGET = 2.0


def _us_per_token(results: list[StreamResult]) -> float:
    return sum(r.gateway_cpu_s for r in results) / sum(r.tokens for r in results) * 1e6


def _frames_per_token(results: list[StreamResult]) -> float:
    return sum(r.frames for r in results) / sum(r.tokens for r in results)


def _held(results: list[StreamResult]) -> float:
    """Tokens delivered as a share of what every socket would get at the offered rate."""
    offered = sum(r.clients * (1 + r.followers) * r.rate * r.window_s for r in results)
    return sum(r.tokens for r in results) / offered if offered else 0.0


def _per_s(results: list[StreamResult], field: str) -> float:
    return float(sum(getattr(r, field) for r in results)) / sum(r.window_s for r in results)


async def b6(bench: Bench) -> tuple[list[Figure], list[StreamResult]]:
    """Followed and unfollowed runs in pairs, so drift on the machine hits both alike."""
    s = bench.s
    alone: list[StreamResult] = []
    followed: list[StreamResult] = []
    for pair in range(s.b6_pairs):
        print(f"B6 pair {pair + 1}: {s.b6_clients} unfollowed streams ...", flush=True)
        alone.append(await bench.b6(0, f"B6 unfollowed #{pair + 1}"))
        print(
            f"B6 pair {pair + 1}: {s.b6_clients} streams, {s.b6_followers} followers each ...",
            flush=True,
        )
        followed.append(await bench.b6(s.b6_followers, f"B6 followed #{pair + 1}"))
    us, base = _us_per_token(followed), _us_per_token(alone)
    ratio = us / base
    # What each token delivered to a follower added: the CPU per second the
    # followers added over the tokens per second they received.
    extra_cpu = _per_s(followed, "gateway_cpu_s") - _per_s(alone, "gateway_cpu_s")
    extra_tokens = _per_s(followed, "tokens") - _per_s(alone, "tokens")
    marginal = extra_cpu / extra_tokens * 1e6 if extra_tokens > 0 else float("nan")
    whole = all(r.followers_whole for r in followed)
    held = min(_held(followed), _held(alone)) >= B6_HELD
    replies = sum(r.follower_replies for r in followed)
    complete = sum(r.follower_complete for r in followed)
    subscribers = s.b6_clients * (1 + s.b6_followers)
    flush = f"STREAM_FLUSH_MS={s.coalesce_ms:g}"
    figures = [
        Figure(
            "B6",
            f"CPU per delivered token, {s.b6_clients} × {s.b2_rate:g} tok/s streams each followed "
            f"by {s.b6_followers} more sockets (chat:join; {subscribers} subscribers), {flush}",
            f"{us:.1f} µs ({_frames_per_token(followed):.2f} frames/token, "
            f"{_held(followed):.0%} of the offered tokens; followers: "
            f"{complete:,} of {replies:,} replies whole)",
            "every follower's reply whole",
            whole,
        ),
        Figure(
            "B6",
            f"baseline: CPU per delivered token, the same {s.b6_clients} streams unfollowed, {flush}",
            f"{base:.1f} µs ({_frames_per_token(alone):.2f} frames/token, "
            f"{_held(alone):.0%} of the offered tokens)",
        ),
        Figure(
            "B6",
            "a follower's token: the CPU the followers added ÷ the tokens they received "
            "(per second, followed − unfollowed)",
            f"{marginal:.1f} µs ({marginal / base:.2f} × an unfollowed stream's token)"
            + ("" if held else "; meaningless: an arm did not hold its load"),
        ),
        Figure(
            "B6",
            "**followed / unfollowed CPU per delivered token**",
            f"**{ratio:.2f}**"
            + ("" if held else f" (an arm held < {B6_HELD:.0%} of the load: no verdict)"),
            f"≤ {B6_TARGET:.2f} (a follower's token ≤ ½ a stream's)",
            False if not whole else (ratio <= B6_TARGET if held else None),
        ),
    ]
    return figures, alone + followed


async def b7(bench: Bench) -> tuple[list[Figure], list[str]]:
    s = bench.s
    print(
        f"B7: resume at {s.b7_resume_at_chars:,} characters missed, {s.b7_trios} replies "
        f"× {s.b7_rounds} rounds at {s.b7_rate:g} tok/s ...",
        flush=True,
    )
    r = await bench.b7()
    n = len(r.samples)
    frames = r.catchup_frames
    one = n > 0 and max(frames) == 1 and min(frames) == 1
    whole = r.complete == n and r.errors == 0 and r.misplaced == 0 and r.connect_failed == 0
    catchup, baseline = r.p("catchupMs", 0.5), r.p("baselineAckMs", 0.5)
    ratio = catchup / baseline
    flush = f"STREAM_FLUSH_MS={s.coalesce_ms:g}"
    figures = [
        Figure(
            "B7",
            f"resume at offset 0 of a reply holding {r.held / 1000:.1f} KB (a new socket, {n} "
            f"replies at {s.b7_rate:g} tok/s, {flush}): emit → catch-up chat:message p50 / p99",
            f"{catchup:.2f} / {r.p('catchupMs', 0.99):.2f} ms "
            f"(ack {r.p('ackMs', 0.5):.2f} / {r.p('ackMs', 0.99):.2f} ms)",
        ),
        Figure(
            "B7",
            "catch-up frames: chat:message events until the resumer holds the missed text "
            f"(min / max of {n}); all three sockets end with the saved text",
            f"{min(frames, default=0)} / {max(frames, default=0)}; {r.complete} of {n} whole",
            "1 frame, all whole",
            one and whole,
        ),
        Figure(
            "B7",
            "baseline: resume at the length the client holds (nothing missed), same replies: "
            "emit → ack p50 / p99",
            f"{baseline:.2f} / {r.p('baselineAckMs', 0.99):.2f} ms",
        ),
        Figure(
            "B7",
            "**10 KB catch-up / nothing-missed resume, p50**",
            f"**{ratio:.2f}**",
            f"≤ {B7_TARGET:.2f}",
            ratio <= B7_TARGET,
        ),
    ]
    notes = [
        f"B7: {s.b7_trios} concurrent replies of {s.b7_reply_tokens:,} tokens at "
        f"{s.b7_rate:g} tok/s per round (a fast model, so a reply reaches "
        f"{s.b7_resume_at_chars:,} characters in seconds), after one warm-up round; each is "
        "resumed by two sockets of its user connected beforehand: one at the length its "
        "starter holds (the baseline), then, once that is acknowledged and the next chunk "
        "has arrived, one at offset 0; each 10 ms after a chunk arrived, between two of the "
        "gateway's shared flush beats. "
        "Times are from the emit to the ack and to the first chat:message, in the client."
        + (f" Errors: {r.codes}." if r.codes else "")
    ]
    return figures, notes
