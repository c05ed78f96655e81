"""Start the real npud daemon as a subprocess on a temporary socket: the one launcher.

:func:`spawn_npud` starts npud on a temporary socket (``tests/cli`` uses it with its own
environment); :func:`start_daemon` adds the end-to-end tests' environment and waits for READY.
:func:`isolated_env` is the environment both start from.

This module is the only place that knows how npud is launched and when it is ready: the test
harnesses (``tests/daemon``, ``tests/cli``, ``tests/reliability``) and the benchmarks
(``bench/daemon.py``, and through it ``bench/decode.py``) all start their daemons here. It lives
under ``tests/`` rather than in the package because it is tooling, not product; the repository
root is on ``sys.path`` for pytest and for ``python -m bench``, so both import it as
``tests.daemon.harness`` without a path hack.

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
NPUD_COMMAND = (sys.executable, "-m", "npud.daemon")
"""How npud is started by default: this interpreter, so no installed script is needed."""


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


def isolated_env(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment made fit for a private daemon, then ``overrides``.

    Drops every ``NPUD_*`` setting and systemd's ``NOTIFY_SOCKET``/``WATCHDOG_*`` (a daemon
    started from a shell inside a unit, or from a test run with npud variables set, must not
    inherit them); sets no config file (``NPUD_CONFIG=/dev/null``), JSON logs and ``PYTHONPATH``
    to this checkout. The caller owns the returned dict.
    """
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("NPUD_", "NOTIFY_", "WATCHDOG_"))
    }
    env.update(
        {
            "NPUD_CONFIG": "/dev/null",
            "NPUD_LOG_FORMAT": "json",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p
            ),
        }
    )
    env.update(overrides or {})
    return env


def spawn_npud(
    tmp: Path,
    env: Mapping[str, str],
    *,
    args: Sequence[str] = (),
    log_stdout: bool = True,
    command: Sequence[str] = NPUD_COMMAND,
    new_session: bool = False,
) -> DaemonProcess:
    """Start ``python -m npud.daemon --device sim`` on ``tmp/npud.sock``; do not wait for it.

    The daemon gets ``env`` plus ``NOTIFY_SOCKET`` naming a datagram socket bound here at
    ``tmp/notify.sock`` (the returned process owns it: :meth:`DaemonProcess.wait_ready` reads
    it), its state in ``tmp/state`` and ``args`` after the fixed ones. Its stderr (and stdout
    unless ``log_stdout`` is False: then it is discarded) goes to ``tmp/npud.log``.
    ``command`` replaces ``python -m npud.daemon`` (an installed ``npud``, another build);
    ``new_session`` starts it in its own session, so a Ctrl-C meant for the caller does not
    reach it (the caller then stops it itself). The caller owns the process: stop it with
    :meth:`DaemonProcess.stop`.
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
                *command,
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
            start_new_session=new_session,
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
    full_env = isolated_env(
        {
            "NPUD_SESSION_GRACE_S": "0.5",
            "NPUD_CLOSE_GRACE_S": "2.0",
            "NPUD_SHUTDOWN_GRACE_S": "10",
            "NPUD_SOCKET_MODE": "0666",
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
