"""Start the OpenAI-compatible gateway (``npud-llm serve``) as a subprocess, ready when healthy.

The one launcher of the gateway for tests and benchmarks: it runs ``python -m npud.llm.cli
serve`` (what the ``npud-llm`` entry point runs) against an npud socket on a free loopback
port, and readiness is the gateway's own ``/health`` answering 200 (or, for a test of an
unhealthy gateway, answering at all). Start the npud it talks to with
:mod:`npud.testing.daemon`.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

__all__ = ["GatewayDied", "GatewayProcess", "free_port", "start_gateway"]


class GatewayDied(RuntimeError):
    """The gateway exited, or did not come up in time; the message has its log."""


def free_port() -> int:
    """A TCP port nobody listens on right now (loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(slots=True, eq=False)
class GatewayProcess:
    """A running ``npud-llm serve`` (an identity object); the caller that started it stops it."""

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

    def health(self, timeout_s: float = 10.0) -> int | None:
        """The status ``/health`` answers, or None while nothing answers on the port."""
        url = self.url + "/health"  # http on loopback, built here: no user-supplied scheme
        try:
            with urllib.request.urlopen(url, timeout=timeout_s) as reply:  # noqa: S310
                return int(reply.status)
        except urllib.error.HTTPError as exc:
            return exc.code
        except (urllib.error.URLError, OSError):
            return None

    def stop(self, timeout_s: float = 15.0) -> int:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``; the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait(timeout=5)


def start_gateway(
    npud_socket: Path,
    tmp: Path,
    *args: str,
    healthy: bool = True,
    timeout_s: float = 60.0,
    job_timeout_s: float = 10.0,
) -> GatewayProcess:
    """Start ``npud-llm serve`` against ``npud_socket`` with ``args`` after the fixed ones, its
    output in ``tmp/gateway-<port>.log``, and wait until ``/health`` says 200 (or, unless
    ``healthy``, until it answers at all). Every job asks npud for a ``job_timeout_s`` watchdog.
    The caller owns the process: stop it with :meth:`GatewayProcess.stop`.

    Raises:
        GatewayDied: it exited, or was not up within ``timeout_s`` (it is stopped).
    """
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
                f"{job_timeout_s:g}",
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
            raise GatewayDied(f"npud-llm serve exited with {proc.returncode}:\n{gateway.log()}")
        status = gateway.health()
        if status == 200 or (status is not None and not healthy):
            return gateway
        if time.monotonic() > deadline:
            gateway.stop()
            raise GatewayDied(f"the gateway was not up within {timeout_s} s:\n{gateway.log()}")
        time.sleep(0.2)  # polling a port the process has not opened yet: nothing to wait on
