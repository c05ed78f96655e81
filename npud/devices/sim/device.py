"""The simulated NPU as a :class:`~npud.devices.base.Device`.

:class:`SimDevice` is a real device model: it allocates real memory in tiers with
capacities, decodes and validates the npud command stream (:mod:`npud.isa`), executes every
op with numpy on buffer memory, and completes each job after the duration its cost model
(:mod:`npud.devices.sim.cost`) assigns, on the device's clock.

Two modes
---------
``mode="virtual"`` runs in-process on a :class:`~npud.clock.Clock`, typically a
:class:`~npud.clock.VirtualClock`: a job that starts at ``t`` completes from a clock timer
at ``t + modelled``, and its ops execute in that timer callback, so tests are exactly
reproducible. ``mode="process"`` (the daemon's default) runs the same decoder, cost model and
executor in a child process over shared memory, like firmware on its own cores, one executor
thread per engine so that engines compute in parallel, and hands completions back over a pipe
watched by the asyncio loop (:mod:`npud.devices.sim.host`, :mod:`npud.devices.sim.firmware`).

Engines and ordering
--------------------
Each engine runs one job at a time, in submission order (FIFO per engine); different
engines run concurrently. A job whose ``wait_for`` tokens have not all completed holds its
engine's queue, as a fence at the head of a hardware ring would. A dependency that failed
still counts as complete: core decides what a failed dependency means.

Completion delivery
-------------------
A job that runs to its end completes from the clock timer (or the loop callback) that ends
it. Completions caused by a call (``abort``, ``reset_engine``, ``close``, device loss) are
deferred to a clock timer at the current time, so a callback never runs inside the call
that caused it.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import os
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Literal

from npud.clock import Clock, MonotonicClock, VirtualClock
from npud.devices.base import (
    BindingShape,
    BoHandle,
    BufferUse,
    Capabilities,
    Completion,
    CompletionCallback,
    CompletionStatus,
    DeviceBuffer,
    DeviceStatistics,
    Submission,
    SubmitToken,
)
from npud.devices.sim.cost import estimate
from npud.devices.sim.executor import decode_job
from npud.devices.sim.job import JobOutcome, SimJob, run_job
from npud.devices.sim.memory import BufferMemory, BufferTable, SimBuffer, TierPool, round_up
from npud.devices.sim.profiles import BoardProfile, capabilities_of, get_profile, slowed
from npud.devices.sim.wire import MAX_BINDINGS, WireError
from npud.errors import (
    DeviceError,
    DeviceLost,
    InvalidArgument,
    OutOfDeviceMemory,
    Unsupported,
)
from npud.isa import CommandStreamError
from npud.vocab import DeviceHealth, MemoryTier

if TYPE_CHECKING:
    from npud.devices.sim.host import FirmwareHost

MODEL_MEMO_STREAM_BYTES = 4096
"""Command streams up to this size have their modelled duration remembered (per device)."""
MODEL_MEMO_ENTRIES = 256
"""At most this many remembered (stream, bindings) answers; the table starts over when full."""

Mode = Literal["virtual", "process"]

_BASE_ADDRESS = {MemoryTier.SRAM: 0xFF00_0000, MemoryTier.DRAM: 0x1_0000_0000}


class SimDevice:
    """A simulated NPU implementing :class:`npud.devices.base.Device` (see the module doc).

    Besides the contract it offers fault injection for tests: :meth:`inject_hang`,
    :meth:`inject_job_error`, :meth:`inject_oom` and :meth:`lose`.
    """

    def __init__(
        self,
        profile: BoardProfile | str = "rk3588",
        *,
        clock: Clock | None = None,
        mode: Mode = "virtual",
        name: str = "sim0",
        sram_capacity: int | None = None,
        dram_capacity: int | None = None,
        firmware_lanes: int | None = None,
        firmware_blas_threads: int | None = None,
        slowdown: float = 1.0,
    ) -> None:
        """Create a closed device; call :meth:`open` before use.

        Args:
            profile: a :class:`BoardProfile` or a built-in profile name.
            clock: the device's clock. Virtual mode defaults to a fresh
                :class:`VirtualClock` (see :attr:`clock`); process mode to the running
                loop's :class:`MonotonicClock`.
            mode: ``"virtual"`` (in-process, on ``clock``) or ``"process"`` (a child
                process over shared memory, on real time).
            name: the device's name within the daemon.
            sram_capacity: override the profile's SRAM capacity (bytes), e.g. for tests.
            dram_capacity: override the profile's DRAM pool capacity (bytes).
            firmware_lanes: process mode: executor threads in the device process. Default
                one per engine (engines compute in parallel); 1 runs every engine's jobs one
                at a time, the serial baseline of ``bench/sim_engines.py``.
            firmware_blas_threads: process mode: BLAS threads per executor (default
                ``max(1, cpus // lanes)``).
            slowdown: model a board this many times slower than ``profile`` (see
                :func:`~npud.devices.sim.profiles.slowed`): every job's modelled time is
                multiplied by it, so in process mode a job holds its engine that much longer
                in real time. 1 (the default) is the profile as it is.

        Raises:
            InvalidArgument: unknown profile name or mode, or a slowdown that is not a finite
                number above 0.
        """
        if mode not in ("virtual", "process"):
            raise InvalidArgument(f"unknown sim mode {mode!r} (expected 'virtual' or 'process')")
        self._profile = slowed(get_profile(profile), slowdown)
        # the cost model's answers for recent small streams (see modelled_s)
        self._modelled: dict[tuple[bytes, tuple[BindingShape, ...]], float] = {}
        self._slowdown = slowdown
        self._mode: Mode = mode
        self._name = name
        self._default_clock = clock is None
        if clock is None:
            clock = VirtualClock() if mode == "virtual" else MonotonicClock()
        self._clock = clock
        p = self._profile
        pools = {
            MemoryTier.SRAM: TierPool(
                MemoryTier.SRAM,
                p.sram_capacity if sram_capacity is None else sram_capacity,
                p.sram_bandwidth,
            ),
            MemoryTier.DRAM: TierPool(
                MemoryTier.DRAM,
                p.dram_capacity if dram_capacity is None else dram_capacity,
                p.dram_bandwidth,
            ),
        }
        self._capabilities = capabilities_of(p, pools.values(), can_export=mode == "process")
        self._health = DeviceHealth.OK
        self._opened = False
        self._closed = False
        self._lost_reason: str | None = None
        self._memory = BufferTable(name, pools, _BASE_ADDRESS)
        self._jobs: dict[SubmitToken, SimJob] = {}
        self._next_token = 1
        self._queues: list[collections.deque[SimJob]] = [
            collections.deque() for _ in range(p.engines)
        ]
        self._running: list[SimJob | None] = [None] * p.engines
        self._hang_next = [False] * p.engines
        self._error_next: list[str | None] = [None] * p.engines
        self._error_any: str | None = None
        self._loss_listeners: list[Callable[[str], None]] = []
        self._submitted = self._completed = self._failed = self._aborted = self._resets = 0
        self._busy = [0.0] * p.engines
        self._host: FirmwareHost | None = None
        self._firmware_lanes = firmware_lanes
        self._firmware_blas_threads = firmware_blas_threads

    # ---- identity ---------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The device's name within the daemon."""
        return self._name

    @property
    def capabilities(self) -> Capabilities:
        """What the device offers (fixed by its profile)."""
        return self._capabilities

    @property
    def profile(self) -> BoardProfile:
        """The board profile the device models."""
        return self._profile

    @property
    def slowdown(self) -> float:
        """How many times slower than its named profile the modelled board runs (1: as is)."""
        return self._slowdown

    @property
    def clock(self) -> Clock:
        """The clock the device completes jobs on."""
        return self._clock

    @property
    def mode(self) -> Mode:
        """``"virtual"`` or ``"process"``."""
        return self._mode

    @property
    def firmware_pid(self) -> int | None:
        """The device process's pid in process mode (``None`` otherwise or before open)."""
        return None if self._host is None else self._host.pid

    # ---- lifecycle --------------------------------------------------------------------

    def open(self) -> None:
        """Open the device; in process mode start the device process and wait for it.

        Raises:
            DeviceLost: the device process could not start.
            DeviceError: the device was closed already.
        """
        if self._closed:
            raise DeviceError(f"{self._name} was closed; create a new SimDevice")
        if self._opened:
            return
        if self._mode == "process":
            from npud.devices.sim.host import FirmwareHost

            if self._default_clock:
                # Bind real time to the loop open() runs on, so that completions caused by
                # calls made from outside a callback (abort, close) still land on it.
                try:
                    self._clock = MonotonicClock(asyncio.get_running_loop())
                except RuntimeError:
                    raise DeviceError("process mode: open() must run on the asyncio loop") from None

            host = FirmwareHost(
                self._profile.name,
                self._on_host_reply,
                self._on_host_exit,
                engines=self._profile.engines,
                lanes=self._firmware_lanes,
                blas_threads=self._firmware_blas_threads,
                slowdown=self._slowdown,
            )
            host.start()
            self._host = host
        self._opened = True

    def close(self) -> None:
        """Close: in-flight jobs complete ABORTED, buffers are freed, the process stops."""
        if self._closed:
            return
        self._closed = True
        for job in list(self._jobs.values()):
            self._finish(
                job,
                JobOutcome(CompletionStatus.ABORTED, f"{self._name} closed", 0.0),
                deferred=True,
            )
        for buf in list(self._memory.buffers.values()):
            self._release(buf)
        if self._host is not None:
            self._host.stop()

    def health(self) -> DeviceHealth:
        """OK, or LOST after :meth:`lose` / death of the device process."""
        return self._health

    def _check_usable(self) -> None:
        if self._lost_reason is not None:
            raise DeviceLost(f"{self._name} is lost: {self._lost_reason}")
        if self._closed:
            raise DeviceLost(f"{self._name} is closed")
        if not self._opened:
            raise DeviceError(f"{self._name} is not open; call open() first")

    # ---- buffers ----------------------------------------------------------------------

    def create_buffer(self, size: int, tier: MemoryTier, *, flags: int = 0) -> DeviceBuffer:
        """Allocate ``size`` bytes (rounded up to 4 KiB) in ``tier``; the caller owns it.

        Raises:
            InvalidArgument: size <= 0, flags != 0, a tier the device lacks, or a size
                larger than the whole tier.
            OutOfDeviceMemory: the tier has no room now (or an injected failure).
            DeviceLost: the device is gone.
        """
        self._check_usable()
        if flags != 0:
            raise InvalidArgument(f"unknown buffer flags {flags:#x} (the sim defines none)")
        if size <= 0:
            raise InvalidArgument(f"buffer size must be > 0, got {size}")
        pool = self._memory.pool(tier)
        rounded = round_up(size)
        if rounded > pool.capacity:
            raise InvalidArgument(
                f"{rounded} bytes can never fit in {tier.value} ({pool.capacity} bytes in all)"
            )
        if pool.fail_next > 0:
            pool.fail_next -= 1
            raise OutOfDeviceMemory(f"{tier.value}: injected allocation failure ({rounded} bytes)")
        self._memory.check_room(pool, rounded)
        handle = self._memory.next_handle()
        memory = BufferMemory(
            rounded, shared=self._mode == "process", name=f"{self._name}-bo{handle}"
        )
        return self._memory.add(
            handle, tier, memory, None if self._host is None else self._host.map
        )

    def _buffer(self, handle: BoHandle) -> SimBuffer:
        return self._memory.get(handle)

    def _release(self, buf: SimBuffer) -> None:
        self._memory.remove(buf)
        if self._host is not None and self._lost_reason is None:
            self._host.unmap(buf.handle)
        buf.memory.close()

    def free_buffer(self, handle: BoHandle) -> None:
        """Free a buffer (allowed after device loss, so that owners can clean up).

        Raises:
            NotFound: unknown handle.
        """
        self._release(self._buffer(handle))

    def map_buffer(self, handle: BoHandle) -> memoryview:
        """A writable view of the whole buffer (SRAM is CPU-visible on the sim).

        Raises:
            NotFound: unknown handle.
            DeviceLost: the device is gone.
        """
        buf = self._buffer(handle)
        self._check_usable()
        buf.maps += 1
        return buf.memory.view()

    def unmap_buffer(self, handle: BoHandle) -> None:
        """Drop a CPU view (bookkeeping only: the caller released its memoryview).

        Raises:
            NotFound: unknown handle.
        """
        buf = self._buffer(handle)
        buf.maps = max(0, buf.maps - 1)

    def export_buffer(self, handle: BoHandle) -> int:
        """A duplicate of the buffer's memfd (process mode), which the caller owns and closes.

        The sim has no dma-buf exporter; its memory is a memfd shared with the device process,
        so handing that out is the same zero-copy sharing a dma-buf gives.

        Raises:
            NotFound: unknown handle.
            Unsupported: virtual mode (anonymous memory has no descriptor).
            DeviceLost: the device is gone.
        """
        buf = self._buffer(handle)
        self._check_usable()
        if buf.memory.fd < 0:
            raise Unsupported(f"{self._name} (simulated, in-process) has no buffer descriptors")
        return os.dup(buf.memory.fd)

    def import_memory(self, fd: int, size: int, tier: MemoryTier) -> DeviceBuffer:
        """A new read-only buffer whose memory is the caller's write-sealed memfd ``fd``.

        Nothing is copied: the device maps the same pages (so does the device process). The
        device keeps a duplicate of ``fd``; the caller still owns and closes its own. The
        caller has checked the seals (a memfd that can still be written or shrunk must never
        become device memory); the file must hold the page-rounded size.

        Raises:
            InvalidArgument: size <= 0, the file is smaller than the rounded size, or a tier
                the device lacks.
            OutOfDeviceMemory: the tier has no room now.
            DeviceLost: the device is gone.
        """
        self._check_usable()
        pool = self._memory.pool(tier)
        rounded = round_up(size)
        if size <= 0 or os.fstat(fd).st_size < rounded:
            raise InvalidArgument(
                f"the descriptor holds {os.fstat(fd).st_size} bytes; a {size}-byte buffer needs "
                f"{rounded} (sizes are whole {round_up(1)}-byte pages)"
            )
        self._memory.check_room(pool, rounded)
        handle = self._memory.next_handle()
        try:
            memory = BufferMemory.adopt(fd, rounded)
        except OSError as exc:
            raise InvalidArgument(f"cannot map the descriptor: {exc.strerror or exc}") from None
        return self._memory.add(
            handle, tier, memory, None if self._host is None else self._host.map
        )

    # ---- submission -------------------------------------------------------------------

    def modelled_s(self, command: bytes, bindings: Sequence[BindingShape]) -> float | None:
        """The cost model's duration of a job before it is queued (see the Device contract).

        Operands in buffers not placed yet are costed at DRAM bandwidth (where a buffer
        lands first unless it asks for SRAM), so the figure errs long.

        Raises:
            InvalidArgument: the decoder refuses the stream for these bindings (its message
                names the op, the operand and what is wrong).
        """
        # Why a memo: a decode loop submits the same small stream with the same bindings on
        # every step, and decoding and costing it is pure in (stream, shapes, profile). Small
        # streams only (the key holds the bytes), a bounded table that starts over when full.
        small = len(command) <= MODEL_MEMO_STREAM_BYTES
        if small:
            key = (bytes(command), tuple(bindings))
            known = self._modelled.get(key)
            if known is not None:
                return known
        try:
            instructions = decode_job(
                command,
                [b.size for b in bindings],
                [bool(b.use & BufferUse.WRITE) for b in bindings],
            )
        except CommandStreamError as exc:
            raise InvalidArgument(f"malformed command stream for {self._name}: {exc}") from None
        tiers = [MemoryTier.DRAM if b.tier is None else b.tier for b in bindings]
        modelled = estimate(instructions, tiers, self._profile)
        if small:
            if len(self._modelled) >= MODEL_MEMO_ENTRIES:
                self._modelled.clear()
            self._modelled[key] = modelled
        return modelled

    def submit(self, submission: Submission, on_done: CompletionCallback) -> SubmitToken:
        """Queue a job on its engine; ``on_done`` runs once on the clock's thread.

        Raises:
            InvalidArgument: bad engine or priority, an unknown handle in the command or the
                bindings, a command range outside its buffer, an unknown ``wait_for`` token.
            DeviceLost: the device is gone.
        """
        self._check_usable()
        s = submission
        if not 0 <= s.engine < self._profile.engines:
            raise InvalidArgument(f"engine {s.engine} out of range [0, {self._profile.engines})")
        if s.priority != 0:
            raise InvalidArgument(f"priority {s.priority}: the sim has one native level (0)")
        command = self._bound(s.command, "command")
        if s.command_offset < 0 or s.command_size <= 0:
            raise InvalidArgument(
                f"command range offset={s.command_offset} size={s.command_size} is empty "
                "or negative"
            )
        if s.command_offset + s.command_size > command.size:
            raise InvalidArgument(
                f"command range [{s.command_offset}, {s.command_offset + s.command_size}) "
                f"runs past the command buffer ({command.size} bytes)"
            )
        if len(s.bindings) > MAX_BINDINGS:
            raise InvalidArgument(
                f"{len(s.bindings)} bindings: {self._name} takes at most {MAX_BINDINGS} per job"
            )
        buffers = tuple(self._bound(b.handle, f"binding {i}") for i, b in enumerate(s.bindings))
        for i, (b, buf) in enumerate(zip(s.bindings, buffers, strict=True)):
            if b.size is not None and not 0 < b.size <= buf.size:
                raise InvalidArgument(
                    f"binding {i}: size {b.size} outside its allocation (1..{buf.size} bytes)"
                )
        for token in s.wait_for:
            if not 1 <= token < self._next_token:
                raise InvalidArgument(f"wait_for token {token} was never issued by {self._name}")
        token = SubmitToken(self._next_token)
        self._next_token += 1
        job = SimJob(token, s, on_done, command, buffers)
        self._jobs[token] = job
        self._queues[s.engine].append(job)
        self._submitted += 1
        self._kick()
        return token

    def _bound(self, handle: BoHandle, what: str) -> SimBuffer:
        buf = self._memory.buffers.get(handle)
        if buf is None:
            raise InvalidArgument(f"{what}: unknown buffer handle {handle}")
        return buf

    def _done(self, token: SubmitToken) -> bool:
        return token < self._next_token and token not in self._jobs

    def _kick(self) -> None:
        """Start the head job of every idle engine whose dependencies are met."""
        if self._lost_reason is not None:
            return
        for engine, queue in enumerate(self._queues):
            if self._running[engine] is not None or not queue:
                continue
            head = queue[0]
            if not all(self._done(t) for t in head.submission.wait_for):
                continue
            queue.popleft()
            self._start(head)

    def _start(self, job: SimJob) -> None:
        engine = job.engine
        job.state = "running"
        job.started_at = self._clock.now()
        self._running[engine] = job
        if self._hang_next[engine]:
            self._hang_next[engine] = False
            job.hung = True  # never completes until abort / reset_engine / loss
            if self._host is not None:
                self._send_run(job)  # it hangs in the device process, holding its engine
            return
        injected = self._error_next[engine] or self._error_any
        if injected is not None:
            self._error_next[engine] = None
            self._error_any = None
            outcome = JobOutcome(CompletionStatus.ERROR, injected, self._profile.launch_overhead_s)
            self._complete_at(job, job.started_at + outcome.modelled_s, outcome)
            return
        if self._host is not None:
            self._send_run(job)
            return
        # Virtual mode: decode and cost now, execute when the modelled time has passed.
        try:
            instructions = decode_job(job.command_bytes(), job.sizes, job.writable)
        except CommandStreamError as exc:
            outcome = JobOutcome(CompletionStatus.ERROR, str(exc), self._profile.launch_overhead_s)
            self._complete_at(job, job.started_at + outcome.modelled_s, outcome)
            return
        modelled = estimate(instructions, [b.tier for b in job.buffers], self._profile)

        def _run() -> None:
            job.timer = None
            if job.state != "running":
                return
            outcome = run_job(
                job.command_bytes(),
                memories=[b.memory.data for b in job.buffers],
                sizes=job.sizes,
                tiers=[b.tier for b in job.buffers],
                writable=job.writable,
                profile=self._profile,
            )
            self._finish(job, outcome, deferred=False)

        job.timer = self._clock.call_at(job.started_at + modelled, _run)

    def _send_run(self, job: SimJob) -> None:
        """Hand a started job to the device process; one it cannot be sent fails at once (its
        engine is free again) instead of running forever unsent."""
        assert self._host is not None
        try:
            self._host.run(job)
        except WireError as exc:
            outcome = JobOutcome(CompletionStatus.ERROR, f"the job cannot be sent: {exc}", 0.0)
            self._finish(job, outcome, deferred=True)

    def _complete_at(self, job: SimJob, when: float, outcome: JobOutcome) -> None:
        def _fire() -> None:
            job.timer = None
            if job.state == "running":
                self._finish(job, outcome, deferred=False)

        job.timer = self._clock.call_at(when, _fire)

    def _finish(self, job: SimJob, outcome: JobOutcome, *, deferred: bool) -> None:
        """End ``job`` with ``outcome``: update state now, deliver the completion."""
        if job.state == "done":
            return
        now = self._clock.now()
        was_running = job.state == "running"
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None
        if was_running:
            self._running[job.engine] = None
            self._busy[job.engine] += now - job.started_at
        else:
            self._queues[job.engine].remove(job)
            job.started_at = now
        job.state = "done"
        del self._jobs[job.token]
        if outcome.status is CompletionStatus.OK:
            self._completed += 1
        elif outcome.status is CompletionStatus.ABORTED:
            self._aborted += 1
        else:
            self._failed += 1
        completion = Completion(
            token=job.token,
            status=outcome.status,
            error=outcome.error,
            started_at=job.started_at,
            finished_at=now,
            modelled_s=outcome.modelled_s,
            measured_s=now - job.started_at,
            bytes_read=outcome.bytes_read,
            bytes_written=outcome.bytes_written,
        )
        self._kick()  # the engine moves on before its completion is handled, as a ring does
        if deferred:
            self._clock.call_at(now, lambda: job.on_done(completion))
        else:
            job.on_done(completion)

    # ---- process mode: replies from the device process --------------------------------

    def _on_host_reply(self, token: SubmitToken, outcome: JobOutcome) -> None:
        job = self._jobs.get(token)
        if job is None or job.state != "running":
            return  # aborted or reset while the device process was computing: discard
        # Real time: the job ends at max(start + modelled, when its compute finished). Already
        # due (the usual case for short jobs: the round trip outlasts the modelled time): end
        # it in this loop callback rather than through a timer one loop iteration later.
        end = job.started_at + outcome.modelled_s
        if end <= self._clock.now():
            self._finish(job, outcome, deferred=False)
        else:
            self._complete_at(job, end, outcome)

    def _on_host_exit(self, reason: str) -> None:
        if not self._closed:
            self.lose(reason)

    # ---- recovery ---------------------------------------------------------------------

    def abort(self, token: SubmitToken) -> bool:
        """Abort a queued or running job; it completes ABORTED. False if already done."""
        job = self._jobs.get(token)
        if job is None:
            return False
        self._cancel_in_process(job)
        self._finish(
            job, JobOutcome(CompletionStatus.ABORTED, "aborted by request", 0.0), deferred=True
        )
        return True

    def reset_engine(self, engine: int, reason: str) -> None:
        """Reset an engine: its running job completes ABORTED with ``reason``.

        Jobs queued behind it stay queued and run afterwards (as drm_sched resubmits the
        innocent jobs after a reset). A pending injected hang on the engine is cleared.

        Raises:
            InvalidArgument: engine out of range.
        """
        if not 0 <= engine < self._profile.engines:
            raise InvalidArgument(f"engine {engine} out of range [0, {self._profile.engines})")
        self._resets += 1
        self._hang_next[engine] = False
        job = self._running[engine]
        if job is not None:
            self._cancel_in_process(job)
            self._finish(job, JobOutcome(CompletionStatus.ABORTED, reason, 0.0), deferred=True)
        else:
            self._kick()

    def _cancel_in_process(self, job: SimJob) -> None:
        """Process mode: free the engine's executor of a running job that is being ended."""
        if self._host is not None and job.state == "running" and job.timer is None:
            self._host.cancel(job.token)

    def add_loss_listener(self, callback: Callable[[str], None]) -> None:
        """Register ``callback(reason)``, called (deferred) on device loss."""
        self._loss_listeners.append(callback)

    # ---- fault injection (not part of the Device contract) ----------------------------

    def inject_hang(self, engine: int) -> None:
        """The next job to start on ``engine`` never completes until abort or reset."""
        self._hang_next[engine] = True

    def inject_job_error(
        self, engine: int | None = None, message: str = "injected job error"
    ) -> None:
        """The next job to start (on ``engine``, or on any engine) completes ERROR."""
        if engine is None:
            self._error_any = message
        else:
            self._error_next[engine] = message

    def inject_oom(self, tier: MemoryTier, count: int = 1) -> None:
        """The next ``count`` allocations in ``tier`` fail with OutOfDeviceMemory."""
        self._memory.pools[tier].fail_next += count

    def lose(self, reason: str = "device lost (injected)") -> None:
        """Lose the device: in-flight jobs complete DEVICE_LOST, listeners hear ``reason``,
        later calls raise DeviceLost. Idempotent."""
        if self._lost_reason is not None:
            return
        self._lost_reason = reason
        self._health = DeviceHealth.LOST
        for job in list(self._jobs.values()):
            self._finish(job, JobOutcome(CompletionStatus.DEVICE_LOST, reason, 0.0), deferred=True)
        now = self._clock.now()
        for listener in self._loss_listeners:
            self._clock.call_at(now, functools.partial(listener, reason))
        if self._host is not None:
            self._host.kill()

    # ---- statistics -------------------------------------------------------------------

    def statistics(self) -> DeviceStatistics:
        """A frozen snapshot of the device's counters."""
        return DeviceStatistics(
            health=self._health,
            submitted=self._submitted,
            completed=self._completed,
            failed=self._failed,
            aborted=self._aborted,
            in_flight=len(self._jobs),
            resets=self._resets,
            busy_s_per_engine=tuple(self._busy),
            used_bytes={tier: pool.used for tier, pool in self._memory.pools.items()},
            buffers=len(self._memory.buffers),
        )
