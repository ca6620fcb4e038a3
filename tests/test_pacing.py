"""The shared beat (`tokenwire.pacing`): every reply's frames on the same instants."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable
from typing import Any

import pytest
import uvloop

from tests.conftest import Client, GatewayFactory
from tokenwire.chat.events import Event
from tokenwire.chat.writer import ChunkWriter, Sink
from tokenwire.pacing import LEAD_S, Beat, next_beat
from tokenwire.testing import Script
from tokenwire.wire.protocol import encode

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
    # On a beat (as uvloop's whole-millisecond clock often is), the next one:
    # never the instant itself, which floating point gave for ~46% of them.
    for ms in range(3_000_000, 3_010_000, 50):
        assert next_beat(ms / 1000, 0.05) == pytest.approx(ms / 1000 + 0.05)


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

    async def emit(event: Event) -> None:
        payload = encode(event)[1]
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


class _Transport:
    """Records pause_reading / resume_reading with the loop time of each."""

    def __init__(self, closing: bool = False) -> None:
        self.calls: list[tuple[str, float]] = []
        self.closing = closing

    def pause_reading(self) -> None:
        self.calls.append(("pause", asyncio.get_running_loop().time()))

    def resume_reading(self) -> None:
        self.calls.append(("resume", asyncio.get_running_loop().time()))

    def is_closing(self) -> bool:
        return self.closing


async def test_a_held_transport_rests_until_just_before_the_beat() -> None:
    beat = Beat(0.1)
    loop = asyncio.get_running_loop()
    await beat.wait()  # just after a beat: the next is ~0.1 s away
    transport = _Transport()
    await beat.wait(hold=transport)  # type: ignore[arg-type]
    woke = loop.time()
    assert [name for name, _ in transport.calls] == ["pause", "resume"]
    resumed = transport.calls[1][1]
    assert resumed < woke  # resumed first: what collected is read before the beat
    assert woke - resumed >= LEAD_S - EARLY_S, (woke, resumed)
    assert on_beat(woke, 0.1)


async def test_a_transport_let_go_early_or_closing_is_not_left_paused() -> None:
    beat = Beat(0.1)
    await beat.wait()
    held, closing = _Transport(), _Transport(closing=True)
    waiting = asyncio.create_task(beat.wait(hold=held))  # type: ignore[arg-type]
    other = asyncio.create_task(beat.wait(hold=closing))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    assert [name for name, _ in held.calls] == ["pause"]
    assert closing.calls == []  # a closing transport is never paused
    waiting.cancel()
    beat.let_go(held)  # the reader left (stopped, failed): reading resumes at once
    assert [name for name, _ in held.calls] == ["pause", "resume"]
    await other
    assert [name for name, _ in held.calls] == ["pause", "resume"]  # not resumed twice


async def test_paced_replies_reuse_the_upstream_connection_and_survive_a_stop(
    gateway_factory: GatewayFactory, client_factory: Callable[[], Client]
) -> None:
    """A connection goes back to the pool reading: the next reply on it streams, stopped or not."""
    async with gateway_factory(stream_flush_ms=50) as gw:
        client = client_factory()
        await client.connect(gw.url, gw.token())
        for n in range(3):
            gw.upstream.enqueue(Script(count=40, delay_s=0.005))
            await client.emit("chat:start", {"message": f"paced {n}"})
            end = (await client.wait_for("chat:end"))[1]
            assert end["content"] == "".join(f"token{i} " for i in range(40))
        gw.upstream.enqueue(Script(count=400, delay_s=0.005))
        await client.emit("chat:start", {"message": "stop me"})
        await client.wait_for("chat:message")
        await asyncio.sleep(0.12)  # a beat or two: the reader is paused between them
        await client.call("chat:stop")
        await client.wait_for("chat:stopped")
        gw.upstream.enqueue(Script(count=40, delay_s=0.005))
        await client.emit("chat:start", {"message": "after the stop"})
        end = (await client.wait_for("chat:end"))[1]
        assert end["content"] == "".join(f"token{i} " for i in range(40))


class _Reader(asyncio.Protocol):
    def __init__(self) -> None:
        self.data = b""

    def data_received(self, data: bytes) -> None:
        self.data += data


async def _late_beat_reads_before_it_wakes() -> None:
    loop = asyncio.get_running_loop()
    writers: list[asyncio.StreamWriter] = []

    async def accept(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)

    server = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    transport, reader = await loop.create_connection(_Reader, "127.0.0.1", port)
    try:
        beat = Beat(0.05)
        await beat.wait()  # just after a beat: the next is ~50 ms away
        waiting = asyncio.create_task(beat.wait(hold=transport))  # type: ignore[arg-type]
        await asyncio.sleep(0.005)  # the reader is waiting; its transport is paused
        while not writers:  # noqa: ASYNC110 - the server's accept callback, once
            await asyncio.sleep(0.001)
        writers[0].write(b"tokens")  # they wait in the kernel, unread
        await asyncio.sleep(0.005)
        assert reader.data == b""
        # The loop runs late (a long burst of work): when it gets back, both
        # the release (LEAD_S before the beat) and the beat itself are due.
        time.sleep(0.06)  # noqa: ASYNC251 - blocking the loop is the point
        await waiting
        assert reader.data == b"tokens"  # read before the reader woke, not after
    finally:
        transport.close()
        for writer in writers:
            writer.close()
        server.close()
        await server.wait_closed()


@pytest.mark.parametrize(
    "loop_factory", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"]
)
def test_a_late_beat_reads_held_transports_before_waking_their_readers(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_late_beat_reads_before_it_wakes())


async def test_first_text_after_a_role_only_chunk_is_not_held_for_the_beat(
    gateway_factory: GatewayFactory, client_factory: Callable[[], Client]
) -> None:
    """OpenAI, vLLM and llama.cpp open with `{"role": "assistant", "content": ""}` in a write
    of its own; the text after it must still go out the moment it arrives.

    With a beat of 1,000 s, a reader that waited for the beat after the role
    chunk would hold the first token for minutes, whatever the clock's phase.
    """
    async with gateway_factory(stream_flush_ms=1_000_000) as gw:
        client = client_factory()
        await client.connect(gw.url, gw.token())
        # The double writes the role-only chunk at once, the text 0.3 s later.
        gw.upstream.enqueue(Script(tokens=["first", " second"], first_delay_s=0.3, delay_s=0.01))
        loop = asyncio.get_running_loop()
        started = loop.time()
        await client.emit("chat:start", {"message": "role chunk first"})
        first = (await client.wait_for("chat:message", timeout=10))[1]
        assert first["content"] == "first" and first["offset"] == 0
        assert loop.time() - started < 5
        await client.call("chat:stop")  # the rest waits for the (distant) beat
        await client.wait_for("chat:stopped")
