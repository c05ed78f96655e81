"""Start the real npud daemon as a subprocess on a temporary socket, for end-to-end tests.

:func:`spawn_npud` starts npud on a temporary socket (``tests/cli`` uses it with its own
environment); :func:`start_daemon` adds the end-to-end tests' environment and waits for READY.

Readiness is not guessed with sleeps: the harness binds a datagram socket, passes it as
``NOTIFY_SOCKET`` and waits for the daemon's ``READY=1``, exactly as systemd would.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class DaemonProcess:
    """A running npud subprocess and its notify socket."""

    proc: subprocess.Popen[bytes]
    socket: Path
    notify: socket.socket
    log_path: Path
    messages: list[bytes] = field(default_factory=list)

    def receive(self, timeout: float) -> bytes | None:
        """The next sd_notify datagram, or None after ``timeout`` seconds."""
        self.notify.settimeout(timeout)
        try:
            msg = self.notify.recv(4096)
        except TimeoutError:
            return None
        self.messages.append(msg)
        return msg

    def wait_ready(self, timeout: float = 60.0) -> bytes:
        """Wait for READY=1 (fails with the daemon's log if it exits first)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"npud exited with {self.proc.returncode}:\n{self.log()}")
            msg = self.receive(0.5)
            if msg is not None and b"READY=1" in msg.split(b"\n"):
                return msg
        raise AssertionError(f"npud sent no READY=1 within {timeout} s:\n{self.log()}")

    def log(self) -> str:
        """The daemon's stderr so far."""
        return self.log_path.read_text(errors="replace")

    def log_events(self, event: str | None = None) -> list[dict[str, Any]]:
        """The daemon's JSON log lines (optionally only one event)."""
        out = []
        for line in self.log().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if event is None or rec.get("event") == event:
                out.append(rec)
        return out

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send ``sig`` and wait for the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"npud did not exit within {timeout} s:\n{self.log()}") from None
        finally:
            self.notify.close()


def spawn_npud(
    tmp: Path, env: Mapping[str, str], *, args: Sequence[str] = (), log_stdout: bool = True
) -> DaemonProcess:
    """Start ``python -m npud.daemon --device sim`` on ``tmp/npud.sock``; do not wait for it.

    The daemon gets ``env`` plus ``NOTIFY_SOCKET`` naming a datagram socket bound here at
    ``tmp/notify.sock`` (the returned process owns it: :meth:`DaemonProcess.wait_ready` reads
    it), its state in ``tmp/state`` and ``args`` after the fixed ones. Its stderr (and stdout
    unless ``log_stdout`` is False: then it is discarded) goes to ``tmp/npud.log``.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    sock = tmp / "npud.sock"
    notify_path = tmp / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(notify_path))
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
                *args,
            ],
            stdout=log if log_stdout else subprocess.DEVNULL,
            stderr=subprocess.STDOUT if log_stdout else log,
            env={**env, "NOTIFY_SOCKET": str(notify_path)},
            cwd=str(ROOT),
        )
    return DaemonProcess(proc, sock, notify, log_path)


def start_daemon(
    tmp: Path,
    *,
    env: dict[str, str] | None = None,
    watchdog_usec: int | None = None,
    extra_args: tuple[str, ...] = (),
) -> DaemonProcess:
    """Start ``python -m npud.daemon --device sim`` on ``tmp/npud.sock`` and wait for READY."""
    full_env = {
        k: v for k, v in os.environ.items() if not k.startswith(("NPUD_", "NOTIFY_", "WATCHDOG_"))
    }
    full_env.update(
        {
            "NPUD_CONFIG": "/dev/null",
            "NPUD_LOG_FORMAT": "json",
            "NPUD_SESSION_GRACE_S": "0.5",
            "NPUD_CLOSE_GRACE_S": "2.0",
            "NPUD_SHUTDOWN_GRACE_S": "10",
            "NPUD_SOCKET_MODE": "0666",
            "PYTHONPATH": str(ROOT),
        }
    )
    if watchdog_usec is not None:
        full_env["WATCHDOG_USEC"] = str(watchdog_usec)
    full_env.update(env or {})
    daemon = spawn_npud(tmp, full_env, args=extra_args)
    try:
        daemon.wait_ready()
    except BaseException:
        daemon.stop(signal.SIGKILL, timeout=10)
        raise
    return daemon
