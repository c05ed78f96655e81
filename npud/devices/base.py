"""The Device contract: what core needs of an NPU, and nothing more.

Core's scheduler and residency manager are written against this module only; every adapter
(the simulated NPU, vgem, rocket, ivpu, amdxdna, ethosu, qaic) implements :class:`Device`. The
contract is modelled on the DRM scheduler's backend ops: core decides *what* runs *when*; the
device only allocates memory, runs what it is given, and reports back.

Threading and the event loop
----------------------------
Every method is called from the thread that owns core state (the daemon's asyncio loop, or a
test's thread driving a :class:`~npud.clock.VirtualClock`). Completion callbacks are delivered on
that same thread: an adapter whose kernel completes work elsewhere (a waiter thread, a device
process) hands results back with ``loop.call_soon_threadsafe`` or an fd on the loop
(``loop.add_reader`` on a sync_file or a pipe), never by calling core from a foreign thread and
never by busy polling. Because completions are plain callbacks, core needs no locks and no task
per job; :func:`submit_and_wait` adapts one submission to ``await`` where that is convenient.

Ownership
---------
A :class:`DeviceBuffer` returned by :meth:`Device.create_buffer` is owned by the caller until it
is passed to :meth:`Device.free_buffer`. A ``memoryview`` from :meth:`Device.map_buffer` is
valid until :meth:`Device.unmap_buffer` or ``free_buffer`` of the same handle; the caller must
release it first. A dma-buf fd from :meth:`Device.export_buffer` belongs to the caller, who
closes it.

Errors
------
Adapters raise only :mod:`npud.errors` classes (translating errnos through one table):
``InvalidArgument`` for a request the device can never accept, ``NotFound`` for an unknown
handle, ``OutOfDeviceMemory`` when a tier is full, ``Unsupported`` for an operation the driver
lacks, ``DeviceLost`` once the device is gone, and ``DeviceError`` for the rest. A job that
fails on the device is not an exception: it is a :class:`Completion` with a non-OK status.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NewType, Protocol, runtime_checkable

from npud.vocab import DeviceHealth, MemoryTier

BoHandle = NewType("BoHandle", int)
"""A kernel (or simulated kernel) buffer-object handle: meaningful only to its device."""

SubmitToken = NewType("SubmitToken", int)
"""A device's name for one submission, used to abort it."""


class BufferUse(enum.Flag):
    """How a job uses a bound buffer; the device may run readers of one buffer together."""

    READ = enum.auto()
    WRITE = enum.auto()
    READWRITE = READ | WRITE


class CompletionStatus(enum.StrEnum):
    """How one submission ended on the device."""

    OK = "ok"
    ERROR = "error"  # the device reported a job error (bad command stream, fault in the job)
    ABORTED = "aborted"  # aborted by :meth:`Device.abort` or by :meth:`Device.reset_engine`
    DEVICE_LOST = "device_lost"  # the device went away while the job was in flight


@dataclass(frozen=True, slots=True)
class EngineInfo:
    """One independently schedulable execution unit (an NPU core, a tile column group, ...)."""

    index: int
    name: str


@dataclass(frozen=True, slots=True)
class TierInfo:
    """A memory tier and what it can hold.

    ``capacity_bytes == 0`` means the device has no such tier (reported empty, never faked).
    ``bandwidth_bytes_per_s`` is ``None`` where no figure is known.
    """

    tier: MemoryTier
    capacity_bytes: int
    bandwidth_bytes_per_s: float | None = None


DEFAULT_MAX_BINDINGS = 4096
"""Bindings per job where a device states no smaller limit: far above any model's buffers (a
decode step binds a dozen), small enough that a job's binding table stays a few pages."""


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a device is and offers, fixed from ``open()`` until ``close()``."""

    driver: str  # the kernel driver name from DRM_IOCTL_VERSION ("rocket", "ivpu", "sim", ...)
    driver_version: tuple[int, int, int]
    description: str
    board: str  # a profile or model name ("rk3588", "lunar-lake", ...)
    engines: tuple[EngineInfo, ...]
    tiers: tuple[TierInfo, ...]
    native_priorities: int  # how many native priority levels submit() accepts (1 = none)
    has_syncobj: bool
    has_hw_contexts: bool
    max_hw_contexts: int  # 0 when the device has no hardware-context limit
    has_preemption: bool
    can_abort: bool  # abort() of a running job stops it on the device
    can_export: bool  # export_buffer() gives a descriptor (a dma-buf; a memfd on the sim)
    simulated: bool
    launch_overhead_s: float = 0.0  # the fixed per-job cost, where known
    max_bindings: int = DEFAULT_MAX_BINDINGS
    """Buffers one job may bind; core refuses more at admission (INVALID_ARGUMENT), so a job
    never reaches a device that cannot carry it."""
    models_jobs: bool = False
    """The device reads its command streams before they run: :meth:`Device.modelled_s` checks
    a job and models its duration at admission. Core reads a job's stream only then."""

    def tier(self, tier: MemoryTier) -> TierInfo:
        """The :class:`TierInfo` for ``tier`` (an empty one if the device lacks it)."""
        for info in self.tiers:
            if info.tier is tier:
                return info
        return TierInfo(tier, 0, None)


@dataclass(frozen=True, slots=True)
class DeviceBuffer:
    """A buffer the device allocated: its handle, size, tier and device address."""

    handle: BoHandle
    size: int
    tier: MemoryTier
    device_address: int


@dataclass(frozen=True, slots=True)
class Binding:
    """A buffer bound to a submission, with how the job uses it.

    ``size`` is the buffer's size as its owner created it; the allocation behind ``handle``
    may be larger (rounded to the device's granularity). A device that checks a job's operands
    against its buffers checks them against ``size`` (``None``: the whole allocation), so a job
    never reaches the padding past its buffer's end.
    """

    handle: BoHandle
    use: BufferUse
    size: int | None = None


@dataclass(frozen=True, slots=True)
class BindingShape:
    """A buffer a job will bind, as admission knows it before the buffer is placed: its size
    as the client created it (not rounded to the device's granularity), how the job uses it,
    and its tier when it is resident now (``None``: not placed yet)."""

    size: int
    use: BufferUse
    tier: MemoryTier | None = None


@dataclass(frozen=True, slots=True)
class Submission:
    """Everything a device needs to run one job.

    ``command`` names the buffer holding the command stream (``command_offset`` and
    ``command_size`` delimit it). ``bindings`` lists every buffer the stream may touch; a device
    refuses references to unbound buffers. ``priority`` is a native level in
    ``range(capabilities.native_priorities)`` (0 is the most urgent). ``wait_for`` are tokens of
    earlier submissions on this device that must complete first (input fences).
    """

    command: BoHandle
    command_offset: int
    command_size: int
    bindings: tuple[Binding, ...]
    engine: int
    priority: int = 0
    wait_for: tuple[SubmitToken, ...] = ()
    label: str = ""
    timeout_s: float | None = None  # an adapter that arms its own kernel timeout may use it


@dataclass(frozen=True, slots=True)
class Completion:
    """How a submission ended.

    ``modelled_s`` is the device's cost-model estimate of the run time (0.0 where the device
    has no model); ``measured_s`` is the run time observed on the device's clock.
    """

    token: SubmitToken
    status: CompletionStatus
    error: str | None
    started_at: float
    finished_at: float
    modelled_s: float
    measured_s: float
    bytes_read: int = 0
    bytes_written: int = 0


@dataclass(frozen=True, slots=True)
class DeviceStatistics:
    """A snapshot of one device's counters."""

    health: DeviceHealth
    submitted: int
    completed: int
    failed: int
    aborted: int
    in_flight: int
    resets: int
    busy_s_per_engine: tuple[float, ...]
    used_bytes: Mapping[MemoryTier, int] = field(default_factory=dict)
    buffers: int = 0


CompletionCallback = Callable[[Completion], None]


@runtime_checkable
class Device(Protocol):
    """An NPU as core sees it. See the module docstring for threading, ownership and errors."""

    @property
    def name(self) -> str:
        """A stable name for this device within the daemon ("sim0", "accel0", ...)."""
        ...

    @property
    def capabilities(self) -> Capabilities:
        """What the device offers. Valid after :meth:`open`. Never blocks."""
        ...

    def open(self) -> None:
        """Open the device (open the node, start the device process, query capabilities).

        Called once by the daemon before serving. May block briefly (tens of ms).

        Raises:
            DeviceLost: the node disappeared or the device process could not start.
            DeviceError: the kernel refused the open or a capability query.
        """
        ...

    def close(self) -> None:
        """Close the device: in-flight jobs complete as ABORTED, every buffer is freed.

        Called by the daemon at shutdown (after draining) and after device loss. Idempotent.
        """
        ...

    def health(self) -> DeviceHealth:
        """The device's state. Never blocks."""
        ...

    def create_buffer(self, size: int, tier: MemoryTier, *, flags: int = 0) -> DeviceBuffer:
        """Allocate ``size`` bytes (rounded up to the device's granularity) in ``tier``.

        The caller owns the returned buffer until :meth:`free_buffer`. Never blocks for long.

        Raises:
            InvalidArgument: ``size`` is 0 or larger than the tier could ever hold; bad flags.
            OutOfDeviceMemory: the tier has no room now (ENOMEM).
            DeviceLost: the device is gone.
        """
        ...

    def free_buffer(self, handle: BoHandle) -> None:
        """Free a buffer. The caller must not free one bound to a job still in flight.

        Raises:
            NotFound: unknown handle (already freed, or never allocated here).
        """
        ...

    def map_buffer(self, handle: BoHandle) -> memoryview:
        """A writable CPU view of the whole buffer, valid until ``unmap_buffer``/``free_buffer``.

        Raises:
            NotFound: unknown handle.
            Unsupported: the tier is not CPU-visible (the caller should stage through DRAM).
        """
        ...

    def unmap_buffer(self, handle: BoHandle) -> None:
        """Drop the CPU view; the caller has released every view it took."""
        ...

    def export_buffer(self, handle: BoHandle) -> int:
        """Export the buffer as a descriptor of its memory that the caller owns and must
        close: a dma-buf (PRIME) on kernel drivers, a memfd on the simulated NPU.

        Raises:
            NotFound: unknown handle.
            Unsupported: the driver cannot export.
        """
        ...

    def submit(self, submission: Submission, on_done: CompletionCallback) -> SubmitToken:
        """Queue one job on an engine; ``on_done`` runs exactly once, on the core thread.

        Never blocks. The device runs jobs on different engines concurrently; on one engine
        it runs them in submission order. A job that fails on the device completes with a
        non-OK status rather than raising.

        Raises:
            InvalidArgument: engine or priority out of range, unknown handle in the bindings.
            DeviceLost: the device is gone (nothing was queued).
        """
        ...

    def modelled_s(self, command: bytes, bindings: Sequence[BindingShape]) -> float | None:
        """Check a job's command stream against its bindings and model its run time, before
        the job is admitted (the scheduler slices and charges a job from this number while its
        kind has no measurements and its client declared no estimate).

        Only called where ``capabilities.models_jobs``; others return ``None``. Pure (no state
        changes), never blocks; costs a decode of the stream.

        Returns:
            The device's modelled duration of the job in seconds, or ``None`` where the device
            has no cost model or cannot read the stream's format.

        Raises:
            InvalidArgument: the device reads the stream's format and the stream is malformed
                for these bindings (truncated, an unknown op, an operand outside its buffer's
                size, a write to a buffer bound read-only): the message names the op and field.
        """
        ...

    def abort(self, token: SubmitToken) -> bool:
        """Abort a queued or running submission; its completion reports ABORTED.

        Returns ``False`` when the job already completed or the device cannot stop it (then
        its completion arrives as usual, and the caller discards the result).
        """
        ...

    def reset_engine(self, engine: int, reason: str) -> None:
        """Reset a (hung) engine: every job in flight on it completes as ABORTED with ``reason``.

        Other engines are unaffected. The engine accepts work again when this returns.
        """
        ...

    def add_loss_listener(self, callback: Callable[[str], None]) -> None:
        """Register ``callback(reason)`` to run on the core thread when the device is lost."""
        ...

    def statistics(self) -> DeviceStatistics:
        """A frozen snapshot of the device's counters. Never blocks."""
        ...


@runtime_checkable
class ImportsMemory(Protocol):
    """A device that can take a client's memory as a buffer's memory without copying it
    (optional: core checks ``isinstance(device, ImportsMemory)`` and otherwise uploads)."""

    def import_memory(self, fd: int, size: int, tier: MemoryTier) -> DeviceBuffer:
        """A new buffer over the memory of ``fd`` (a memfd its sender can no longer write or
        shrink, which the caller has checked). The device keeps its own duplicate; the caller
        still owns ``fd``. The buffer is read-only: nothing may write it.

        Raises:
            InvalidArgument: the file is smaller than the rounded size, or no such tier.
            OutOfDeviceMemory: the tier has no room now.
            DeviceLost: the device is gone.
        """
        ...


async def submit_and_wait(device: Device, submission: Submission) -> Completion:
    """Submit one job and await its completion on the running loop.

    For callers that prefer ``await`` to callbacks (tests, benchmarks, the LLM direct path).
    The loop's thread must be the device's core thread.
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Completion] = loop.create_future()

    def _done(completion: Completion) -> None:
        if not future.done():
            future.set_result(completion)

    device.submit(submission, _done)
    return await future
