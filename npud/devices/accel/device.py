"""The Device skeleton the accel adapters share: identity, the buffer table, in-flight jobs.

:class:`AccelDevice` implements :class:`~npud.devices.base.Device` for a DRM accel node:
identity from ``DRM_IOCTL_VERSION``, the buffer table (:class:`BoRecord`) with CPU maps and
dma-buf export, the jobs the kernel holds (:class:`InFlight`) with a bounded kernel depth per
engine, device loss and statistics. Completion without a thread per job:
:meth:`AccelDevice._watch_fd` puts a pollable fd (a sync_file exported from a syncobj, or a
dma-buf whose write fence is the job's) on the event loop with ``loop.add_reader``. Subclasses
fill in a handful of hooks. Everything here runs on the core thread (the event loop).
"""

from __future__ import annotations

import asyncio
import contextlib
import mmap
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

from npud.abi import drm
from npud.abi.header import IoctlSpec, Struct
from npud.devices.accel.kernel import KernelFile, opener_for, translate
from npud.devices.base import (
    BindingShape,
    BoHandle,
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
from npud.errors import DeviceError, DeviceLost, InvalidArgument, NotFound, NpudError, Unsupported
from npud.vocab import DeviceHealth, MemoryTier


@dataclass(slots=True, eq=False)
class BoRecord:
    """One buffer the adapter allocated: the contract's view plus the kernel's extra facts."""

    buffer: DeviceBuffer
    mmap_offset: int | None  # None: not CPU-mappable
    mapping: mmap.mmap | memoryview | None = None
    views: int = 0


@dataclass(slots=True, eq=False)
class InFlight:
    """One submission the kernel holds: who to tell, and what to release afterwards."""

    token: SubmitToken
    submission: Submission
    on_done: CompletionCallback
    submitted_at: float
    started_at: float
    aborted_reason: str | None = None
    cleanup: list[Callable[[], None]] = field(default_factory=list)
    fd: int = -1  # the fd watched on the loop, if any
    extra: dict[str, Any] = field(default_factory=dict)


class AccelDevice:
    """The Device skeleton shared by the accel adapters; subclasses implement the hooks.

    Hooks: :meth:`_probe` (capabilities, after VERSION), :meth:`_alloc` (one BO),
    :meth:`_release` (driver cleanup before GEM_CLOSE), :meth:`_submit` (queue one job and arrange
    its completion), :meth:`_reset` (engine reset), :meth:`_shutdown` (driver state at close).
    """

    driver = ""
    errno_overrides: ClassVar[dict[int, type[NpudError]]] = {}

    def __init__(
        self,
        opener: Callable[[], KernelFile] | str,
        *,
        name: str,
        loop: asyncio.AbstractEventLoop | None = None,
        kernel_depth: int = 1,
    ) -> None:
        if kernel_depth < 1:
            raise ValueError(f"kernel_depth must be at least 1, not {kernel_depth}")
        self._opener = opener_for(opener)
        self._depth = kernel_depth
        self._queued: dict[int, list[InFlight]] = {}
        self._closing = False
        self._in_kernel: dict[int, int] = {}
        self._name = name
        self._loop_arg = loop
        self._loop: asyncio.AbstractEventLoop | None = None
        self._file: KernelFile | None = None
        self._caps: Capabilities | None = None
        self._health = DeviceHealth.OK
        self._bos: dict[BoHandle, BoRecord] = {}
        self._inflight: dict[SubmitToken, InFlight] = {}
        self._next_token = 1
        self._loss_listeners: list[Callable[[str], None]] = []
        self._lost_reason: str | None = None
        self._submitted = 0
        self._completed = 0
        self._failed = 0
        self._aborted = 0
        self._resets = 0
        self._busy: list[float] = []
        self.version: tuple[str, tuple[int, int, int], str] = ("", (0, 0, 0), "")

    # -- the Device contract ------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The device's name in the daemon ("accel0", ...)."""
        return self._name

    @property
    def capabilities(self) -> Capabilities:
        """Capabilities found at :meth:`open`.

        Raises:
            DeviceError: the device is not open.
        """
        if self._caps is None:
            raise DeviceError(f"{self._name}: capabilities asked before open()")
        return self._caps

    def open(self) -> None:
        """Open the node, check the driver name with VERSION and query capabilities.

        Raises:
            DeviceLost: the node cannot be opened.
            DeviceError: the node belongs to another driver, or a query failed.
        """
        self._loop = self._loop_arg or asyncio.get_running_loop()
        self._file = self._opener()
        try:
            self.version = self._query_version()
            if self.version[0] != self.driver:
                raise DeviceError(
                    f"{self._name}: node is driven by {self.version[0]!r}, "
                    f"not {self.driver!r}; use the {self.version[0]} adapter"
                )
            self._caps = self._probe()
        except BaseException:
            self._file.close()
            self._file = None
            raise
        self._busy = [0.0] * len(self._caps.engines)
        self._health = DeviceHealth.OK
        self._closing = False
        self._lost_reason = None

    def close(self) -> None:
        """Abort what is in flight, free every buffer, release driver state, close the node."""
        if self._file is None:
            return
        self._closing = True
        for record in list(self._inflight.values()):
            self._finish(record, CompletionStatus.ABORTED, "device closed")
        self._queued.clear()
        self._in_kernel.clear()
        self._shutdown()
        for handle in list(self._bos):
            try:
                self.free_buffer(handle)
            except NpudError:
                self._bos.pop(handle, None)
        self._file.close()
        self._file = None

    def health(self) -> DeviceHealth:
        """OK, RESETTING or LOST, as this adapter last saw the kernel."""
        return self._health

    def create_buffer(self, size: int, tier: MemoryTier, *, flags: int = 0) -> DeviceBuffer:
        """Allocate a BO in DRAM (the only tier these UAPIs expose to userspace).

        Raises:
            InvalidArgument: size 0 or beyond the driver's limit, a tier the driver lacks.
            OutOfDeviceMemory: the kernel has no room (ENOMEM).
            DeviceLost: the device is gone.
        """
        self._check_alive()
        if size <= 0:
            raise InvalidArgument(f"{self._name}: buffer size must be positive, not {size}")
        if self.capabilities.tier(tier).capacity_bytes == 0:
            raise InvalidArgument(
                f"{self._name}: the {self.driver} UAPI offers no {tier.value} tier to userspace"
            )
        handle, address, mmap_offset, actual = self._alloc(size, tier, flags)
        buffer = DeviceBuffer(handle=handle, size=actual, tier=tier, device_address=address)
        self._bos[handle] = BoRecord(buffer, mmap_offset)
        return buffer

    def free_buffer(self, handle: BoHandle) -> None:
        """Drop the CPU map and close the GEM handle.

        Raises:
            NotFound: unknown handle.
        """
        record = self._record(handle)
        self._unmap(record)
        self._release(record)
        del self._bos[handle]
        self._gem_close(handle)

    def map_buffer(self, handle: BoHandle) -> memoryview:
        """A writable view of the whole BO through ``mmap`` of its fake offset.

        Raises:
            NotFound: unknown handle.
            Unsupported: the BO was created without CPU access.
        """
        record = self._record(handle)
        if record.mmap_offset is None:
            raise Unsupported(f"{self._name}: buffer {handle} is not CPU-mappable")
        if record.mapping is None:
            record.mapping = self.file.mmap(record.mmap_offset, record.buffer.size)
        record.views += 1
        return memoryview(record.mapping)

    def unmap_buffer(self, handle: BoHandle) -> None:
        """Drop the CPU map (the caller released its views)."""
        self._unmap(self._record(handle))

    def modelled_s(self, command: bytes, bindings: Sequence[BindingShape]) -> float | None:
        """No cost model here: the device's stream format is the driver's (``None``)."""
        return None

    def export_buffer(self, handle: BoHandle) -> int:
        """PRIME-export the BO; the caller owns and closes the dma-buf fd.

        Raises:
            NotFound: unknown handle.
        """
        self._record(handle)
        return self._prime_export(handle)

    def submit(self, submission: Submission, on_done: CompletionCallback) -> SubmitToken:
        """Validate and queue one job; ``on_done`` runs once on the loop.

        Raises:
            InvalidArgument: engine or priority out of range, unknown handle in the job.
            DeviceLost: the device is gone.
        """
        self._check_alive()
        caps = self.capabilities
        if not 0 <= submission.engine < len(caps.engines):
            raise InvalidArgument(
                f"{self._name}: engine {submission.engine} out of range 0..{len(caps.engines) - 1}"
            )
        if not 0 <= submission.priority < caps.native_priorities:
            raise InvalidArgument(
                f"{self._name}: priority {submission.priority} out of range "
                f"0..{caps.native_priorities - 1}"
            )
        for handle in (submission.command, *(b.handle for b in submission.bindings)):
            if handle not in self._bos:
                raise InvalidArgument(f"{self._name}: submission names unknown buffer {handle}")
        command = self._bos[submission.command].buffer
        end = submission.command_offset + submission.command_size
        if submission.command_offset < 0 or submission.command_size <= 0 or end > command.size:
            raise InvalidArgument(
                f"{self._name}: command range {submission.command_offset}+"
                f"{submission.command_size} outside buffer {command.handle} of {command.size} B"
            )
        token = SubmitToken(self._next_token)
        self._next_token += 1
        now = time.monotonic()
        record = InFlight(token, submission, on_done, now, now)
        self._inflight[token] = record
        self._queued.setdefault(submission.engine, []).append(record)
        self._submitted += 1
        try:
            self._dispatch(submission.engine, submitting=record)
        except BaseException:
            self._submitted -= 1
            raise
        return token

    # Why npud keeps a shallow kernel queue
    # -------------------------------------
    # No accel UAPI can take back one job once it is queued in the kernel, and none but
    # amdxdna's syncobjs can order a job after another file's work. So each engine has at
    # most ``kernel_depth`` jobs (default 1, the credit_limit rocket and ethosu give their
    # drm_sched schedulers anyway) inside the kernel; the rest wait here, in submission order,
    # where abort() can withdraw them and ``wait_for`` tokens are honoured. The cost is one
    # event-loop turn between jobs on an engine; core's scheduler keeps the queue shallow
    # in any case so that latency work is never stuck behind a deep kernel FIFO.
    def _dispatch(self, engine: int, *, submitting: InFlight | None = None) -> None:
        queue = self._queued.get(engine, [])
        while queue and self._in_kernel.get(engine, 0) < self._depth:
            record = queue[0]
            if any(t in self._inflight for t in record.submission.wait_for):
                return
            queue.pop(0)
            self._in_kernel[engine] = self._in_kernel.get(engine, 0) + 1
            record.extra["in_kernel"] = True
            record.started_at = time.monotonic()
            try:
                self._submit(record)
            except NpudError as exc:
                if record is submitting:
                    self._inflight.pop(record.token, None)
                    self._leave_kernel(record)
                    for step in reversed(record.cleanup):
                        with contextlib.suppress(NpudError):
                            step()
                    raise
                status = (
                    CompletionStatus.DEVICE_LOST
                    if isinstance(exc, DeviceLost)
                    else CompletionStatus.ERROR
                )
                self._finish(record, status, str(exc))

    def _leave_kernel(self, record: InFlight) -> None:
        if record.extra.pop("in_kernel", False):
            engine = record.submission.engine
            self._in_kernel[engine] = max(0, self._in_kernel.get(engine, 0) - 1)

    def _dispatch_all(self) -> None:
        if self._lost_reason is not None or self._file is None or self._closing:
            return
        for engine in list(self._queued):
            self._dispatch(engine)

    def abort(self, token: SubmitToken) -> bool:
        """These kernels cannot cancel one queued job; only work still queued in npud stops.

        Returns ``True`` when the job had not reached the kernel yet (it completes ABORTED).
        """
        record = self._inflight.get(token)
        if record is None:
            return False
        queue = self._queued.get(record.submission.engine, [])
        if record in queue:
            queue.remove(record)
            self._finish(record, CompletionStatus.ABORTED, "aborted before reaching the kernel")
            return True
        if self._abort_queued(record):
            self._finish(record, CompletionStatus.ABORTED, "aborted before reaching the kernel")
            return True
        return False

    def reset_engine(self, engine: int, reason: str) -> None:
        """Reset what the driver lets userspace reset on ``engine``; its jobs complete ABORTED."""
        self._check_alive()
        self._health = DeviceHealth.RESETTING
        victims = [r for r in self._inflight.values() if r.submission.engine == engine]
        for record in victims:
            record.aborted_reason = reason
        self._reset(engine, reason)
        for record in victims:
            if record.token in self._inflight:
                self._finish(record, CompletionStatus.ABORTED, reason)
        self._resets += 1
        if self._health is DeviceHealth.RESETTING:
            self._health = DeviceHealth.OK

    def add_loss_listener(self, callback: Callable[[str], None]) -> None:
        """Call ``callback(reason)`` on the loop when the device is lost."""
        self._loss_listeners.append(callback)

    def statistics(self) -> DeviceStatistics:
        """A frozen snapshot of the adapter's counters."""
        used = sum(r.buffer.size for r in self._bos.values())
        return DeviceStatistics(
            health=self._health,
            submitted=self._submitted,
            completed=self._completed,
            failed=self._failed,
            aborted=self._aborted,
            in_flight=len(self._inflight),
            resets=self._resets,
            busy_s_per_engine=tuple(self._busy),
            used_bytes={MemoryTier.DRAM: used},
            buffers=len(self._bos),
        )

    # -- hooks --------------------------------------------------------------------------------

    def _probe(self) -> Capabilities:
        raise NotImplementedError

    def _alloc(
        self, size: int, tier: MemoryTier, flags: int
    ) -> tuple[BoHandle, int, int | None, int]:
        """Allocate; return (handle, device address, mmap offset or None, allocated size)."""
        raise NotImplementedError

    def _release(self, record: BoRecord) -> None:
        """Driver cleanup before GEM_CLOSE (default: none)."""

    def _submit(self, record: InFlight) -> None:
        raise NotImplementedError

    def _reset(self, engine: int, reason: str) -> None:
        """Default: the driver offers userspace no reset; the kernel's own timeout recovers."""

    def _abort_queued(self, record: InFlight) -> bool:
        """Withdraw a job npud still holds (default: none are held)."""
        return False

    def _shutdown(self) -> None:
        """Release driver objects (queues, contexts) at close."""

    # -- helpers for subclasses ---------------------------------------------------------------

    def _accel_capabilities(
        self,
        *,
        description: str,
        board: str,
        engines: tuple[EngineInfo, ...],
        native_priorities: int,
        dram_bytes: int = 0,
        has_syncobj: bool = False,
        has_hw_contexts: bool = False,
        max_hw_contexts: int = 0,
        has_preemption: bool = False,
    ) -> Capabilities:
        """The capabilities of an accel node, for :meth:`_probe` (after VERSION was read).

        What the accel UAPIs share is filled in here: the driver name and version from VERSION,
        one DRAM tier of ``dram_bytes`` (system RAM when 0: their BOs are shmem), no abort of a
        running job, PRIME export, real hardware. The adapter says what differs.
        """
        return Capabilities(
            driver=self.driver,
            driver_version=self.version[1],
            description=description,
            board=board,
            engines=engines,
            tiers=(TierInfo(MemoryTier.DRAM, dram_bytes or system_memory()),),
            native_priorities=native_priorities,
            has_syncobj=has_syncobj,
            has_hw_contexts=has_hw_contexts,
            max_hw_contexts=max_hw_contexts,
            has_preemption=has_preemption,
            can_abort=False,
            can_export=True,
            simulated=False,
        )

    @property
    def file(self) -> KernelFile:
        """The open kernel file. Raises DeviceLost after loss or close."""
        if self._file is None:
            raise DeviceLost(f"{self._name}: device is not open")
        return self._file

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop completions are delivered on."""
        assert self._loop is not None
        return self._loop

    def call(self, spec: IoctlSpec, arg: Struct | None) -> None:
        """Run one ioctl, translating a failure into an npud error (errno and name kept).

        ENODEV (or a driver's own loss errno) also marks the device lost.
        """
        try:
            self.file.ioctl(spec, arg)
        except OSError as exc:
            error = translate(exc, spec, self.errno_overrides)
            if isinstance(error, DeviceLost):
                self._lose(f"{spec.name}: {error}")
            raise error from exc

    def read_bytes(self, handle: BoHandle, offset: int, size: int) -> bytes:
        """Copy ``size`` bytes at ``offset`` of a CPU-mappable BO (a job's command range)."""
        record = self._record(handle)
        if record.mmap_offset is None:
            raise Unsupported(f"{self._name}: buffer {handle} is not CPU-mappable")
        if record.mapping is None:
            record.mapping = self.file.mmap(record.mmap_offset, record.buffer.size)
        view = memoryview(record.mapping)
        try:
            return bytes(view[offset : offset + size])
        finally:
            view.release()

    def _record(self, handle: BoHandle) -> BoRecord:
        record = self._bos.get(handle)
        if record is None:
            raise NotFound(f"{self._name}: no buffer with handle {handle}")
        return record

    def _unmap(self, record: BoRecord) -> None:
        mapping, record.mapping, record.views = record.mapping, None, 0
        if isinstance(mapping, mmap.mmap):
            mapping.close()

    def _gem_close(self, handle: int) -> None:
        self.call(drm.GEM_CLOSE, drm.HEADER.new("struct drm_gem_close", handle=handle))

    def _prime_export(self, handle: int) -> int:
        arg = drm.HEADER.new(
            "struct drm_prime_handle", handle=handle, flags=drm.DRM_CLOEXEC | drm.DRM_RDWR
        )
        self.call(drm.PRIME_HANDLE_TO_FD, arg)
        return int(arg.fd)

    def _query_version(self) -> tuple[str, tuple[int, int, int], str]:
        """DRM_IOCTL_VERSION twice: once for the lengths, once with buffers."""
        ffi = drm.HEADER.ffi
        arg = drm.HEADER.new("struct drm_version")
        self.call(drm.VERSION, arg)
        name = ffi.new("char[]", int(arg.name_len) + 1)
        desc = ffi.new("char[]", int(arg.desc_len) + 1)
        date = ffi.new("char[]", int(arg.date_len) + 1)
        arg.name, arg.desc, arg.date = name, desc, date
        self.call(drm.VERSION, arg)

        def text(buf: Any, length: int) -> str:
            raw = ffi.string(buf, length)
            return raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw

        return (
            text(name, int(arg.name_len)),
            (int(arg.version_major), int(arg.version_minor), int(arg.version_patchlevel)),
            text(desc, int(arg.desc_len)),
        )

    def _check_alive(self) -> None:
        if self._lost_reason is not None:
            raise DeviceLost(f"{self._name}: {self._lost_reason}")
        if self._file is None:
            raise DeviceLost(f"{self._name}: device is not open")

    def _lose(self, reason: str) -> None:
        """Mark the device lost: in-flight jobs complete DEVICE_LOST, listeners are told."""
        if self._lost_reason is not None:
            return
        self._lost_reason = reason
        self._health = DeviceHealth.LOST
        for record in list(self._inflight.values()):
            self._finish(record, CompletionStatus.DEVICE_LOST, reason)
        for listener in list(self._loss_listeners):
            listener(reason)

    def _watch_fd(self, record: InFlight, fd: int, on_ready: Callable[[InFlight], None]) -> None:
        """Complete ``record`` through ``on_ready`` when ``fd`` polls readable; owns ``fd``."""
        record.fd = fd

        def _ready() -> None:
            self._unwatch(record)
            if record.token in self._inflight:
                on_ready(record)

        self.loop.add_reader(fd, _ready)

    def _unwatch(self, record: InFlight) -> None:
        if record.fd >= 0:
            self.loop.remove_reader(record.fd)
            os.close(record.fd)
            record.fd = -1

    def _finish(self, record: InFlight, status: CompletionStatus, error: str | None) -> None:
        """Deliver the completion exactly once and release what the job held."""
        if self._inflight.pop(record.token, None) is None:
            return
        queue = self._queued.get(record.submission.engine, [])
        if record in queue:
            queue.remove(record)
        self._leave_kernel(record)
        self._unwatch(record)
        for step in reversed(record.cleanup):
            # the device may be gone; the job's outcome is what matters
            with contextlib.suppress(NpudError):
                step()
        finished = time.monotonic()
        measured = max(0.0, finished - record.started_at)
        if 0 <= record.submission.engine < len(self._busy):
            self._busy[record.submission.engine] += measured
        if status is CompletionStatus.OK:
            self._completed += 1
        elif status is CompletionStatus.ABORTED:
            self._aborted += 1
        else:
            self._failed += 1
        record.on_done(
            Completion(
                token=record.token,
                status=status,
                error=error,
                started_at=record.started_at,
                finished_at=finished,
                modelled_s=0.0,
                measured_s=measured,
            )
        )
        self._dispatch_all()


def system_memory() -> int:
    """Bytes of system RAM: the pool NPUs with shmem-backed BOs allocate from."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return 0
