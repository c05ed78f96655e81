"""The daemon's side of the simulated NPU's device process (process mode).

Like firmware on its own cores, the device process (:mod:`npud.devices.sim.firmware`) does
the device's work off the daemon's interpreter: it decodes command streams and runs numpy on
the buffers, which live in memfds mapped by both processes. The daemon keeps the engines'
queues, fences and timing; the device process only executes what it is sent, one executor
thread per engine (see :mod:`npud.devices.sim.firmware`), so engines compute in parallel.

Wire
----
Two ``SOCK_SEQPACKET`` socket pairs (one message per packet, so no framing): commands go
down one (a blocking socket on the daemon's side), replies come back up the other, whose fd
sits on the asyncio loop (``loop.add_reader``). Control messages are small JSON objects; a
``map`` message carries its buffer's memfd as ``SCM_RIGHTS`` ancillary data. The two messages
of every job are packed binary (:mod:`npud.devices.sim.wire`): they are the hot path.

- down: ``{"op": "map", "handle", "size", "tier", "readonly"}`` + fd (``readonly`` for a
  client's write-sealed memfd, which cannot be mapped writable), ``{"op": "unmap", "handle"}``,
  a binary *run* message per job (with its engine), ``{"op": "cancel", "token"}`` when a
  running job is aborted or its engine reset, ``{"op": "exit"}``.
- up: ``{"op": "hello", "pid", "lanes"}`` once, then a binary *done* message per job, in the
  order the jobs finish (per engine, in submission order). Every *done* waiting in the socket
  is handled in one wake-up of the loop.

BLAS threads
------------
Each engine's executor thread calls BLAS, so the device process caps BLAS's own threads at
``max(1, cpus // lanes)`` (``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS``,
``MKL_NUM_THREADS`` in its environment, read when numpy loads): engines busy at once do not
oversubscribe the host's cores.

End of file on the reply socket means the device process died: every waiter sees
DEVICE_LOST through the device's loss path, never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from npud.devices.base import BoHandle, SubmitToken
from npud.devices.sim.wire import (
    DONE,
    MAX_MESSAGE,
    RUN_HANG,
    WireError,
    decode_done,
    encode_run,
)
from npud.errors import DeviceError, DeviceLost

if TYPE_CHECKING:
    from npud.devices.sim.job import JobOutcome, SimJob
    from npud.devices.sim.memory import SimBuffer

HELLO_TIMEOUT_S = 60.0  # python + numpy start-up on a loaded 2-core machine
BLAS_THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")


def _message(obj: dict[str, Any]) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class FirmwareHost:
    """Starts, feeds and watches one device process. Lives on the event loop's thread."""

    def __init__(
        self,
        profile: str,
        on_reply: Callable[[SubmitToken, JobOutcome], None],
        on_exit: Callable[[str], None],
        *,
        engines: int,
        lanes: int | None = None,
        blas_threads: int | None = None,
        slowdown: float = 1.0,
    ) -> None:
        """Describe the device process to start (:meth:`start` starts it).

        Args:
            profile: the board profile's name.
            on_reply: called on the loop with each job's outcome.
            on_exit: called on the loop with the reason when the process dies.
            engines: the board's engine count.
            lanes: executor threads in the device process; default one per engine, 1 runs
                every engine's jobs one at a time (the serial baseline).
            blas_threads: BLAS threads per executor; default ``max(1, cpus // lanes)``.
            slowdown: the device process models the profile this many times slower
                (:func:`~npud.devices.sim.profiles.slowed`), so the modelled times it
                reports match the daemon side's.
        """
        self._profile = profile
        self._slowdown = slowdown
        self._on_reply = on_reply
        self._on_exit = on_exit
        self._lanes = engines if lanes is None else max(1, lanes)
        self._blas_threads = (
            max(1, (os.cpu_count() or 1) // self._lanes) if blas_threads is None else blas_threads
        )
        self._proc: subprocess.Popen[bytes] | None = None
        self._cmd: socket.socket | None = None
        self._reply: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dead = False

    @property
    def pid(self) -> int | None:
        """The device process's pid, once started."""
        return None if self._proc is None else self._proc.pid

    @property
    def lanes(self) -> int:
        """Executor threads in the device process."""
        return self._lanes

    def start(self) -> None:
        """Start the device process and wait (briefly) for its hello.

        Raises:
            DeviceError: no running asyncio loop on this thread.
            DeviceLost: the process could not start or did not say hello.
        """
        try:
            self._loop = asyncio.get_running_loop()
        except RuntimeError:
            raise DeviceError("process mode needs a running asyncio loop on this thread") from None
        cmd_parent, cmd_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        reply_parent, reply_child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._cmd, self._reply = cmd_parent, reply_parent
        root = str(Path(__file__).resolve().parents[3])
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
        env.update(dict.fromkeys(BLAS_THREAD_VARS, str(self._blas_threads)))
        argv = [
            sys.executable,
            "-m",
            "npud.devices.sim.firmware",
            "--cmd-fd",
            str(cmd_child.fileno()),
            "--reply-fd",
            str(reply_child.fileno()),
            "--profile",
            self._profile,
            "--lanes",
            str(self._lanes),
            "--slowdown",
            repr(self._slowdown),
        ]
        try:
            self._proc = subprocess.Popen(
                argv, pass_fds=(cmd_child.fileno(), reply_child.fileno()), env=env
            )
        except OSError as exc:
            self._close_sockets()
            raise DeviceLost(f"cannot start the sim device process: {exc}") from exc
        finally:
            cmd_child.close()
            reply_child.close()
        reply_parent.settimeout(HELLO_TIMEOUT_S)
        try:
            hello = reply_parent.recv(MAX_MESSAGE)
        except OSError as exc:
            hello = b""
            detail = str(exc)
        else:
            detail = "it exited"
        if not hello or json.loads(hello).get("op") != "hello":
            self.kill()
            raise DeviceLost(f"the sim device process did not start: {detail}")
        reply_parent.setblocking(False)
        self._loop.add_reader(reply_parent.fileno(), self._on_readable)

    # ---- down -------------------------------------------------------------------------

    def _send(self, obj: dict[str, Any] | bytes, fds: tuple[int, ...] = ()) -> None:
        if self._dead or self._cmd is None:
            raise DeviceLost("the sim device process is gone")
        data = obj if isinstance(obj, bytes) else _message(obj)
        try:
            if fds:
                socket.send_fds(self._cmd, [data], list(fds))
            else:
                self._cmd.send(data)
        except OSError as exc:
            self._died(f"the sim device process stopped reading ({exc})")
            raise DeviceLost("the sim device process is gone") from exc

    def map(self, buf: SimBuffer) -> None:
        """Share a buffer's memfd with the device process.

        Raises:
            DeviceLost: the process is gone.
        """
        message = {
            "op": "map",
            "handle": buf.handle,
            "size": buf.size,
            "tier": buf.tier.value,
            "readonly": buf.memory.readonly,
        }
        self._send(message, (buf.memory.fd,))

    def unmap(self, handle: BoHandle) -> None:
        """Tell the device process to drop a buffer (ignored once it is gone)."""
        with contextlib.suppress(DeviceLost):
            self._send({"op": "unmap", "handle": handle})

    def run(self, job: SimJob) -> None:
        """Send a job to execute; its reply arrives through ``on_reply``.

        A send failure is reported as device loss (``on_exit``), which completes the job.

        Raises:
            WireError: the job does not fit a run message (nothing was sent).
        """
        s = job.submission
        message = encode_run(
            job.token,
            command=s.command,
            offset=s.command_offset,
            size=s.command_size,
            bindings=[b.handle for b in s.bindings],
            writable=job.writable,
            sizes=job.sizes,
            engine=s.engine,
            flags=RUN_HANG if job.hung else 0,
        )
        with contextlib.suppress(DeviceLost):
            self._send(message)

    def cancel(self, token: SubmitToken) -> None:
        """Stop a job the device process may still be running (abort, engine reset).

        Its engine's executor skips it, stops it before its next op, or wakes it from an
        injected hang; its reply, if any, is for a job the device has already ended. Ignored
        once the process is gone.
        """
        with contextlib.suppress(DeviceLost):
            self._send({"op": "cancel", "token": token})

    # ---- up ---------------------------------------------------------------------------

    def _on_readable(self) -> None:
        from npud.devices.sim.job import JobOutcome

        # Every reply waiting in the socket is handled in this one wake-up. A reply's handler
        # may end in device loss or close (which tears the socket down): stop reading then.
        while self._reply is not None and not self._dead:
            try:
                data = self._reply.recv(MAX_MESSAGE)
            except BlockingIOError:
                return
            except OSError as exc:
                self._died(f"the sim device process connection failed ({exc})")
                return
            if not data:
                self._died(self._exit_reason())
                return
            if data[:1] != DONE:
                continue  # a control message (only hello is sent up, at start)
            try:
                msg = decode_done(data)
            except WireError as exc:
                self._died(f"the sim device process sent a malformed reply ({exc})")
                return
            outcome = JobOutcome(
                msg.status, msg.error, msg.modelled_s, msg.bytes_read, msg.bytes_written
            )
            self._on_reply(SubmitToken(msg.token), outcome)

    def _exit_reason(self) -> str:
        if self._proc is None:
            return "the sim device process exited"
        try:
            code = self._proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return f"the sim device process {self._proc.pid} closed its pipe"
        if code < 0:
            name = signal.Signals(-code).name
            return f"the sim device process {self._proc.pid} was killed by {name}"
        return f"the sim device process {self._proc.pid} exited with status {code}"

    def _died(self, reason: str) -> None:
        if self._dead:
            return
        self._dead = True
        self._teardown(kill=True)
        self._on_exit(reason)

    # ---- teardown ---------------------------------------------------------------------

    def _close_sockets(self) -> None:
        if self._reply is not None and self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._reply.fileno())
        for sock in (self._cmd, self._reply):
            if sock is not None:
                sock.close()
        self._cmd = self._reply = None

    def _teardown(self, *, kill: bool) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None and not kill and self._cmd is not None:
            with contextlib.suppress(OSError):
                socket.send_fds(self._cmd, [_message({"op": "exit"})], [])
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
        self._close_sockets()
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """Kill the device process now (device loss or a failed start). Idempotent."""
        self._dead = True
        self._teardown(kill=True)

    def stop(self) -> None:
        """Ask the device process to exit, then reap it (kill after 5 s). Idempotent."""
        self._dead = True
        self._teardown(kill=False)
