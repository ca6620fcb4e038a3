"""The processes of a benchmark run: starting them, reading their CPU and memory, ending them.

Every process is started in its own session (process group) and registered in
`Processes`; `Processes.close()` ends every group it started (TERM, then KILL),
and runs from `finally`, from `atexit` and on SIGTERM, so an interrupted run
leaves nothing behind. CPU and memory come from /proc (no psutil).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import os
import platform
import resource
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import orjson

__all__ = [
    "Machine",
    "Processes",
    "Proc",
    "cpu_seconds",
    "free_port",
    "machine",
    "raise_fd_limit",
    "rss_bytes",
]

_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of the process (all its threads), in seconds."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def raise_fd_limit() -> int:
    """Raise the soft open-files limit to the hard limit (children inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = 1_048_576 if hard == resource.RLIM_INFINITY else hard
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft


@dataclass
class Proc:
    name: str
    process: asyncio.subprocess.Process
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    async def command(self, word: str, expect: str, within_s: float) -> dict[str, object]:
        """Send a command line (loadgen) and read lines until one whose `ev` is `expect`."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(word.encode() + b"\n")
        await self.process.stdin.drain()
        async with asyncio.timeout(within_s):
            while True:
                line = await self.process.stdout.readline()
                if not line:
                    raise RuntimeError(f"{self.name} exited; see {self.log}")
                reply: dict[str, object] = orjson.loads(line)
                if reply.get("ev") == expect:
                    return reply


class Processes:
    """Owns every process a run starts; `close()` ends them all."""

    def __init__(self, logs: Path) -> None:
        self.logs = logs
        self._procs: list[Proc] = []
        atexit.register(self._kill_all)
        with contextlib.suppress(ValueError):  # not the main thread
            signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, *_: object) -> None:
        self._kill_all()
        raise SystemExit(143)

    async def start(
        self,
        name: str,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
        pipe: bool = False,
    ) -> Proc:
        log = self.logs / f"{name}.log"
        with log.open("ab") as stderr:
            process = await asyncio.create_subprocess_exec(
                *argv,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                stdin=subprocess.PIPE if pipe else subprocess.DEVNULL,
                stdout=subprocess.PIPE if pipe else stderr,
                stderr=stderr,
                start_new_session=True,
                limit=2**24,
            )
        proc = Proc(name, process, log)
        self._procs.append(proc)
        return proc

    async def stop(self, proc: Proc, within_s: float = 10) -> None:
        if proc.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.process.wait(), within_s)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.process.wait()
        if proc in self._procs:
            self._procs.remove(proc)

    async def close(self) -> None:
        await asyncio.gather(*(self.stop(p) for p in list(self._procs)))

    def _kill_all(self) -> None:
        for proc in self._procs:
            if proc.process.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
        self._procs.clear()


async def wait_http(url: str, proc: Proc, within_s: float = 60) -> None:
    """Poll `url` until it answers; fail early if the process died."""
    import httpx

    deadline = time.monotonic() + within_s
    async with httpx.AsyncClient(timeout=2) as http:
        while time.monotonic() < deadline:
            if proc.process.returncode is not None:
                raise RuntimeError(f"{proc.name} exited at start-up; see {proc.log}")
            try:
                await http.get(url)
                return
            except httpx.HTTPError:
                await asyncio.sleep(0.1)
    raise RuntimeError(f"{proc.name} did not answer {url} within {within_s:.0f}s; see {proc.log}")


@dataclass(frozen=True)
class Machine:
    cpu: str
    cores: int
    ram_gib: float
    kernel: str
    python: str
    node: str
    packages: str

    def line(self) -> str:
        return (
            f"{self.cpu}, {self.cores} cores, {self.ram_gib:.0f} GiB RAM; Linux {self.kernel}; "
            f"Python {self.python}; Node {self.node}; {self.packages}"
        )


def machine(python: str) -> Machine:
    cpu = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    ram = 0.0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) / 1024**2
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip()
    probe = (
        "import sys, importlib.metadata as m; print(sys.version.split()[0]); "
        "print(', '.join(f'{p} {m.version(p)}' for p in "
        "('python-socketio', 'python-engineio', 'uvicorn', 'uvloop', 'httpx', 'orjson')))"
    )
    out = subprocess.run([python, "-c", probe], capture_output=True, text=True).stdout.split("\n")
    return Machine(
        cpu=cpu,
        cores=os.cpu_count() or 0,
        ram_gib=ram,
        kernel=platform.release(),
        python=out[0] if out else "?",
        node=node.lstrip("v"),
        packages=out[1] if len(out) > 1 else "",
    )
