"""A real npud and a real ``npud-llm serve`` on loopback, for end-to-end tests of the gateway.

The gateway runs as its own process, started the way users start it (``npud-llm serve``,
through the ``npud.llm.commands`` entry point), on a free port; readiness is its ``/health``
answering 200. The caller owns the processes and stops them with :meth:`GatewayProcess.stop`.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    """A TCP port nobody listens on right now (loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class GatewayProcess:
    """A running ``npud-llm serve``."""

    proc: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        """The gateway's output so far."""
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 15 s."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)


def start_gateway(
    npud_socket: Path, tmp: Path, *args: str, healthy: bool = True, timeout_s: float = 60.0
) -> GatewayProcess:
    """Start ``npud-llm serve`` against ``npud_socket`` and wait until it listens (and, when
    ``healthy``, until ``/health`` says 200)."""
    port = free_port()
    log_path = tmp / f"gateway-{port}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "npud.llm.cli",
                "serve",
                "--socket",
                str(npud_socket),
                "--port",
                str(port),
                "--job-timeout",
                "10",
                *args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    gateway = GatewayProcess(proc, port, log_path)
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise AssertionError(f"npud-llm serve exited with {proc.returncode}:\n{gateway.log()}")
        try:
            status = httpx.get(gateway.url + "/health", timeout=10).status_code
            if status == 200 or not healthy:
                return gateway
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            gateway.stop()
            raise AssertionError(f"the gateway was not up within {timeout_s} s:\n{gateway.log()}")
        time.sleep(0.2)


Counters = dict[str, int]


def wait_healthy(gateway: GatewayProcess, timeout_s: float = 60.0) -> None:
    """Poll ``/health`` until it answers 200; AssertionError with the log after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while httpx.get(gateway.url + "/health", timeout=30).status_code != 200:
        if time.monotonic() > deadline:
            raise AssertionError(f"the gateway was not healthy in {timeout_s} s:\n{gateway.log()}")
        time.sleep(0.05)


def wait_batcher(
    gateway: GatewayProcess, holds: Callable[[Counters], bool], timeout_s: float = 60.0
) -> None:
    """Poll the batcher's counters in ``/health`` until ``holds`` (a readiness wait, not a
    timing assertion); AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not holds(httpx.get(gateway.url + "/health", timeout=30).json()["batcher"]):
        if time.monotonic() > deadline:
            raise AssertionError(f"the batcher did not get there in {timeout_s} s")
        time.sleep(0.01)


async def until_batcher(
    client: httpx.AsyncClient, holds: Callable[[Counters], bool], timeout_s: float = 60.0
) -> None:
    """The asyncio form of :func:`wait_batcher` on ``client`` (based at the gateway's URL);
    TimeoutError after ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while not holds((await client.get("/health")).json()["batcher"]):
            await asyncio.sleep(0.01)
