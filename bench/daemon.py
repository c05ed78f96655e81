"""A real npud daemon for a benchmark: started on a private socket, ready when it says so.

The daemon is started with this interpreter (``python -m npud.daemon --device sim``) on a
temporary socket and state directory, with a chosen scheduling policy. Readiness is not guessed:
the launcher binds a datagram socket, passes it as ``NOTIFY_SOCKET`` and waits for the daemon's
``READY=1``, as systemd would. If the daemon dies while the benchmark runs, :meth:`check` raises
with the tail of its log, so the runner reports the benchmark as failed to run.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

# Why the launcher is imported from tests/: starting npud (its argv, the NOTIFY_SOCKET
# readiness handshake, a clean environment) is defined once, in tests/daemon/harness.py, and
# the end-to-end tests, the npuctl tests and the benchmarks all use that one definition. What
# is benchmark-specific stays here: the policy, the short grace periods, a private temporary
# directory removed afterwards, and DaemonDied instead of a test assertion. The repository root
# is on sys.path for `python -m bench` (and for scripts the runner starts, which it gives
# PYTHONPATH), so `tests` imports as a package without a path hack.
from tests.daemon.harness import NPUD_COMMAND, ROOT, DaemonProcess, isolated_env, spawn_npud

__all__ = ["NPUD_COMMAND", "ROOT", "BenchDaemon", "DaemonDied", "running_daemon"]


class DaemonDied(RuntimeError):
    """The benchmark's daemon exited or never became ready."""


@dataclass(slots=True, eq=False)
class BenchDaemon:
    """A running daemon (an identity object): the launched process and its policy."""

    process: DaemonProcess
    policy: str

    @property
    def socket(self) -> Path:
        """The daemon's gRPC Unix socket."""
        return self.process.socket

    @property
    def log_path(self) -> Path:
        """Where the daemon's output goes."""
        return self.process.log_path

    def check(self) -> None:
        """Raise :class:`DaemonDied` if the daemon is no longer running."""
        code = self.process.proc.poll()
        if code is not None:
            raise DaemonDied(f"npud ({self.policy}) exited with {code}:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the daemon's log."""
        try:
            text = self.process.log()
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


@contextlib.contextmanager
def running_daemon(
    policy: str = "npud",
    *,
    env: dict[str, str] | None = None,
    ready_timeout_s: float = 90.0,
    command: Sequence[str] = NPUD_COMMAND,
) -> Iterator[BenchDaemon]:
    """Start npud on the simulated NPU (process mode) with ``policy``; stop it on exit.

    ``env`` adds to (or overrides) the daemon's environment; ``command`` replaces
    ``python -m npud.daemon``. The caller owns the daemon until the ``with`` block ends; then
    it gets SIGTERM (and SIGKILL if it has not drained within 30 s) and its temporary directory
    is removed.

    Raises:
        DaemonDied: the daemon exited or did not become ready in ``ready_timeout_s``, or it
            had exited by the end of the block.
    """
    tmp = Path(tempfile.mkdtemp(prefix=f"npud-bench-{policy}-"))
    full_env = isolated_env(
        {
            "NPUD_POLICY": policy,
            "NPUD_SOCKET_MODE": "0600",
            "NPUD_SESSION_GRACE_S": "0.5",
            "NPUD_CLOSE_GRACE_S": "1.0",
            **(env or {}),
        }
    )
    try:
        process = spawn_npud(tmp, full_env, command=command, new_session=True)
        daemon = BenchDaemon(process, policy)
        try:
            try:
                process.wait_ready(ready_timeout_s)
            except AssertionError as exc:  # the harness's way of saying it never came up
                raise DaemonDied(str(exc)) from None
            yield daemon
            daemon.check()
        finally:
            # stop() SIGKILLs a daemon that does not drain in 30 s, then says so by raising;
            # the run has its figures by then, and the benchmark's own error (if any) matters
            # more than a slow drain.
            with contextlib.suppress(AssertionError):
                process.stop(signal.SIGTERM, timeout=30)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
