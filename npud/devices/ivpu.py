"""The ivpu adapter: Intel NPUs (Meteor/Arrow/Lunar/Panther Lake) through the ``ivpu`` driver.

What the kernel offers (``include/uapi/drm/ivpu_accel.h``, ``drivers/accel/ivpu``): parameters
through ``GET_PARAM`` (device id, tile config, clock, context count, capabilities), shmem BOs
(``BO_CREATE``/``BO_INFO``), explicit command queues with a firmware priority and a TURBO flag
(``CMDQ_CREATE``/``CMDQ_DESTROY``/``CMDQ_SUBMIT``, capability ``DRM_IVPU_CAP_MANAGE_CMDQ``; the
older ``SUBMIT`` carries the priority per job), and ``BO_WAIT`` on a command buffer returning the
firmware's job status. No drm_sched: jobs go straight to firmware queues (the HW scheduler, with
preemption buffers, on NPU 40xx and later).

How npud drives it:

- one command queue per native level, made on first use: level 0 is
  ``DRM_IVPU_JOB_PRIORITY_REALTIME`` with ``DRM_IVPU_CMDQ_FLAG_TURBO``, then FOCUS, NORMAL, IDLE
  (:data:`npud.devices.priority.IVPU`). Without MANAGE_CMDQ (older kernels) the legacy ``SUBMIT``
  carries the same priority per job and TURBO is unavailable.
- the command range (a firmware job command list built by the Level Zero / OpenVINO stack;
  opaque to npud) is copied into a per-job command slot: the kernel refuses a command buffer
  still in use (EBUSY) and writes the job status into it. The job's other buffers follow it in
  the BO list, in binding order.
- completion without a thread: the slot's dma-buf is polled on the loop (the job's fence is its
  WRITE fence), then ``BO_WAIT`` with a zero timeout reads the job status:
  ``DRM_IVPU_JOB_STATUS_SUCCESS`` -> OK, ``..._ABORTED`` -> ABORTED, anything else -> ERROR.
- errors: ``EBADFD`` means the file's context took an MMU fault; the kernel refuses every later
  submit on it, so the device is reported lost (loss listeners run; the daemon reopens the node,
  which gives a fresh context). ``reset_engine`` destroys the command queues, which makes the
  kernel abort their jobs (``ivpu_cmdq_abort_all_jobs``); they are recreated on next use.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import mmap
from collections.abc import Callable
from typing import ClassVar

from npud.abi import ivpu
from npud.devices.accel.device import AccelDevice, InFlight
from npud.devices.accel.kernel import KernelFile, KernelHandle, pointer
from npud.devices.accel.slots import CommandSlot, CommandSlots, SlotStatistics
from npud.devices.base import BoHandle, Capabilities, CompletionStatus, EngineInfo
from npud.devices.priority import IVPU as PRIORITIES
from npud.errors import DeviceLost, InvalidArgument, NpudError
from npud.vocab import MemoryTier

# PCI device ids -> product generation (ivpu_drv.c pci_ids / ivpu_hw.h)
BOARDS = {
    0x7D1D: "meteor-lake",
    0xAD1D: "arrow-lake",
    0x643E: "lunar-lake",
    0xB03E: "panther-lake",
    0xFD3E: "wildcat-lake",
}
DEFAULT_BO_FLAGS = int(ivpu.BoFlag.MAPPABLE)


class IvpuDevice(AccelDevice):
    """An Intel NPU (``/dev/accel/accelN`` driven by ``intel_vpu``)."""

    driver = "intel_vpu"
    errno_overrides: ClassVar[dict[int, type[NpudError]]] = {errno.EBADFD: DeviceLost}

    def __init__(
        self,
        opener: Callable[[], KernelFile] | str,
        *,
        name: str = "accel0",
        loop: asyncio.AbstractEventLoop | None = None,
        kernel_depth: int = 1,
        memory_bytes: int = 0,
    ) -> None:
        super().__init__(opener, name=name, loop=loop, kernel_depth=kernel_depth)
        self._memory_bytes = memory_bytes
        self._cmdqs: dict[int, KernelHandle] = {}
        self._manage_cmdq = False
        self._slots: CommandSlots | None = None
        self.params: dict[str, int] = {}

    # -- capabilities -----------------------------------------------------------------------

    def get_param(self, param: ivpu.Param, index: int = 0) -> int:
        """``DRM_IOCTL_IVPU_GET_PARAM``. Raises InvalidArgument for a param the kernel lacks."""
        arg = ivpu.HEADER.new("struct drm_ivpu_param", param=int(param), index=index)
        self.call(ivpu.GET_PARAM, arg)
        return int(arg.value)

    def _probe(self) -> Capabilities:
        for param in (
            ivpu.Param.DEVICE_ID,
            ivpu.Param.DEVICE_REVISION,
            ivpu.Param.CORE_CLOCK_RATE,
            ivpu.Param.NUM_CONTEXTS,
            ivpu.Param.TILE_CONFIG,
        ):
            self.params[param.name.lower()] = self.get_param(param)
        self._manage_cmdq = bool(
            self.get_param(ivpu.Param.CAPABILITIES, int(ivpu.Capability.MANAGE_CMDQ))
        )
        try:  # newer kernels: non-zero with the firmware (HW) scheduler and preemption
            preempt = self.get_param(ivpu.Param.PREEMPT_BUFFER_SIZE)
        except InvalidArgument:
            preempt = 0
        self.params["preempt_buffer_size"] = preempt
        self._slots = CommandSlots(self._alloc_slot, self._gem_close_handle)
        board = BOARDS.get(self.params["device_id"], f"ivpu-{self.params['device_id']:#06x}")
        return self._accel_capabilities(
            description=self.version[2] or "Intel NPU",
            board=board,
            engines=(EngineInfo(0, "compute"),),
            native_priorities=PRIORITIES.levels,
            dram_bytes=self._memory_bytes,
            has_preemption=preempt > 0,
        )

    def slot_statistics(self) -> SlotStatistics:
        """The command slots' counters (how many per-job command BOs exist, idle, reused)."""
        if self._slots is None:
            return SlotStatistics(0, 0, 0, 0)
        return self._slots.statistics()

    # -- buffers ----------------------------------------------------------------------------

    def _create_bo(self, size: int, flags: int) -> tuple[BoHandle, int, int, int]:
        arg = ivpu.HEADER.new("struct drm_ivpu_bo_create", size=size, flags=flags)
        self.call(ivpu.BO_CREATE, arg)
        handle = BoHandle(int(arg.handle))
        info = ivpu.HEADER.new("struct drm_ivpu_bo_info", handle=handle)
        self.call(ivpu.BO_INFO, info)
        return handle, int(arg.vpu_addr), int(info.mmap_offset), int(info.size)

    def _alloc(
        self, size: int, tier: MemoryTier, flags: int
    ) -> tuple[BoHandle, int, int | None, int]:
        if flags & ~int(ivpu.DRM_IVPU_BO_FLAGS):
            raise InvalidArgument(f"{self.name}: flags {flags:#x} are not DRM_IVPU_BO_* flags")
        handle, address, offset, actual = self._create_bo(size, flags | DEFAULT_BO_FLAGS)
        return handle, address, offset, actual

    def _alloc_slot(self, size: int) -> tuple[BoHandle, mmap.mmap | memoryview]:
        handle, _address, offset, actual = self._create_bo(size, DEFAULT_BO_FLAGS)
        return handle, self.file.mmap(offset, actual)

    def _gem_close_handle(self, handle: BoHandle) -> None:
        self._gem_close(handle)

    # -- submission -------------------------------------------------------------------------

    def _cmdq(self, level: int) -> KernelHandle:
        cmdq = self._cmdqs.get(level)
        if cmdq is None:
            flags = ivpu.DRM_IVPU_CMDQ_FLAG_TURBO if PRIORITIES.turbo(level) else 0
            arg = ivpu.HEADER.new(
                "struct drm_ivpu_cmdq_create", priority=PRIORITIES.value(level), flags=flags
            )
            self.call(ivpu.CMDQ_CREATE, arg)
            cmdq = self._cmdqs[level] = KernelHandle(int(arg.cmdq_id))
        return cmdq

    def _submit(self, record: InFlight) -> None:
        sub = record.submission
        assert self._slots is not None
        data = self.read_bytes(sub.command, sub.command_offset, sub.command_size)
        slot = self._slots.take(data)
        record.cleanup.append(lambda: self._give(slot))
        handles = [slot.handle]
        for binding in sub.bindings:
            if binding.handle not in handles:
                handles.append(binding.handle)
        ffi = ivpu.HEADER.ffi
        array = ffi.new("uint32_t[]", handles)
        if self._manage_cmdq:
            arg = ivpu.HEADER.new(
                "struct drm_ivpu_cmdq_submit",
                buffers_ptr=pointer(ffi, array),
                buffer_count=len(handles),
                cmdq_id=self._cmdq(sub.priority),
                commands_offset=0,
            )
            self.call(ivpu.CMDQ_SUBMIT, arg)
        else:
            arg = ivpu.HEADER.new(
                "struct drm_ivpu_submit",
                buffers_ptr=pointer(ffi, array),
                buffer_count=len(handles),
                engine=int(ivpu.Engine.COMPUTE),
                commands_offset=0,
                priority=PRIORITIES.value(sub.priority),
            )
            self.call(ivpu.SUBMIT, arg)
        record.extra["slot"] = slot
        self._watch_fd(record, self._prime_export(slot.handle), self._on_signalled)

    def _give(self, slot: CommandSlot) -> None:
        if self._slots is not None:
            self._slots.give(slot)

    def _on_signalled(self, record: InFlight) -> None:
        slot: CommandSlot = record.extra["slot"]
        arg = ivpu.HEADER.new("struct drm_ivpu_bo_wait", handle=slot.handle, timeout_ns=0)
        self.call(ivpu.BO_WAIT, arg)
        status = int(arg.job_status)
        if status == ivpu.JobStatus.SUCCESS:
            self._finish(record, CompletionStatus.OK, None)
        elif status == ivpu.JobStatus.ABORTED:
            reason = record.aborted_reason or "the kernel aborted the job"
            self._finish(record, CompletionStatus.ABORTED, reason)
        else:
            self._finish(record, CompletionStatus.ERROR, f"NPU firmware job status {status:#x}")

    # -- recovery and shutdown --------------------------------------------------------------

    def _reset(self, engine: int, reason: str) -> None:
        """Destroy every command queue: the kernel aborts their jobs; they return on next use."""
        self._destroy_cmdqs()

    def _destroy_cmdqs(self) -> None:
        if not self._manage_cmdq:
            return
        for level, cmdq in list(self._cmdqs.items()):
            del self._cmdqs[level]
            arg = ivpu.HEADER.new("struct drm_ivpu_cmdq_destroy", cmdq_id=cmdq)
            with contextlib.suppress(NpudError):  # already gone with its context
                self.call(ivpu.CMDQ_DESTROY, arg)

    def _shutdown(self) -> None:
        if self._lost_reason is None:
            self._destroy_cmdqs()
        self._cmdqs.clear()
        if self._slots is not None:
            self._slots.close()
            self._slots = None
