"""The rknpu adapter: the RK3588 NPU through Rockchip's vendor ``rknpu`` driver (BSP kernels).

What the kernel offers (``drivers/rknpu/include/rknpu_ioctl.h`` in Rockchip's kernel tree; see
:mod:`npud.abi.rknpu`): a DRM render node named ``rknpu``; ``ACTION`` queries (driver and
hardware versions, IOMMU, total and free SRAM) and ``RKNPU_ACT_RESET``, a soft reset of the whole
NPU; ``MEM_CREATE``/``MEM_MAP``/``MEM_DESTROY``/``MEM_SYNC`` for memory, optionally placed in the
NPU's SRAM; ``SUBMIT`` of a range of *tasks* (``struct rknpu_task``: a register-command address
and length, interrupt masks) from a task object, on the cores of ``core_mask``, with a timeout.
Unlike mainline rocket, a blocking ``SUBMIT`` returns the job's outcome: success with
``task_counter`` (tasks completed) and ``hw_elapse_time``, ``ETIMEDOUT`` (the driver then
soft-resets the NPU) or ``EINVAL`` when a reset cut the job short. There is a ``priority``
field, which the driver's per-core job queues never read, and no job list per file: every
client's jobs share the three cores' queues.

How npud drives it:

- **engines are the cores**: engine ``i`` submits with ``core_mask = 1 << i`` (RK3588: three);
  npud, not the driver's load balancing (``core_mask`` 0), decides where work runs.
- **job status from the driver**: each engine has ONE submitter thread that issues the blocking
  ``SUBMIT`` (``RKNPU_JOB_PC``, as RKNN does) and hands the outcome to the loop with
  ``loop.call_soon_threadsafe``. The shallow kernel queue (one job per engine) means the thread
  never holds more than the job running on its core. A job completes OK only when the driver
  says every task ran (``task_counter == task_number``); a timeout or a reset is an ERROR with
  the errno and the task count in the message.
- the command range is the register-command stream (as Rockchip's RKNN toolkit or the open
  rocket userspace emits it; opaque to npud): the adapter writes ONE task into the engine's task
  object (``regcmd_addr`` = DMA address of the range, ``regcfg_amount`` = its 64-bit words,
  ``enable_mask`` 0xd, ``int_mask`` 0x300 = "DPU done", ``int_clear`` 0x1ffff, the values open
  RKNN userspace uses) and submits it. The regcmds address tensors by DMA address
  (``DeviceBuffer.device_address``).
- memory is cacheable (``RKNPU_MEM_CACHEABLE``): ``MEM_SYNC`` to the device for every bound
  buffer before a job, from the device for the written ones after it.
- **power**: where the driver handles ``RKNPU_POWER_ON`` the adapter holds one power reference
  from open to close (no power-up on the first job after an idle spell); versions that refuse it
  (``EINVAL``) power the NPU around every ioctl themselves.
- **SRAM is npud's SRAM tier** where the driver has some (``RKNPU_GET_TOTAL_SRAM_SIZE`` > 0): a
  buffer in the SRAM tier is created with ``RKNPU_MEM_TRY_ALLOC_SRAM`` and refused
  (OutOfDeviceMemory) unless the driver placed all of it in SRAM.
- **timeouts**: the driver's job timeout is a backstop at twice the submission's timeout (plus
  50 ms; 1 s without one), so npud's watchdog fires first.
- **reset**: the watchdog's ``reset_engine`` issues ``RKNPU_ACT_RESET``. It resets every core,
  so the jobs in the kernel on the other engines end too; they complete ABORTED with a reason
  that says so (their clients see them FAILED with it: npud re-queues only the jobs behind the
  hung one on its own engine, which had not started).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import mmap
import queue
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from npud.abi import rknpu
from npud.devices.accel.device import AccelDevice, BoRecord, InFlight
from npud.devices.accel.kernel import KernelFile, translate
from npud.devices.base import (
    BoHandle,
    BufferUse,
    Capabilities,
    CompletionStatus,
    DeviceStatistics,
    EngineInfo,
    SubmitToken,
    TierInfo,
)
from npud.devices.priority import RKNPU as PRIORITIES
from npud.errors import DeviceLost, InvalidArgument, NpudError, OutOfDeviceMemory
from npud.vocab import MemoryTier

PAGE = 4096
REGCMD_BYTES = 8
TASK_OBJECT_BYTES = PAGE
DEFAULT_TIMEOUT_MS = 1000
MAX_TIMEOUT_MS = 60_000
# The driver's job timeout is npud's watchdog timeout times this, plus the slack: npud's
# watchdog fires first and decides what happens to the other jobs; the driver's timeout (which
# soft-resets every core) only catches what npud missed.
KERNEL_TIMEOUT_FACTOR = 2
KERNEL_TIMEOUT_SLACK_MS = 50
TASK_ENABLE_MASK = 0xD  # CNA + core + DPU, as open RKNN userspace sets it
TASK_INT_MASK = 0x300  # "DPU done": the interrupt the last task raises
TASK_INT_CLEAR = 0x1FFFF  # RKNPU_INT_CLEAR
_BINDING = struct.Struct("<QQ")


@dataclass(frozen=True, slots=True)
class SubmitResult:
    """What one blocking SUBMIT returned (on the submitter thread)."""

    error: OSError | NpudError | None
    task_counter: int
    hw_elapse_ns: int


@dataclass(frozen=True, slots=True)
class _Job:
    """What an engine's thread needs to submit one job."""

    token: SubmitToken
    engine: int
    regcmd: int  # DMA address of the register commands
    words: int  # how many 64-bit register commands
    described: list[tuple[int, int]]  # (DMA address, size) of each binding
    timeout_ms: int


class _Submitter:
    """One engine's submitter thread: runs blocking SUBMITs in order, reports on the loop.

    Unlike :class:`~npud.devices.accel.waiter.WaiterThread`, stopping does not join: a SUBMIT in the
    kernel returns only when its job ends (or times out), and the device closes meanwhile.
    """

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], Callable[[Any], None]] | None]
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"npud-{name}", daemon=True)
        self._thread.start()

    def run(self, fn: Callable[[], Any], deliver: Callable[[Any], None]) -> None:
        """Queue ``fn`` on the thread; ``deliver(result)`` runs on the loop."""
        self._queue.put((fn, deliver))

    def stop(self) -> None:
        """Let the thread end after what it is doing (no join)."""
        self._queue.put(None)

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            fn, deliver = item
            result = fn()
            try:
                self._loop.call_soon_threadsafe(deliver, result)
            except RuntimeError:  # the loop is closed: nobody listens any more
                return


@dataclass(slots=True, eq=False)
class _TaskObject:
    """An engine's task object: where its one task (and the binding table) is written."""

    handle: BoHandle
    obj_addr: int
    mapping: mmap.mmap | memoryview


class RknpuDevice(AccelDevice):
    """An RK3588 NPU driven by Rockchip's vendor ``rknpu`` driver (``/dev/dri/renderD*``)."""

    driver = "rknpu"

    def __init__(
        self,
        opener: Callable[[], KernelFile] | str,
        *,
        name: str = "renderD129",
        loop: asyncio.AbstractEventLoop | None = None,
        kernel_depth: int = 1,
        cores: int = 3,
        timeout_ms: int = DEFAULT_TIMEOUT_MS,
        describe_bindings: bool = False,
    ) -> None:
        if not 1 <= cores <= 3:
            raise ValueError(f"rknpu drives 1 to 3 cores, not {cores}")
        if not 1 <= timeout_ms <= MAX_TIMEOUT_MS:
            raise ValueError(f"timeout_ms must be 1..{MAX_TIMEOUT_MS}, not {timeout_ms}")
        super().__init__(opener, name=name, loop=loop, kernel_depth=kernel_depth)
        self._cores = cores
        self._timeout_ms = timeout_ms
        self._describe = describe_bindings
        self._objects: dict[BoHandle, int] = {}  # handle -> obj_addr
        self._tasks: list[_TaskObject] = []
        self._submitters: list[_Submitter] = []
        self.info: dict[str, int] = {}

    # -- queries ----------------------------------------------------------------------------

    def action(self, action: rknpu.Action, value: int = 0) -> int:
        """One ``ACTION`` call; returns its ``value``.

        Raises:
            InvalidArgument: the driver does not know the action (EINVAL).
            DeviceLost: the device is gone.
        """
        arg = rknpu.HEADER.new("struct rknpu_action", flags=int(action), value=value)
        self.call(rknpu.ACTION, arg)
        return int(arg.value)

    def _probe(self) -> Capabilities:
        self.info = {
            "drv_version": self.action(rknpu.Action.GET_DRV_VERSION),
            "hw_version": self.action(rknpu.Action.GET_HW_VERSION),
            "iommu": self.action(rknpu.Action.GET_IOMMU_EN),
            "sram_bytes": self.action(rknpu.Action.GET_TOTAL_SRAM_SIZE),
        }
        major, minor, patch = rknpu.drv_version(self.info["drv_version"])
        self._power_on()
        self._submitters = [
            _Submitter(f"{self.name}-core{i}", self.loop) for i in range(self._cores)
        ]
        self._tasks = []
        try:
            for _ in range(self._cores):
                self._tasks.append(self._task_object())
        except NpudError:
            self._shutdown()
            raise
        sram = self.info["sram_bytes"]
        caps = self._accel_capabilities(
            description=(
                f"{self.version[2] or 'RKNPU driver'} {major}.{minor}.{patch} "
                f"(hw {self.info['hw_version']:#x}, {sram // 1024} KiB SRAM)"
            ),
            board="rk3588",
            engines=tuple(EngineInfo(i, f"core{i}") for i in range(self._cores)),
            native_priorities=PRIORITIES.levels,
        )
        tiers = caps.tiers + ((TierInfo(MemoryTier.SRAM, sram),) if sram else ())
        return dataclasses.replace(caps, tiers=tiers)

    def _power_on(self) -> None:
        """``RKNPU_POWER_ON`` where the driver has it: keep the NPU powered while npud serves.

        Driver versions without it (``EINVAL``) power the NPU around every ioctl themselves.
        """
        try:
            self.action(rknpu.Action.POWER_ON)
        except InvalidArgument:
            self.info["power_held"] = 0
            return
        self.info["power_held"] = 1

    def _task_object(self) -> _TaskObject:
        flags = rknpu.MemFlag.KERNEL_MAPPING | rknpu.MemFlag.CACHEABLE
        handle, _address, offset, size, obj_addr = self._create(TASK_OBJECT_BYTES, flags)
        return _TaskObject(handle, obj_addr, self.file.mmap(offset, size))

    # -- buffers ----------------------------------------------------------------------------

    def _create(
        self, size: int, flags: rknpu.MemFlag, sram: int = 0
    ) -> tuple[BoHandle, int, int, int, int]:
        """MEM_CREATE + MEM_MAP: (handle, DMA address, mmap offset, size, obj_addr)."""
        if self.info.get("iommu"):
            flags |= rknpu.MemFlag.NON_CONTIGUOUS
        arg = rknpu.HEADER.new(
            "struct rknpu_mem_create", flags=int(flags), size=size, sram_size=sram
        )
        self.call(rknpu.MEM_CREATE, arg)
        handle = BoHandle(int(arg.handle))
        try:
            if sram and int(arg.sram_size) < int(arg.size):
                raise OutOfDeviceMemory(
                    f"{self.name}: the NPU's SRAM has no {int(arg.size)} B left "
                    f"(the driver placed {int(arg.sram_size)} B there)"
                )
            mapped = rknpu.HEADER.new("struct rknpu_mem_map", handle=handle)
            self.call(rknpu.MEM_MAP, mapped)
        except NpudError:
            with contextlib.suppress(NpudError):
                self._gem_close(handle)
            raise
        return handle, int(arg.dma_addr), int(mapped.offset), int(arg.size), int(arg.obj_addr)

    def _alloc(
        self, size: int, tier: MemoryTier, flags: int
    ) -> tuple[BoHandle, int, int | None, int]:
        if flags:
            raise InvalidArgument(f"{self.name}: rknpu buffers take no flags")
        mem = rknpu.MemFlag.CACHEABLE
        sram = 0
        if tier is MemoryTier.SRAM:
            mem |= rknpu.MemFlag.TRY_ALLOC_SRAM
            sram = (size + PAGE - 1) // PAGE * PAGE
        handle, address, offset, actual, obj_addr = self._create(size, mem, sram)
        self._objects[handle] = obj_addr
        return handle, address, offset, actual

    def _release(self, record: BoRecord) -> None:
        """Forget the object's kernel address (MEM_DESTROY follows)."""
        self._objects.pop(record.buffer.handle, None)

    def _gem_close(self, handle: int) -> None:
        """``MEM_DESTROY``: the vendor's way of dropping a handle (what RKNN calls)."""
        self.call(rknpu.MEM_DESTROY, rknpu.HEADER.new("struct rknpu_mem_destroy", handle=handle))

    def _sync(self, handle: BoHandle, direction: rknpu.SyncFlag) -> None:
        obj_addr = self._objects.get(handle)
        if obj_addr is None:
            return
        size = self._bos[handle].buffer.size
        arg = rknpu.HEADER.new(
            "struct rknpu_mem_sync", flags=int(direction), obj_addr=obj_addr, size=size
        )
        self.call(rknpu.MEM_SYNC, arg)

    def statistics(self) -> DeviceStatistics:
        """The accel counters, with the bytes held per tier (SRAM apart from DRAM)."""
        stats = super().statistics()
        used: dict[MemoryTier, int] = {MemoryTier.DRAM: 0}
        for record in self._bos.values():
            tier = record.buffer.tier
            used[tier] = used.get(tier, 0) + record.buffer.size
        return dataclasses.replace(stats, used_bytes=used)

    # -- jobs -------------------------------------------------------------------------------

    def _submit(self, record: InFlight) -> None:
        sub = record.submission
        if sub.command_size % REGCMD_BYTES or sub.command_offset % REGCMD_BYTES:
            raise InvalidArgument(
                f"{self.name}: rknpu register commands are {REGCMD_BYTES}-byte words; command "
                f"range {sub.command_offset}+{sub.command_size} is not aligned"
            )
        bound: list[BoHandle] = []
        writes: list[BoHandle] = []
        for binding in sub.bindings:
            if binding.handle not in bound:
                bound.append(binding.handle)
            if BufferUse.WRITE in binding.use and binding.handle not in writes:
                writes.append(binding.handle)
        room = (TASK_OBJECT_BYTES - 2 * _BINDING.size) // _BINDING.size
        if self._describe and len(bound) > room:
            raise InvalidArgument(f"{self.name}: at most {room} bindings per job")
        for handle in (sub.command, *bound):  # CPU caches -> memory, for the NPU
            self._sync(handle, rknpu.SyncFlag.TO_DEVICE)
        command = self._bos[sub.command].buffer
        regcmd = command.device_address + sub.command_offset
        described = [(self._bos[h].buffer.device_address, self._bos[h].buffer.size) for h in bound]
        timeout_ms = self._timeout_ms
        if sub.timeout_s is not None:  # a backstop behind npud's watchdog (see the module)
            timeout_ms = int(sub.timeout_s * 1000 * KERNEL_TIMEOUT_FACTOR) + KERNEL_TIMEOUT_SLACK_MS
            timeout_ms = max(1, min(MAX_TIMEOUT_MS, timeout_ms))
        record.extra["writes"] = writes
        token = record.token
        engine = sub.engine
        job = _Job(token, engine, regcmd, sub.command_size // REGCMD_BYTES, described, timeout_ms)
        self._submitters[engine].run(
            lambda: self._blocking_submit(job), lambda result: self._on_submitted(token, result)
        )

    def _blocking_submit(self, job: _Job) -> SubmitResult:
        """On the engine's thread: write the task, SUBMIT and block until the driver answers."""
        token, engine, regcmd, words = job.token, job.engine, job.regcmd, job.words
        described, timeout_ms = job.described, job.timeout_ms
        if token not in self._inflight:
            return SubmitResult(None, 0, 0)  # aborted or closed while it waited for the thread
        try:
            task_object = self._tasks[engine]
            ffi = rknpu.HEADER.ffi
            task = ffi.new(
                "struct rknpu_task *",
                {
                    "enable_mask": TASK_ENABLE_MASK,
                    "int_mask": TASK_INT_MASK,
                    "int_clear": TASK_INT_CLEAR,
                    "regcfg_amount": words,
                    "regcmd_addr": regcmd,
                },
            )
            view = memoryview(task_object.mapping)
            try:
                size = ffi.sizeof("struct rknpu_task")
                view[:size] = bytes(ffi.buffer(task))
                if self._describe:
                    table = struct.pack("<I4x", len(described)) + b"".join(
                        _BINDING.pack(a, s) for a, s in described
                    )
                    view[size : size + len(table)] = table
            finally:
                view.release()
            sync = rknpu.HEADER.new(
                "struct rknpu_mem_sync",
                flags=int(rknpu.SyncFlag.TO_DEVICE),
                obj_addr=task_object.obj_addr,
                size=TASK_OBJECT_BYTES,
            )
            self.file.ioctl(rknpu.MEM_SYNC, sync)
            arg = rknpu.HEADER.new(
                "struct rknpu_submit",
                flags=int(rknpu.JobFlag.PC | rknpu.JobFlag.PINGPONG),
                timeout=timeout_ms,
                task_start=0,
                task_number=1,
                priority=PRIORITIES.value(0),
                task_obj_addr=task_object.obj_addr,
                core_mask=1 << engine,
                fence_fd=-1,
            )
            self.file.ioctl(rknpu.SUBMIT, arg)
        except (OSError, NpudError) as exc:
            return SubmitResult(exc, 0, 0)
        except IndexError:  # the device closed while this job waited for the thread
            return SubmitResult(None, 0, 0)
        return SubmitResult(None, int(arg.task_counter), int(arg.hw_elapse_time))

    def _on_submitted(self, token: SubmitToken, result: SubmitResult) -> None:
        """On the loop: report the job the driver answered for."""
        record = self._inflight.get(token)
        if record is None:
            return  # already reported (aborted by a reset, or the device closed)
        error = result.error
        if isinstance(error, OSError):
            npud_error = translate(error, rknpu.SUBMIT, self.errno_overrides)
            if isinstance(npud_error, DeviceLost):
                self._lose(f"{rknpu.SUBMIT.name}: {npud_error}")
                return
            if record.aborted_reason is not None:
                self._finish(record, CompletionStatus.ABORTED, record.aborted_reason)
                return
            if error.errno == errno.ETIMEDOUT:
                reason = (
                    f"rknpu: job timed out in the driver (ETIMEDOUT, {result.task_counter} of 1 "
                    "tasks done); the driver soft-reset the NPU"
                )
            else:
                reason = f"rknpu: {rknpu.SUBMIT.name} failed: {npud_error}"
            self._finish(record, CompletionStatus.ERROR, reason)
            return
        if isinstance(error, NpudError):
            self._lose(str(error))
            return
        if result.task_counter != 1:
            self._finish(
                record,
                CompletionStatus.ERROR,
                f"rknpu: the driver ran {result.task_counter} of 1 tasks",
            )
            return
        for handle in record.extra["writes"]:  # device writes -> visible to the CPU
            if handle in self._bos:
                self._sync(handle, rknpu.SyncFlag.FROM_DEVICE)
        record.extra["hw_elapse_ns"] = result.hw_elapse_ns
        self._finish(record, CompletionStatus.OK, None)

    def _reset(self, engine: int, reason: str) -> None:
        """``RKNPU_ACT_RESET``: a soft reset of the whole NPU.

        Jobs in the kernel on other engines are cut short as well; they complete ABORTED.
        """
        for record in self._inflight.values():
            if record.submission.engine != engine and record.extra.get("in_kernel"):
                record.aborted_reason = (
                    f"aborted: the NPU was soft-reset (all cores) to recover core{engine}: {reason}"
                )
        self.action(rknpu.Action.ACT_RESET)

    def _shutdown(self) -> None:
        """Let the submitter threads end, free the task objects, drop the power reference."""
        for submitter in self._submitters:
            submitter.stop()
        self._submitters = []
        for task_object in self._tasks:
            if isinstance(task_object.mapping, mmap.mmap):
                task_object.mapping.close()
            with contextlib.suppress(NpudError):
                self._gem_close(task_object.handle)
        self._tasks = []
        if self.info.pop("power_held", 0):
            with contextlib.suppress(NpudError):
                self.action(rknpu.Action.POWER_OFF)
