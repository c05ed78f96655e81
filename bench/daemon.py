"""A real npud daemon for a benchmark: started on a private socket, ready when it says so.

The daemon is started by npud's one launcher, :mod:`npud.testing.daemon` (the tests start
theirs there too): this interpreter runs ``python -m npud.daemon --device sim`` on a temporary
socket and state directory, and readiness is the daemon's own ``READY=1`` on a
``NOTIFY_SOCKET``, as systemd would see it. What is benchmark-specific stays here: the
scheduling policy, short grace periods, its own session (a Ctrl-C stops the runner, which then
stops the daemon), a private directory removed afterwards. If the daemon dies while the
benchmark runs, :meth:`BenchDaemon.check` raises :class:`DaemonDied` with the tail of its log,
so the runner reports the benchmark as failed to run.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from npud.testing.daemon import (
    NPUD_COMMAND,
    DaemonDied,
    DaemonProcess,
    isolated_env,
    spawn_npud,
)

__all__ = ["NPUD_COMMAND", "ROOT", "BenchDaemon", "DaemonDied", "running_daemon"]

ROOT = Path(__file__).resolve().parents[1]
"""The repository root (the benchmarks read and run files of the checkout)."""


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
        """Raise :class:`DaemonDied` (naming the policy) if the daemon is no longer running."""
        try:
            self.process.check()
        except DaemonDied as exc:
            raise DaemonDied(f"npud ({self.policy}): {exc}") from None

    def log_tail(self, lines: int = 20) -> str:
        """The last lines of the daemon's log."""
        return self.process.log_tail(lines)


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
            process.wait_ready(ready_timeout_s)
            yield daemon
            daemon.check()
        finally:
            # stop() SIGKILLs a daemon that does not drain in 30 s, then says so by raising;
            # the run has its figures by then, and the benchmark's own error (if any) matters
            # more than a slow drain.
            with contextlib.suppress(DaemonDied):
                process.stop(signal.SIGTERM, timeout=30)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
