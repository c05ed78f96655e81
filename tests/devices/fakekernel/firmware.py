"""Stand-in firmware for the fake kernels: runs npud's command stream on the job's buffers.

Real NPUs execute vendor blobs (rocket register commands, ivpu firmware job lists, amdxdna ERT
packets); none of them executes npud's ISA. The device contract suite, though, checks results
of a tiny ADD job. So the fakes can host this firmware: one worker thread per engine that takes
the fake driver's accepted jobs in order, decodes the command with the simulated NPU's decoder,
executes it with its numpy executor on the job's buffers (in the order the kernel saw them),
sleeps through BURN time on the real clock, and then signals the job's fence, exactly where
the real firmware would raise its completion interrupt. A job whose stream is malformed fails
with the decoder's message. Jobs aborted by the fake driver (queue destroyed, file closed) stop
sleeping at once.
"""

from __future__ import annotations

import struct
import threading
from collections import deque

from npud.devices.sim.executor import decode_job, execute
from npud.isa import CommandStreamError, Op
from npud.isa.layout import HEADER, MAGIC
from tests.devices.fakekernel.base import FakeDevice, FakeJob


def isa_bytes(command: bytes) -> bytes:
    """The npud stream inside a command buffer copy (trailing zero fill cut at total_size)."""
    if len(command) >= HEADER.size and command[:4] == MAGIC:
        total = struct.unpack_from("<I", command, 12)[0]
        if HEADER.size <= total <= len(command):
            return command[:total]
    return command


class IsaFirmware:
    """Executes accepted jobs of ``device`` on per-engine worker threads."""

    def __init__(self, device: FakeDevice) -> None:
        self.device = device
        self._queues: dict[int, deque[FakeJob]] = {}
        self._threads: dict[int, threading.Thread] = {}
        self._stop = False
        self.executed = 0

    def accept(self, job: FakeJob) -> None:
        """Queue a job the driver accepted (called from the fake's ``queue_job``)."""
        with self.device.cond:
            self._queues.setdefault(job.engine, deque()).append(job)
            if job.engine not in self._threads:
                thread = threading.Thread(
                    target=self._run, args=(job.engine,), daemon=True, name="fake-fw"
                )
                self._threads[job.engine] = thread
                thread.start()
            self.device.cond.notify_all()

    def stop(self) -> None:
        """Stop the workers (test teardown)."""
        with self.device.cond:
            self._stop = True
            self.device.cond.notify_all()
        for thread in self._threads.values():
            thread.join(timeout=5.0)

    def _next(self, engine: int) -> FakeJob | None:
        with self.device.cond:
            self.device.cond.wait_for(lambda: self._stop or bool(self._queues[engine]))
            if self._stop:
                return None
            return self._queues[engine].popleft()

    def _run(self, engine: int) -> None:
        while (job := self._next(engine)) is not None:
            if job.fence.signaled:  # aborted while queued
                continue
            status, reason, burn = self._execute(job)
            if burn > 0:
                with self.device.cond:  # a signalled fence (abort) ends the burn early
                    self.device.cond.wait_for(lambda j=job: j.fence.signaled or self._stop, burn)
            # Counted before the fence signals: a waiter woken by the fence must see it.
            self.executed += 1
            if not job.fence.signaled and not self._stop:
                job.failure = reason
                self.device.finish_raw(job, status=status)

    def _execute(self, job: FakeJob) -> tuple[int, str | None, float]:
        command = isa_bytes(job.command or b"")
        views = [memoryview(b.data) for b in job.bindings]
        try:
            instructions = decode_job(command, [len(v) for v in views], [True] * len(views))
            execute(instructions, views)
        except CommandStreamError as exc:
            return self.device.error_status(), str(exc), 0.0
        burn = sum(i.params.seconds for i in instructions if i.op is Op.BURN)
        return 0, None, burn
