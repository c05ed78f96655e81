"""What the reliability tests share: a daemon other users can reach, actors running as other
users, the admin rpcs, and the daemon's resource figures (fds, RSS) read from /proc.

Figures the tests measure are recorded with :func:`record` and, when the environment names a
file in ``NPUD_RELIABILITY_REPORT``, written there as JSON at the end of the session (the table
in docs/reliability.md is filled from such a run).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc

import npud.client
from npud.client.channel import CHANNEL_OPTIONS
from npud.testing.daemon import DaemonProcess, start_daemon
from npud.v1 import admin_pb2, admin_pb2_grpc
from tests import ROOT

NOBODY = 65534
"""The uid/gid of user A in the identity tests (nobody/nogroup)."""
OTHER = 65533
"""The uid/gid of user B (a uid with no passwd entry: npud must not need one)."""

FIGURES: dict[str, Any] = {}


def record(name: str, value: Any) -> None:
    """Keep one measured figure for the report (see the module docstring)."""
    FIGURES[name] = value


def write_report() -> None:
    """Write :data:`FIGURES` to ``$NPUD_RELIABILITY_REPORT`` if that is set."""
    path = os.environ.get("NPUD_RELIABILITY_REPORT")
    if path and FIGURES:
        old: dict[str, Any] = {}
        target = Path(path)
        if target.exists():
            old = json.loads(target.read_text())
        old.update(FIGURES)
        target.write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")


@contextmanager
def world_reachable_dir(prefix: str) -> Iterator[Path]:
    """A fresh directory under /tmp that every user may traverse (for the sockets)."""
    path = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def launch(tmp: Path, **settings: str) -> DaemonProcess:
    """Start npud (--device sim, fault injection on) on ``tmp``; ``settings`` are NPUD_* env."""
    env = {"NPUD_FAULT_INJECTION": "1"}
    env.update({f"NPUD_{k.upper()}": v for k, v in settings.items()})
    return start_daemon(tmp, env=env)


@contextmanager
def own_daemon(prefix: str, **settings: str) -> Iterator[DaemonProcess]:
    """A daemon (:func:`launch`) in a fresh world-reachable directory named ``prefix...``; it
    must stop cleanly (exit status 0) when the block ends."""
    with world_reachable_dir(prefix) as tmp:
        daemon = launch(tmp, **settings)
        try:
            yield daemon
        finally:
            assert daemon.stop() == 0, daemon.log()[-4000:]


def restart(old: DaemonProcess, tmp: Path, **settings: str) -> DaemonProcess:
    """Start a new daemon on the same socket and state directory as ``old`` (which is dead)."""
    assert old.proc.poll() is not None, "the old daemon is still running"
    old.notify.close()
    (tmp / "notify.sock").unlink(missing_ok=True)
    log = tmp / "npud.log"
    if log.exists():
        log.rename(tmp / f"npud.{old.proc.pid}.log")
    return launch(tmp, **settings)


def eventually(condition: Callable[[], bool], timeout: float = 15.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` seconds pass; whether it held.

    For states the daemon reaches asynchronously (a session grace ending); never a timing
    assertion: the bound is only there so a broken daemon fails the test instead of hanging.
    """
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def fd_count(pid: int) -> int:
    """Open file descriptors of process ``pid``."""
    return len(os.listdir(f"/proc/{pid}/fd"))


def rss_bytes(pid: int) -> int:
    """Resident set size of process ``pid``."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        # the command name may contain spaces and parentheses: the ppid follows the last ')'
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            out.append(int(entry))
    return out


class Admin:
    """Raw AdminService calls with a root client's token."""

    def __init__(self, client: npud.client.Client) -> None:
        self._md = client.metadata
        # the client's own channel options: a channel with other options does not share the
        # client's connection, and the daemon would count one more fd after the baseline
        self._channel = grpc.insecure_channel(f"unix:{client.socket_path}", options=CHANNEL_OPTIONS)
        self.stub = admin_pb2_grpc.AdminServiceStub(self._channel)

    def inject(self, kind: int, **fields: Any) -> admin_pb2.InjectFaultResponse:
        """Arm one fault (fields of InjectFaultRequest)."""
        req = admin_pb2.InjectFaultRequest(kind=kind, **fields)  # type: ignore[arg-type]
        return self.stub.InjectFault(req, metadata=self._md, timeout=10)  # type: ignore[no-any-return]

    def rescan(self) -> admin_pb2.RescanDevicesResponse:
        """Re-open every lost device."""
        return self.stub.RescanDevices(  # type: ignore[no-any-return]
            admin_pb2.RescanDevicesRequest(), metadata=self._md, timeout=30
        )

    def close(self) -> None:
        """Close the channel."""
        self._channel.close()


@contextmanager
def raw_session(
    socket: Path, uid: int, *options: tuple[str, Any]
) -> Iterator[tuple[grpc.Channel, tuple[tuple[str, str], ...]]]:
    """A raw gRPC channel to the daemon at ``socket`` (with ``options``) and the metadata
    carrying ``uid``'s token, fetched over the identity socket by an :class:`Actor` running as
    that uid. The channel and the actor are closed when the block ends."""
    actor = Actor(socket, uid)
    try:
        token = actor.send(op="token")
        assert token["ok"], token
        channel = grpc.insecure_channel(f"unix:{socket}", options=list(options))
        try:
            yield channel, (("npud-token", token["value"]),)
        finally:
            channel.close()
    finally:
        actor.close()


class Actor:
    """A client process running as ``uid:gid`` (see tests/reliability/actor.py)."""

    def __init__(
        self,
        socket: Path,
        uid: int,
        gid: int | None = None,
        groups: tuple[int, ...] = (),
        model: Path | None = None,
    ) -> None:
        self.uid = uid
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.reliability.actor",
                "--uid",
                str(uid),
                "--gid",
                str(uid if gid is None else gid),
                *(["--model", str(model)] if model is not None else []),
                "--groups",
                *[str(g) for g in groups],
                "--",
                str(socket),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=str(ROOT),
            env=env,
            text=True,
        )
        self.hello = self.send(op="connect")
        """The reply to the handshake: ``ok`` and the owner, or why the daemon refused us."""

    def send(self, timeout: float = 30.0, **cmd: Any) -> dict[str, Any]:
        """One command, its JSON reply (fails with the actor's stderr if it dies)."""
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
            err = self.proc.stderr.read() if self.proc.stderr else ""
            self._close_pipes()
            raise AssertionError(f"actor uid {self.uid} gave no reply to {cmd}:\n{err}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def call(self, method: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
        """``Client.<method>(*args, **kwargs)`` in the actor."""
        return self.send(op="call", method=method, args=list(args), kwargs=kwargs)

    def ok(self, method: str, *args: Any, **kwargs: Any) -> Any:
        """Like :meth:`call` but the call must succeed; returns its value."""
        reply = self.call(method, *args, **kwargs)
        assert reply["ok"], f"uid {self.uid}: {method}{args} failed: {reply}"
        return reply["value"]

    def submit(self, ctx: str, queue: str, seconds: float, **kw: Any) -> dict[str, Any]:
        """Submit one BURN job."""
        return self.send(op="submit", ctx=ctx, queue=queue, seconds=seconds, **kw)

    def kill(self) -> None:
        """SIGKILL the actor (idempotent)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self._close_pipes()

    def _close_pipes(self) -> None:
        for pipe in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if pipe is not None:
                pipe.close()

    def close(self) -> None:
        """Ask the actor to exit cleanly (kill it if it does not)."""
        if self.proc.poll() is None:
            try:
                self.send(op="exit", timeout=10)
                self.proc.wait(10)
            except (AssertionError, subprocess.TimeoutExpired, BrokenPipeError):
                self.kill()
                return
        self._close_pipes()
