"""The simulated NPU's device process: the "firmware" that executes jobs off the daemon.

Started by :class:`npud.devices.sim.host.FirmwareHost` as ``python -m
npud.devices.sim.firmware --cmd-fd N --reply-fd M --profile NAME --lanes L --slowdown F``.
It maps each buffer's memfd as it is announced, runs each job it is sent (decode, cost,
execute: the same :func:`~npud.devices.sim.job.run_job` the in-process mode uses) and
replies with the outcome. It exits when told to or when the daemon's end of the command
socket closes, so it never outlives the daemon.

Engines compute in parallel
---------------------------
An NPU's engines are independent cores: a decode step on one does not wait for a prefill
chunk on another to finish computing. So the device process runs one executor thread per
engine (a *lane*), each with its own FIFO; the main thread only reads commands, maps buffers
and routes each job to its engine's lane. numpy releases the GIL inside its kernels (BLAS
above all), so lanes really overlap on a multi-core host. With ``--lanes 1`` every engine
shares one executor, the device process before lanes existed, kept as a benchmark baseline
(``bench/sim_engines.py``).

Why this keeps the device's guarantees:

- FIFO per engine: the daemon starts an engine's next job only after the previous one
  completed, and one lane serves one engine in arrival order.
- ``wait_for`` fences across engines are kept by the daemon (:mod:`npud.devices.sim.host`),
  which sends a job only once its fences have completed.
- A job resolves its buffers when its run message is read, in stream order, and holds them
  until it ends, so a buffer unmapped after a run message was sent stays mapped for that job
  (its mapping closes when the last job using it lets go).
- Abort and engine reset send ``cancel``: a queued job is skipped, a running one stops before
  its next op, a hung one (fault injection) wakes. Other lanes never notice.
- Replies from the lanes are serialised onto the one reply socket under a lock, one packet
  each, so they never interleave.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from npud.devices.base import CompletionStatus
from npud.devices.sim.job import JobOutcome, run_job
from npud.devices.sim.profiles import BoardProfile, get_profile, slowed
from npud.devices.sim.wire import (
    MAX_MESSAGE,
    RUN,
    RUN_HANG,
    DoneMessage,
    RunMessage,
    decode_run,
    encode_done,
)
from npud.vocab import MemoryTier

LANE_JOIN_S = 2.0  # at exit, how long to let lanes finish an op before leaving without them
# A command stream shorter than this holds no compute op: the header is 16 bytes, BURN's record
# 16, and every other op has at least two 32-byte operands (a record of 72 bytes or more).
COMPUTE_FREE_BELOW = 16 + 72


@dataclass(slots=True, eq=False)
class LaneJob:
    """A job inside the device process, from its run message to its reply (identity)."""

    msg: RunMessage
    buffers: list[tuple[mmap.mmap, MemoryTier]] | None  # None: a handle was not mapped
    missing: int | None = None
    cancel: threading.Event = field(default_factory=threading.Event)


_NOT_CANCELLED = threading.Event()
"""The cancel flag of a job run inline, on the main thread, which is the one that would set it:
never set (a fresh Event per job, a Condition and a lock, cost a tenth of a null job here)."""


@dataclass(frozen=True, slots=True)
class FirmwareStatistics:
    """A snapshot of the device process's counters."""

    lanes: int
    buffers: int
    in_flight: int
    replied: int
    cancelled: int
    inline: int


class Firmware:
    """The device process's state: its mapped buffers, its lanes and its board profile.

    The main thread calls :meth:`map`, :meth:`unmap`, :meth:`submit` and :meth:`cancel`;
    each lane thread runs its engines' jobs and sends their replies through ``send``.
    """

    def __init__(
        self,
        profile: BoardProfile,
        send: Callable[[bytes], object],
        *,
        lanes: int | None = None,
    ) -> None:
        """Create the firmware and start its lanes.

        Args:
            profile: the board the device models.
            send: ``send(packet: bytes)``, called from lane threads (serialised here).
            lanes: executor threads; default one per engine. Engine ``e`` runs on lane
                ``e % lanes``.
        """
        self.profile = profile
        self.buffers: dict[int, tuple[mmap.mmap, MemoryTier]] = {}
        self._send = send
        self._send_lock = threading.Lock()
        self._inflight: dict[int, LaneJob] = {}
        self._inflight_lock = threading.Lock()
        self._replied = self._cancelled = 0
        n = profile.engines if lanes is None else max(1, lanes)
        self._inline = 0
        self._pending = [0] * n  # per lane: jobs queued or running there
        self._queues: list[queue.SimpleQueue[LaneJob | None]] = [
            queue.SimpleQueue() for _ in range(n)
        ]
        self._threads = [
            threading.Thread(target=self._lane, args=(i,), name=f"lane{i}", daemon=True)
            for i in range(n)
        ]
        self._broken = threading.Event()  # the reply socket failed: the daemon is gone
        for thread in self._threads:
            thread.start()

    @property
    def lanes(self) -> int:
        """How many executor threads serve the engines."""
        return len(self._queues)

    # ---- main thread ------------------------------------------------------------------

    def map(self, msg: dict[str, Any], fds: Sequence[int]) -> None:
        """Map an announced buffer's memfd (and close our copy of the fd)."""
        fd = fds[0]
        try:
            access = mmap.ACCESS_READ if msg.get("readonly") else mmap.ACCESS_WRITE
            self.buffers[int(msg["handle"])] = (
                mmap.mmap(fd, int(msg["size"]), access=access),
                MemoryTier(msg["tier"]),
            )
        finally:
            os.close(fd)

    def unmap(self, msg: dict[str, Any]) -> None:
        """Drop a freed buffer; jobs already sent that use it keep it until they end."""
        self.buffers.pop(int(msg["handle"]), None)

    def submit(self, msg: RunMessage) -> None:
        """Resolve a job's buffers now (stream order) and queue it on its engine's lane.

        A job with no compute op (an empty or BURN-only stream) whose lane is idle runs here
        at once: it takes microseconds, and handing it to the lane thread would cost a thread
        wake-up (tens of microseconds, most of a null job's round trip).
        """
        missing = next((h for h in (msg.command, *msg.bindings) if h not in self.buffers), None)
        buffers = None if missing is not None else [self.buffers[h] for h in msg.bindings]
        if buffers is not None:
            buffers.insert(0, self.buffers[msg.command])
        lane = msg.engine % len(self._queues)
        with self._inflight_lock:
            inline = self._pending[lane] == 0 and msg.size < COMPUTE_FREE_BELOW and not msg.flags
            if not inline:
                job = LaneJob(msg, buffers, missing)
                self._inflight[msg.token] = job
                self._pending[lane] += 1
        if inline:
            # run here, on the thread that reads cancels: none can arrive for it meanwhile
            self._inline += 1
            self._reply(self.run(LaneJob(msg, buffers, missing, _NOT_CANCELLED)))
        else:
            self._queues[lane].put(job)

    def cancel(self, token: int) -> None:
        """Cancel a job still in the device process (no-op once it has replied)."""
        with self._inflight_lock:
            job = self._inflight.get(token)
        if job is not None:
            job.cancel.set()

    def stop(self) -> bool:
        """Stop the lanes: cancel what is in flight, wait briefly. True if all stopped."""
        with self._inflight_lock:
            jobs = list(self._inflight.values())
        for job in jobs:
            job.cancel.set()
        for q in self._queues:
            q.put(None)
        deadline = time.monotonic() + LANE_JOIN_S
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return not any(thread.is_alive() for thread in self._threads)

    def statistics(self) -> FirmwareStatistics:
        """A snapshot of the counters."""
        with self._inflight_lock:
            return FirmwareStatistics(
                self.lanes,
                len(self.buffers),
                len(self._inflight),
                self._replied,
                self._cancelled,
                self._inline,
            )

    # ---- lane threads -----------------------------------------------------------------

    def _lane(self, lane: int) -> None:
        jobs = self._queues[lane]
        while (job := jobs.get()) is not None:
            done = self.run(job)
            with self._inflight_lock:
                self._inflight.pop(job.msg.token, None)
                self._pending[lane] -= 1
            del job  # let go of the buffers before replying (an unmapped one closes now)
            self._reply(done)

    def _reply(self, done: DoneMessage) -> None:
        """Count and send one reply (from a lane, or the main thread for an inline job)."""
        with self._inflight_lock:
            self._replied += 1
            self._cancelled += done.status is CompletionStatus.ABORTED
        if self._broken.is_set():
            return
        try:
            with self._send_lock:
                self._send(encode_done(done))
        except OSError:
            self._broken.set()  # the daemon is gone; the main thread sees EOF too

    def run(self, job: LaneJob) -> DoneMessage:
        """Execute one job (on its lane's thread) and build its reply."""
        began = time.monotonic()
        msg = job.msg
        if job.buffers is None:
            outcome = JobOutcome(
                CompletionStatus.ERROR,
                f"buffer handle {job.missing} is not mapped on the device",
                0.0,
            )
        elif job.cancel.is_set():
            outcome = JobOutcome(CompletionStatus.ABORTED, "cancelled before it started", 0.0)
        elif msg.flags & RUN_HANG:
            job.cancel.wait()  # an injected hang: the engine is stuck until abort or reset
            outcome = JobOutcome(CompletionStatus.ABORTED, "hung job cancelled", 0.0)
        else:
            command_mem = job.buffers[0][0]
            bound = job.buffers[1:]
            outcome = run_job(
                bytes(command_mem[msg.offset : msg.offset + msg.size]),
                memories=[m for m, _ in bound],
                sizes=_limits(msg.sizes, [m for m, _ in bound]),
                tiers=[t for _, t in bound],
                writable=msg.writable,
                profile=self.profile,
                cancelled=job.cancel.is_set,
            )
        return DoneMessage(
            token=msg.token,
            status=outcome.status,
            error=outcome.error,
            modelled_s=outcome.modelled_s,
            compute_s=time.monotonic() - began,
            bytes_read=outcome.bytes_read,
            bytes_written=outcome.bytes_written,
        )


def serve(
    cmd: socket.socket, reply: socket.socket, profile: BoardProfile, lanes: int | None
) -> bool:
    """Serve commands until told to exit or the daemon goes away.

    Returns:
        True if every lane stopped; False if one is still inside an op (leave without it).
    """
    firmware = Firmware(profile, reply.send, lanes=lanes)
    reply.send(json.dumps({"op": "hello", "pid": os.getpid(), "lanes": firmware.lanes}).encode())
    try:
        while True:
            data, fds, _flags, _addr = socket.recv_fds(cmd, MAX_MESSAGE, 4)
            if not data:
                return firmware.stop()
            if data[:1] == RUN and not fds:
                firmware.submit(decode_run(data))
                continue
            msg = json.loads(data)
            op = msg.get("op")
            if op == "map":
                firmware.map(msg, fds)
            elif op == "unmap":
                firmware.unmap(msg)
            elif op == "cancel":
                firmware.cancel(int(msg["token"]))
            elif op == "exit":
                return firmware.stop()
            for fd in fds if op != "map" else fds[1:]:
                os.close(fd)
    except BaseException:
        firmware.stop()
        raise


def _limits(sizes: tuple[int, ...], mappings: list[Any]) -> list[int]:
    """The bytes a job may touch per binding: its stated size, never past the mapping (a bad
    size cannot overrun); the whole mapping where no size came."""
    if len(sizes) != len(mappings):
        return [len(m) for m in mappings]
    return [min(n, len(m)) for n, m in zip(sizes, mappings, strict=True)]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the device process."""
    parser = argparse.ArgumentParser(prog="npud-sim-firmware")
    parser.add_argument("--cmd-fd", type=int, required=True)
    parser.add_argument("--reply-fd", type=int, required=True)
    parser.add_argument("--profile", required=True)
    parser.add_argument("--lanes", type=int, default=None, help="executors (default: per engine)")
    parser.add_argument(
        "--slowdown", type=float, default=1.0, help="model the profile this many times slower"
    )
    args = parser.parse_args(argv)
    cmd = socket.socket(fileno=args.cmd_fd)
    reply = socket.socket(fileno=args.reply_fd)
    stopped = True
    try:
        stopped = serve(cmd, reply, slowed(get_profile(args.profile), args.slowdown), args.lanes)
    except (BrokenPipeError, ConnectionResetError):
        pass  # the daemon went away: so do we
    finally:
        cmd.close()
        reply.close()
    if not stopped:
        # A lane is still inside a numpy kernel: interpreter shutdown would wait on (or tear
        # down under) it. Nothing is left to flush, so leave at once.
        os._exit(0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
