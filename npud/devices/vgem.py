"""The vgem adapter: real GEM buffers on a real kernel, executed by the simulated NPU.

vgem is the kernel's virtual GEM driver: shmem-backed buffers, dma-buf export and software
fences on a real DRM device, no hardware. This adapter exists so that the whole daemon can run
its buffer and completion paths on a real kernel in tests (see ``scripts/kernel-tests.sh``):

- **buffers** are dumb buffers on vgem's primary node (``MODE_CREATE_DUMB`` is not
  render-allowed), mapped once with ``MODE_MAP_DUMB`` + ``mmap``; ``map_buffer`` hands out
  views of that mapping and ``export_buffer`` a PRIME dma-buf fd of the same pages;
- **execution** is the simulated NPU's: the job's command stream (npud ISA) is decoded against
  its bindings and costed by :mod:`npud.devices.sim`, and :func:`npud.devices.sim.run_job`
  executes it with numpy directly on the mmapped GEM memory;
- **completion fences** are vgem fences: when a job starts, every buffer it writes gets an
  exclusive (write) fence and every buffer it reads a shared one, so to the kernel and to any
  other dma-buf user the buffers are busy exactly while the job runs; when the modelled
  duration has passed on the device's clock the adapter computes the result, signals the
  fences, and completes the job.

vgem has no device address space, no SRAM and no syncobjs (``DRM_CAP_SYNCOBJ`` is 0):
``device_address`` is a synthetic per-device counter, the SRAM tier is reported empty and
``has_syncobj`` False. The board profile (default rk3588) gives engines, DRAM budget and costs.

Threading: as every adapter, it is driven from the core thread; completions arrive from
clock timers on that thread.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import mmap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from npud.abi import drm, vgem
from npud.abi.drmfile import DrmFile, GemHandle
from npud.abi.vgem import VgemFence
from npud.clock import Clock, MonotonicClock, TimerHandle
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
    EngineInfo,
    Submission,
    SubmitToken,
    TierInfo,
)
from npud.devices.errno_map import error_for
from npud.devices.sim import BoardProfile, estimate, get_profile, run_job
from npud.devices.sim.executor import decode_job
from npud.errors import (
    DeviceError,
    DeviceLost,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfDeviceMemory,
)
from npud.isa import CommandStreamError
from npud.vocab import DeviceHealth, MemoryTier

_ROW_BYTES = 4096  # dumb buffers are allocated as rows of 1024 32-bit pixels: one page each
_ADDRESS_BASE = 0x1_0000_0000


def find_vgem_card(dri: Path = Path("/dev/dri")) -> str:
    """The path of vgem's primary node (``/dev/dri/cardN`` whose VERSION says vgem).

    Raises:
        DeviceLost: no vgem card node exists (vgem not loaded, or no permission to open it).
    """
    for node in sorted(dri.glob("card*")):
        try:
            with DrmFile.open(str(node)) as candidate:
                if candidate.version().name == "vgem":
                    return str(node)
        except OSError:
            continue
    raise DeviceLost(f"no vgem card node under {dri} (is the vgem module loaded?)")


@dataclass(slots=True, eq=False)
class _GemBuffer:
    """One GEM buffer of this device (an identity object)."""

    handle: GemHandle
    size: int
    address: int
    memory: mmap.mmap


@dataclass(slots=True, eq=False)
class _Job:
    """One submission (an identity object)."""

    token: SubmitToken
    submission: Submission
    on_done: CompletionCallback
    command: _GemBuffer
    buffers: tuple[_GemBuffer, ...]
    state: str = "queued"  # queued -> running -> done
    started_at: float = 0.0
    modelled_s: float = 0.0
    timer: TimerHandle | None = None
    fences: list[VgemFence] = field(default_factory=list)
    error: str | None = None  # a decode error found at start: fails at the launch cost


class VgemDevice:
    """A :class:`~npud.devices.base.Device` on vgem (see the module docstring)."""

    def __init__(
        self,
        *,
        name: str = "vgem0",
        profile: BoardProfile | str = "rk3588",
        clock: Clock | None = None,
        node: str | None = None,
        dram_capacity: int | None = None,
    ) -> None:
        """A closed device; :meth:`open` finds and opens vgem's card node (or ``node``).

        ``clock`` defaults to the running loop's :class:`~npud.clock.MonotonicClock`; tests
        pass a :class:`~npud.clock.VirtualClock`.
        """
        self._name = name
        self._profile = get_profile(profile)
        self._clock: Clock = clock if clock is not None else MonotonicClock()
        self._node = node
        self._dram_capacity = (
            self._profile.dram_capacity if dram_capacity is None else dram_capacity
        )
        self._file: DrmFile | None = None
        self._caps: Capabilities | None = None
        self._health = DeviceHealth.OK
        self._closed = False
        self._buffers: dict[BoHandle, _GemBuffer] = {}
        self._used = 0
        self._addresses = itertools.count(_ADDRESS_BASE, _ROW_BYTES)
        self._tokens = itertools.count(1)
        self._jobs: dict[SubmitToken, _Job] = {}
        engines = self._profile.engines
        self._queues: list[collections.deque[_Job]] = [collections.deque() for _ in range(engines)]
        self._running: list[_Job | None] = [None] * engines
        self._busy = [0.0] * engines
        self._listeners: list[Callable[[str], None]] = []
        self._submitted = self._completed = self._failed = self._aborted = self._resets = 0

    # ---- identity ------------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The device's name within the daemon."""
        return self._name

    @property
    def capabilities(self) -> Capabilities:
        """What the device offers (valid after :meth:`open`).

        Raises:
            FailedPrecondition: asked before :meth:`open`.
        """
        if self._caps is None:
            raise FailedPrecondition(f"{self._name}: capabilities asked before open()")
        return self._caps

    def open(self) -> None:
        """Open vgem's card node and read VERSION and GET_CAP.

        Raises:
            DeviceLost: no vgem node.
            DeviceError: the node is not vgem, or a query failed.
        """
        path = self._node if self._node is not None else find_vgem_card()
        try:
            self._file = DrmFile.open(path)
            version = self._file.version()
            prime = self._file.get_cap(drm.Cap.PRIME)
            syncobj = self._file.get_cap(drm.Cap.SYNCOBJ)
        except OSError as exc:
            raise error_for(exc, what=f"{self._name}: open {path}") from exc
        if version.name != "vgem":
            raise DeviceError(f"{path} is driven by {version.name!r}, not vgem")
        p = self._profile
        self._caps = Capabilities(
            driver=version.name,
            driver_version=(version.major, version.minor, version.patchlevel),
            description=f"{version.description}: GEM buffers, {p.name} simulated execution",
            board=p.name,
            engines=tuple(EngineInfo(i, n) for i, n in enumerate(p.engine_names)),
            tiers=(
                TierInfo(MemoryTier.DRAM, self._dram_capacity, p.dram_bandwidth),
                TierInfo(MemoryTier.SRAM, 0, None),  # vgem has no on-chip memory
            ),
            native_priorities=1,
            has_syncobj=syncobj != 0,
            has_hw_contexts=False,
            max_hw_contexts=0,
            has_preemption=False,
            can_abort=True,
            can_export=bool(prime & drm.PrimeCap.EXPORT),
            simulated=True,
            launch_overhead_s=p.launch_overhead_s,
        )

    def close(self) -> None:
        """Abort every job in flight (completions deferred), free every buffer, close the node."""
        if self._closed:
            return
        self._closed = True
        for job in list(self._jobs.values()):
            self._end(job, CompletionStatus.ABORTED, "device closed", deferred=True)
        for handle in list(self._buffers):
            self._free(handle)
        if self._file is not None:
            self._file.close()

    def health(self) -> DeviceHealth:
        """The device's state."""
        return self._health

    def add_loss_listener(self, callback: Callable[[str], None]) -> None:
        """Register ``callback(reason)`` for device loss (vgem is only lost by closing)."""
        self._listeners.append(callback)

    # ---- buffers ---------------------------------------------------------------------------

    def _usable(self) -> DrmFile:
        if self._closed or self._file is None:
            raise DeviceLost(f"{self._name} is closed")
        return self._file

    def _buffer(self, handle: BoHandle) -> _GemBuffer:
        try:
            return self._buffers[handle]
        except KeyError:
            raise NotFound(f"{self._name} has no buffer {handle}") from None

    def create_buffer(self, size: int, tier: MemoryTier, *, flags: int = 0) -> DeviceBuffer:
        """A dumb GEM buffer of ``size`` bytes rounded up to pages, mapped once.

        Raises:
            InvalidArgument: size 0, flags, or a tier vgem lacks (SRAM/HOST).
            OutOfDeviceMemory: the DRAM budget is spent, or the kernel said ENOMEM.
            DeviceLost: the device is closed.
        """
        drm_file = self._usable()
        if size <= 0 or flags:
            raise InvalidArgument(f"{self._name}: buffer size {size} flags {flags:#x}")
        if tier is not MemoryTier.DRAM:
            raise InvalidArgument(f"{self._name}: vgem has no {tier.value} tier (only dram)")
        rows = -(-size // _ROW_BYTES)
        rounded = rows * _ROW_BYTES
        if rounded > self._dram_capacity:
            raise InvalidArgument(
                f"{self._name}: {rounded} bytes exceed the dram tier ({self._dram_capacity})"
            )
        if self._used + rounded > self._dram_capacity:
            raise OutOfDeviceMemory(
                f"{self._name}: dram has {self._dram_capacity - self._used} bytes free, "
                f"{rounded} asked"
            )
        try:
            dumb = drm_file.create_dumb(_ROW_BYTES // 4, rows, 32)
        except OSError as exc:
            raise error_for(exc, what=f"{self._name}: create {rounded} bytes") from exc
        try:
            memory = drm_file.mmap(drm_file.map_dumb(dumb.handle), dumb.size)
        except OSError as exc:
            drm_file.gem_close(dumb.handle)
            raise error_for(exc, what=f"{self._name}: map buffer {dumb.handle}") from exc
        buf = _GemBuffer(dumb.handle, dumb.size, next(self._addresses), memory)
        for _ in range(1, -(-dumb.size // _ROW_BYTES)):
            next(self._addresses)  # keep synthetic addresses disjoint
        handle = BoHandle(dumb.handle)
        self._buffers[handle] = buf
        self._used += dumb.size
        return DeviceBuffer(handle, dumb.size, MemoryTier.DRAM, buf.address)

    def free_buffer(self, handle: BoHandle) -> None:
        """Unmap and close a buffer's GEM handle.

        Raises:
            NotFound: unknown handle.
            FailedPrecondition: a view from :meth:`map_buffer` is still held.
        """
        self._buffer(handle)
        self._free(handle)

    def _free(self, handle: BoHandle) -> None:
        buf = self._buffers[handle]
        try:
            buf.memory.close()
        except BufferError as exc:
            raise FailedPrecondition(
                f"{self._name}: buffer {handle} is still mapped by a caller"
            ) from exc
        del self._buffers[handle]
        self._used -= buf.size
        if self._file is not None and not self._file.closed:
            try:
                self._file.gem_close(buf.handle)
            except OSError as exc:
                raise error_for(exc, what=f"{self._name}: free buffer {handle}") from exc

    def map_buffer(self, handle: BoHandle) -> memoryview:
        """A writable view of the buffer's mapping (valid until unmap/free).

        Raises:
            NotFound: unknown handle.
        """
        return memoryview(self._buffer(handle).memory)

    def unmap_buffer(self, handle: BoHandle) -> None:
        """Nothing to undo: the mapping lives as long as the buffer.

        Raises:
            NotFound: unknown handle.
        """
        self._buffer(handle)

    def modelled_s(self, command: bytes, bindings: Sequence[BindingShape]) -> float | None:
        """No cost model here: the device's stream format is the driver's (``None``)."""
        return None

    def export_buffer(self, handle: BoHandle) -> int:
        """A PRIME dma-buf fd of the buffer, owned by the caller.

        Raises:
            NotFound: unknown handle.
        """
        buf = self._buffer(handle)
        try:
            return self._usable().prime_handle_to_fd(buf.handle)
        except OSError as exc:
            raise error_for(exc, what=f"{self._name}: export buffer {handle}") from exc

    # ---- submission ------------------------------------------------------------------------

    def submit(self, submission: Submission, on_done: CompletionCallback) -> SubmitToken:
        """Queue a job on its engine (FIFO per engine); ``on_done`` runs once, on a timer.

        Raises:
            InvalidArgument: engine or priority out of range, unknown handle in the job.
            DeviceLost: the device is closed.
        """
        self._usable()
        engines = len(self._queues)
        if not 0 <= submission.engine < engines:
            raise InvalidArgument(
                f"{self._name}: engine {submission.engine} not in 0..{engines - 1}"
            )
        if submission.priority != 0:
            raise InvalidArgument(
                f"{self._name}: priority {submission.priority} (vgem has 1 level)"
            )
        try:
            command = self._buffers[submission.command]
            buffers = tuple(self._buffers[b.handle] for b in submission.bindings)
        except KeyError as exc:
            raise InvalidArgument(f"{self._name}: job names unknown buffer {exc.args[0]}") from None
        if submission.command_offset + submission.command_size > command.size:
            raise InvalidArgument(f"{self._name}: command stream beyond its buffer")
        token = SubmitToken(next(self._tokens))
        job = _Job(token, submission, on_done, command, buffers)
        self._jobs[token] = job
        self._queues[submission.engine].append(job)
        self._submitted += 1
        self._kick()
        return token

    def _kick(self) -> None:
        """Start the head job of every idle engine whose input fences have completed."""
        for engine, queue in enumerate(self._queues):
            if self._running[engine] is not None or not queue:
                continue
            head = queue[0]
            if any(t in self._jobs for t in head.submission.wait_for):
                continue
            queue.popleft()
            self._start(head)

    def _start(self, job: _Job) -> None:
        job.state = "running"
        job.started_at = self._clock.now()
        self._running[job.submission.engine] = job
        s = job.submission
        stream = bytes(job.command.memory[s.command_offset : s.command_offset + s.command_size])
        writable = [bool(b.use & BufferUse.WRITE) for b in s.bindings]
        try:
            instructions = decode_job(stream, [b.size for b in job.buffers], writable)
            job.modelled_s = estimate(
                instructions, [MemoryTier.DRAM] * len(job.buffers), self._profile
            )
        except CommandStreamError as exc:
            job.error = str(exc)
            job.modelled_s = self._profile.launch_overhead_s
        # The buffers are busy for the kernel while the job runs: fence them.
        drm_file = self._usable()
        fenced: set[GemHandle] = set()
        for buf, write in sorted(zip(job.buffers, writable, strict=True), key=lambda bw: not bw[1]):
            if buf.handle in fenced:
                continue
            fenced.add(buf.handle)
            try:
                job.fences.append(vgem.fence_attach(drm_file, buf.handle, write=write))
            except OSError:
                # EBUSY: another running job holds the write fence (two engines writing one
                # buffer is core's race to avoid); a shared fence still marks it busy.
                with contextlib.suppress(OSError):
                    job.fences.append(vgem.fence_attach(drm_file, buf.handle, write=False))
        job.timer = self._clock.call_at(job.started_at + job.modelled_s, lambda: self._run(job))

    def _run(self, job: _Job) -> None:
        """The modelled time has passed: compute on the GEM memory, signal, complete."""
        job.timer = None
        if job.state != "running":
            return
        if job.error is not None:
            self._end(job, CompletionStatus.ERROR, job.error, deferred=False)
            return
        s = job.submission
        outcome = run_job(
            bytes(job.command.memory[s.command_offset : s.command_offset + s.command_size]),
            memories=[b.memory for b in job.buffers],
            sizes=[b.size for b in job.buffers],
            tiers=[MemoryTier.DRAM] * len(job.buffers),
            writable=[bool(b.use & BufferUse.WRITE) for b in s.bindings],
            profile=self._profile,
        )
        self._end(
            job,
            outcome.status,
            outcome.error,
            deferred=False,
            traffic=(outcome.bytes_read, outcome.bytes_written),
        )

    def _signal(self, job: _Job) -> None:
        if self._file is None or self._file.closed:
            return
        for fence in job.fences:
            # ENOENT: vgem's own 10 s watchdog signalled it already.
            with contextlib.suppress(OSError):
                vgem.fence_signal(self._file, fence)
        job.fences.clear()

    def _end(
        self,
        job: _Job,
        status: CompletionStatus,
        error: str | None,
        *,
        deferred: bool,
        traffic: tuple[int, int] = (0, 0),
    ) -> None:
        """Finish ``job``: release its engine and fences, count it, deliver the completion."""
        if job.state == "done":
            return
        now = self._clock.now()
        engine = job.submission.engine
        if job.timer is not None:
            job.timer.cancel()
            job.timer = None
        if job.state == "running":
            self._running[engine] = None
            self._busy[engine] += now - job.started_at
            self._signal(job)
        else:
            self._queues[engine].remove(job)
        started = job.started_at if job.state == "running" else now
        job.state = "done"
        del self._jobs[job.token]
        if status is CompletionStatus.OK:
            self._completed += 1
        elif status is CompletionStatus.ABORTED:
            self._aborted += 1
        else:
            self._failed += 1
        completion = Completion(
            token=job.token,
            status=status,
            error=error,
            started_at=started,
            finished_at=now,
            modelled_s=job.modelled_s,
            measured_s=now - started,
            bytes_read=traffic[0],
            bytes_written=traffic[1],
        )
        if deferred:
            self._clock.call_at(now, lambda: job.on_done(completion))
        else:
            job.on_done(completion)
        if not self._closed:
            self._kick()

    def abort(self, token: SubmitToken) -> bool:
        """Abort a queued or running job (its fences are signalled); False if already done."""
        job = self._jobs.get(token)
        if job is None:
            return False
        self._end(job, CompletionStatus.ABORTED, "aborted", deferred=True)
        return True

    def reset_engine(self, engine: int, reason: str) -> None:
        """Abort every job queued or running on ``engine`` with ``reason``.

        Raises:
            InvalidArgument: no such engine.
        """
        if not 0 <= engine < len(self._queues):
            raise InvalidArgument(f"{self._name}: no engine {engine}")
        self._resets += 1
        for job in [j for j in self._jobs.values() if j.submission.engine == engine]:
            self._end(job, CompletionStatus.ABORTED, reason, deferred=True)

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
            used_bytes={MemoryTier.DRAM: self._used},
            buffers=len(self._buffers),
        )
