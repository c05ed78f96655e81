"""A real npud daemon for a benchmark: started on a private socket, ready when it says so.

The daemon is started with this interpreter (``python -m npud.daemon --device sim``) on a
temporary socket and state directory, with a chosen scheduling policy. Readiness is not guessed:
the benchmark binds a datagram socket, passes it as ``NOTIFY_SOCKET`` and waits for the daemon's
``READY=1``, as systemd would. If the daemon dies while the benchmark runs, :meth:`check` raises
with the tail of its log, so the runner reports the benchmark as failed to run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


class DaemonDied(RuntimeError):
    """The benchmark's daemon exited or never became ready."""


@dataclass(slots=True, eq=False)
class BenchDaemon:
    """A running daemon (an identity object): its process, socket and log."""

    proc: subprocess.Popen[bytes]
    socket: Path
    log_path: Path
    policy: str

    def check(self) -> None:
        """Raise :class:`DaemonDied` if the daemon is no longer running."""
        if self.proc.poll() is not None:
            raise DaemonDied(
                f"npud ({self.policy}) exited with {self.proc.returncode}:\n{self.log_tail()}"
            )

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the daemon's log."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _wait_ready(daemon: BenchDaemon, notify: socket.socket, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        daemon.check()
        notify.settimeout(0.5)
        try:
            msg = notify.recv(4096)
        except TimeoutError:
            continue
        if b"READY=1" in msg.split(b"\n"):
            return
    raise DaemonDied(f"npud sent no READY=1 within {timeout_s} s:\n{daemon.log_tail()}")


@contextlib.contextmanager
def running_daemon(
    policy: str = "npud", *, env: dict[str, str] | None = None, ready_timeout_s: float = 90.0
) -> Iterator[BenchDaemon]:
    """Start npud on the simulated NPU (process mode) with ``policy``; stop it on exit.

    The caller owns the daemon until the ``with`` block ends; then it gets SIGTERM (and SIGKILL
    if it has not drained within 30 s) and its temporary directory is removed.

    Raises:
        DaemonDied: the daemon exited or did not become ready in ``ready_timeout_s``.
    """
    tmp = Path(tempfile.mkdtemp(prefix=f"npud-bench-{policy}-"))
    sock = tmp / "npud.sock"
    notify_path = tmp / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("NPUD_", "NOTIFY_", "WATCHDOG_"))
    }
    full_env.update(
        {
            "NOTIFY_SOCKET": str(notify_path),
            "NPUD_CONFIG": "/dev/null",
            "NPUD_POLICY": policy,
            "NPUD_LOG_FORMAT": "json",
            "NPUD_SOCKET_MODE": "0600",
            "NPUD_SESSION_GRACE_S": "0.5",
            "NPUD_CLOSE_GRACE_S": "1.0",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
        }
    )
    full_env.update(env or {})
    log_path = tmp / "npud.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "npud.daemon",
                "--device",
                "sim",
                "--socket",
                str(sock),
                "--state-dir",
                str(tmp / "state"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=str(ROOT),
            start_new_session=True,
        )
    daemon = BenchDaemon(proc, sock, log_path, policy)
    try:
        _wait_ready(daemon, notify, ready_timeout_s)
        yield daemon
        daemon.check()
    finally:
        notify.close()
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)
