"""The shared beat (`tokenwire.pacing`): every reply's frames on the same instants."""

from __future__ import annotations

import asyncio
import math
from typing import Any

import pytest

from tokenwire.chat.writer import ChunkWriter, Sink
from tokenwire.pacing import Beat, next_beat

# Timers on a loaded CI machine fire late, never much early (uvloop keeps ms).
LATE_S = 0.03
EARLY_S = 0.002


def on_beat(when: float, interval: float) -> bool:
    """`when` is at a multiple of `interval`, or just after it."""
    phase = when % interval
    return phase <= LATE_S or interval - phase <= EARLY_S


def test_next_beat_is_the_next_multiple_of_the_interval() -> None:
    assert next_beat(0.12, 0.05) == pytest.approx(0.15)
    assert next_beat(0.151, 0.05) == pytest.approx(0.2)
    assert next_beat(1000.001, 0.02) == pytest.approx(1000.02)
    assert next_beat(-math.inf, 0.05) == -math.inf  # never sent: nothing to wait for


def test_a_beat_needs_an_interval() -> None:
    with pytest.raises(ValueError, match="interval"):
        Beat(0)


async def test_waiters_that_start_apart_wake_together_on_one_timer() -> None:
    beat = Beat(0.05)
    loop = asyncio.get_running_loop()
    await beat.wait()  # start just after a beat
    woke: list[float] = []

    async def waiter(delay: float) -> None:
        await asyncio.sleep(delay)
        await beat.wait()
        woke.append(loop.time())

    tasks = [asyncio.create_task(waiter(d)) for d in (0.0, 0.01, 0.02)]
    await asyncio.sleep(0.025)
    handle = beat._handle
    assert handle is not None and len(beat._waiters) == 3  # one timer for all three
    await asyncio.gather(*tasks)
    assert max(woke) - min(woke) < 0.005, woke
    assert all(on_beat(t, 0.05) for t in woke), woke


async def test_a_cancelled_wait_leaves_the_others_waiting() -> None:
    beat = Beat(0.05)
    cancelled = asyncio.create_task(beat.wait())
    kept = asyncio.create_task(beat.wait())
    await asyncio.sleep(0)
    cancelled.cancel()
    await asyncio.wait_for(kept, 1)
    assert cancelled.cancelled()
    await beat.wait()  # and the beat goes on
    assert beat._waiters == []


async def test_frames_after_the_first_fall_on_the_beat() -> None:
    """The first chunk goes at once; the rest are coalesced and sent on multiples of the interval."""
    loop = asyncio.get_running_loop()
    sent: list[tuple[float, dict[str, Any]]] = []

    async def emit(_event: str, payload: dict[str, Any]) -> None:
        sent.append((loop.time(), payload))

    writer = ChunkWriter(Sink(emit), message_id="m", conversation_id="c", flush_s=0.1)
    await writer.release()
    # Start mid-interval, so "at once" and "on the beat" differ.
    await Beat(0.1).wait()
    await asyncio.sleep(0.05)
    started = loop.time()
    for i in range(100):
        await writer.write(f"t{i} ")
        await asyncio.sleep(0.005)
    await writer.flush()
    times = [t for t, _ in sent]
    assert times[0] - started < 0.005  # the first token is not held for the beat
    assert all(on_beat(t, 0.1) for t in times[1:-1]), [round(t % 0.1, 4) for t in times]
    assert 4 <= len(sent) <= 12  # ~0.5 s of tokens in 100 ms frames, not 100 frames
    offsets = [p["offset"] for _, p in sent]
    contents = [p["content"] for _, p in sent]
    assert offsets == [sum(len(c) for c in contents[:i]) for i in range(len(contents))]
    assert "".join(contents) == "".join(f"t{i} " for i in range(100))
