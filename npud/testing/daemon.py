"""Start the real npud daemon as a subprocess on a private socket, ready when it says so.

The one launcher of npud for tests and benchmarks: the end-to-end tests, the ``npuctl`` tests,
the reliability suite and ``python -m bench`` all start their daemons here, so how npud is
launched (its argv, a clean environment, the readiness handshake) is defined once.

- :func:`isolated_env` is the environment a private daemon starts from;
- :func:`spawn_npud` starts ``python -m npud.daemon --device sim`` on ``tmp/npud.sock`` without
  waiting for it;
- :func:`start_daemon` adds short grace periods fit for tests and waits for READY;
- :class:`DaemonProcess` is the running daemon: readiness, its log, stopping it.

Readiness is not guessed with sleeps: the launcher binds a datagram socket, passes it as
``NOTIFY_SOCKET`` and waits for the daemon's ``READY=1``, exactly as systemd would. A daemon
that exits before it is ready, or does not stop when told, raises :class:`DaemonDied` with its
log.
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
from typing import Any, Final

import npud

__all__ = [
    "NPUD_COMMAND",
    "SOURCE_ROOT",
    "TEST_SETTINGS",
    "DaemonDied",
    "DaemonProcess",
    "isolated_env",
    "spawn_npud",
    "start_daemon",
]

SOURCE_ROOT: Final = Path(npud.__file__).resolve().parents[1]
"""The directory that holds the ``npud`` package (in a checkout, the repository root). The
daemon starts there, with it first on ``PYTHONPATH``, so it runs this very code, and hooks that
settings name (``package.module:function``) import from the checkout as they do in the caller."""

_Socket = socket.socket  # a DaemonProcess's field is named ``socket`` (its gRPC socket's path)

NPUD_COMMAND: Final = (sys.executable, "-m", "npud.daemon")
"""How npud is started by default: this interpreter, so no installed script is needed."""

TEST_SETTINGS: Final[Mapping[str, str]] = {
    "NPUD_SESSION_GRACE_S": "0.5",
    "NPUD_CLOSE_GRACE_S": "2.0",
    "NPUD_SHUTDOWN_GRACE_S": "10",
    "NPUD_SOCKET_MODE": "0666",
}
"""What :func:`start_daemon` sets: short grace periods, so a test sees a lost client's session
end within a second, and a socket other test uids may connect to."""


class DaemonDied(RuntimeError):
    """The daemon exited (or never became ready, or would not stop); the message has its log."""


@dataclass(slots=True, eq=False)
class DaemonProcess:
    """A running npud subprocess and its notify socket (an identity object).

    The caller that started it owns it: :meth:`stop` ends the process and closes the socket.
    """

    proc: subprocess.Popen[bytes]
    socket: Path
    notify: _Socket
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

    def wait_ready(self, timeout: float = 300.0) -> bytes:
        """Wait for READY=1 and return that datagram. ``timeout`` is a hang guard, not a
        measurement: a daemon starting under qemu-user on a loaded machine took over a minute to
        open its simulated NPU.

        Raises:
            DaemonDied: the daemon exited first, or sent no READY=1 within ``timeout`` s.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise DaemonDied(f"npud exited with {self.proc.returncode}:\n{self.log()}")
            msg = self.receive(0.5)
            if msg is not None and b"READY=1" in msg.split(b"\n"):
                return msg
        raise DaemonDied(f"npud sent no READY=1 within {timeout} s:\n{self.log()}")

    def check(self) -> None:
        """Return if the daemon still runs.

        Raises:
            DaemonDied: it has exited (with the tail of its log).
        """
        code = self.proc.poll()
        if code is not None:
            raise DaemonDied(f"npud exited with {code}:\n{self.log_tail()}")

    def log(self) -> str:
        """The daemon's output so far."""
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 20) -> str:
        """The last ``lines`` lines of the daemon's output ("" if it cannot be read)."""
        try:
            text = self.log()
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def log_events(self, event: str | None = None) -> list[dict[str, Any]]:
        """The daemon's JSON log lines (optionally only those of one event)."""
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
        """Send ``sig``, wait for the exit status and return it; close the notify socket.

        Raises:
            DaemonDied: it had not exited within ``timeout`` s (it is SIGKILLed first).
        """
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise DaemonDied(f"npud did not exit within {timeout} s:\n{self.log()}") from None
        finally:
            self.notify.close()


def isolated_env(overrides: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment made fit for a private daemon, then ``overrides``.

    Drops every ``NPUD_*`` setting and systemd's ``NOTIFY_SOCKET``/``WATCHDOG_*`` (a daemon
    started from a shell inside a unit, or from a test run with npud variables set, must not
    inherit them); sets no config file (``NPUD_CONFIG=/dev/null``), JSON logs and puts
    :data:`SOURCE_ROOT` first on ``PYTHONPATH``. The caller owns the returned dict.
    """
    env = {
        k: v for k, v in os.environ.items() if not k.startswith(("NPUD_", "NOTIFY_", "WATCHDOG_"))
    }
    env.update(
        {
            "NPUD_CONFIG": "/dev/null",
            "NPUD_LOG_FORMAT": "json",
            "PYTHONPATH": os.pathsep.join(
                p for p in (str(SOURCE_ROOT), os.environ.get("PYTHONPATH", "")) if p
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

    Raises:
        OSError: ``tmp/notify.sock`` cannot be bound, or the command cannot be started.
    """
    tmp.mkdir(parents=True, exist_ok=True)
    sock = tmp / "npud.sock"
    notify_path = tmp / "notify.sock"
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
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
                cwd=str(SOURCE_ROOT),
                start_new_session=new_session,
            )
    except BaseException:
        notify.close()
        raise
    return DaemonProcess(proc, sock, notify, log_path)


def start_daemon(
    tmp: Path,
    *,
    env: Mapping[str, str] | None = None,
    watchdog_usec: int | None = None,
    extra_args: Sequence[str] = (),
    ready_timeout_s: float = 300.0,
) -> DaemonProcess:
    """Start npud on the simulated NPU on ``tmp/npud.sock`` with :data:`TEST_SETTINGS` (then
    ``env``) and wait for READY. The caller owns the daemon (:meth:`DaemonProcess.stop`).

    Raises:
        DaemonDied: it exited or was not ready within ``ready_timeout_s`` (it is killed).
    """
    full_env = isolated_env(TEST_SETTINGS)
    if watchdog_usec is not None:
        full_env["WATCHDOG_USEC"] = str(watchdog_usec)
    full_env.update(env or {})
    daemon = spawn_npud(tmp, full_env, args=extra_args)
    try:
        daemon.wait_ready(ready_timeout_s)
    except BaseException:
        daemon.stop(signal.SIGKILL, timeout=10)
        raise
    return daemon
