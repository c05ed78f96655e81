"""The rocket adapter: the Rockchip RK3588 NPU through the mainline ``rocket`` accel driver.

What the kernel offers (``include/uapi/drm/rocket_accel.h``, ``drivers/accel/rocket``):
``CREATE_BO`` (shmem BO, its NPU DMA address and mmap offset), ``SUBMIT`` (jobs of register-
command *tasks*, each job listing the BOs it reads and writes), ``PREP_BO``/``FINI_BO`` (CPU
access brackets with cache maintenance). One drm_sched scheduler per NPU core with
``credit_limit`` 1 and a 500 ms job timeout; every file gets one scheduler entity at the fixed
``DRM_SCHED_PRIORITY_NORMAL``, load-balanced across the three cores. No priority, no context,
no job status: a job that faults is reset by the kernel's timeout handler and its fence simply
signals. So npud does all ordering itself and exposes ONE engine (the file's entity, which the
kernel runs in order on whichever core it picks).

How npud drives it:

- command buffer: the submission's command range is the register-command stream, as Mesa's
  rocket Gallium driver (Teflon) produces it; npud submits it as one task
  ``{regcmd = DMA address of the range, regcmd_count = size / 8}``. npud never builds or reads
  it.
- reads/writes: bindings with WRITE use go to ``out_bo_handles``, the rest (and the command BO)
  to ``in_bo_handles``; the kernel orders jobs on these implicit fences. A job with no written
  buffer lists its command BO as written, so every job has a write fence to wait on.
- **validation is npud's job**: the kernel ignores the result of each job's submission
  (``rocket_ioctl_submit`` discards ``rocket_ioctl_submit_job``'s return), so a bad handle, an
  empty task list or a BO listed twice silently drops the job while ``SUBMIT`` returns 0. The
  adapter checks all of these before the ioctl.
- completion without a thread: the first written BO is PRIME-exported and its dma-buf polled on
  the event loop (EPOLLIN = its write fences signalled); then ``PREP_BO`` (timeout 0) makes the
  device's writes visible to the CPU. ``FINI_BO`` on every bound BO before submit makes CPU
  writes visible to the device.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from npud.abi import rocket
from npud.devices.accel.device import AccelDevice, BoRecord, InFlight
from npud.devices.accel.kernel import KernelFile, pointer
from npud.devices.base import BoHandle, BufferUse, Capabilities, CompletionStatus, EngineInfo
from npud.devices.priority import ROCKET as PRIORITIES
from npud.errors import InvalidArgument
from npud.vocab import MemoryTier

REGCMD_BYTES = 8  # one register command is a 64-bit word
MAX_BO_SIZE = (1 << 32) - 4096  # drm_rocket_create_bo.size is a __u32


class RocketDevice(AccelDevice):
    """An RK3588 NPU (``/dev/accel/accelN`` driven by ``rocket``)."""

    driver = "rocket"

    def __init__(
        self,
        opener: Callable[[], KernelFile] | str,
        *,
        name: str = "accel0",
        loop: asyncio.AbstractEventLoop | None = None,
        kernel_depth: int = 1,
        cores: int = 3,
    ) -> None:
        super().__init__(opener, name=name, loop=loop, kernel_depth=kernel_depth)
        self._cores = cores

    def _probe(self) -> Capabilities:
        return self._accel_capabilities(
            description=self.version[2] or "Rockchip NPU (rocket)",
            board="rk3588",
            engines=(EngineInfo(0, f"rocket (kernel balances over {self._cores} cores)"),),
            native_priorities=PRIORITIES.levels,
        )

    def _alloc(
        self, size: int, tier: MemoryTier, flags: int
    ) -> tuple[BoHandle, int, int | None, int]:
        if size > MAX_BO_SIZE or flags:
            raise InvalidArgument(
                f"{self.name}: rocket BOs are at most {MAX_BO_SIZE} bytes and take no flags"
            )
        arg = rocket.HEADER.new("struct drm_rocket_create_bo", size=size)
        self.call(rocket.CREATE_BO, arg)
        aligned = (size + 4095) // 4096 * 4096
        return BoHandle(int(arg.handle)), int(arg.dma_address), int(arg.offset), aligned

    def _release(self, record: BoRecord) -> None:
        """Nothing beyond GEM_CLOSE: rocket unmaps the IOMMU range when the object dies."""

    def _submit(self, record: InFlight) -> None:
        sub = record.submission
        if sub.command_size % REGCMD_BYTES or sub.command_offset % REGCMD_BYTES:
            raise InvalidArgument(
                f"{self.name}: rocket register commands are {REGCMD_BYTES}-byte words; "
                f"command range {sub.command_offset}+{sub.command_size} is not aligned"
            )
        command = self._bos[sub.command].buffer
        regcmd = command.device_address + sub.command_offset
        if regcmd >= 1 << 32:
            raise InvalidArgument(f"{self.name}: regcmd address {regcmd:#x} above 4 GiB")
        writes: list[int] = []
        reads: list[int] = []
        for binding in sub.bindings:  # a BO may appear once only (EALREADY otherwise)
            if BufferUse.WRITE in binding.use:
                if binding.handle in reads:
                    reads.remove(binding.handle)
                if binding.handle not in writes:
                    writes.append(binding.handle)
            elif binding.handle not in writes and binding.handle not in reads:
                reads.append(binding.handle)
        if sub.command not in reads and sub.command not in writes:
            reads.insert(0, sub.command)
        if not writes:  # every job needs a write fence to wait on
            reads.remove(sub.command)
            writes.append(sub.command)
        ffi = rocket.HEADER.ffi
        for handle in reads + writes:  # CPU writes -> device (dma_sync_sgtable_for_device)
            self.call(rocket.FINI_BO, rocket.HEADER.new("struct drm_rocket_fini_bo", handle=handle))
        task = ffi.new(
            "struct drm_rocket_task *", {"regcmd": regcmd, "regcmd_count": sub.command_size // 8}
        )
        in_arr = ffi.new("uint32_t[]", reads)
        out_arr = ffi.new("uint32_t[]", writes)
        job = ffi.new(
            "struct drm_rocket_job *",
            {
                "tasks": pointer(ffi, task),
                "in_bo_handles": pointer(ffi, in_arr),
                "out_bo_handles": pointer(ffi, out_arr),
                "task_count": 1,
                "task_struct_size": ffi.sizeof("struct drm_rocket_task"),
                "in_bo_handle_count": len(reads),
                "out_bo_handle_count": len(writes),
            },
        )
        arg = rocket.HEADER.new(
            "struct drm_rocket_submit",
            jobs=pointer(ffi, job),
            job_count=1,
            job_struct_size=ffi.sizeof("struct drm_rocket_job"),
        )
        self.call(rocket.SUBMIT, arg)
        record.extra["writes"] = writes
        self._watch_fd(record, self._prime_export(writes[0]), self._on_signalled)

    def _on_signalled(self, record: InFlight) -> None:
        """The job's write fence signalled: make its writes CPU-visible, report OK."""
        for handle in record.extra["writes"]:
            if handle in self._bos:
                arg = rocket.HEADER.new("struct drm_rocket_prep_bo", handle=handle, timeout_ns=0)
                self.call(rocket.PREP_BO, arg)
        # rocket reports no job status: a job that hung was reset by the kernel's 500 ms
        # timeout and its fence signalled all the same. npud's watchdog fires earlier.
        self._finish(record, CompletionStatus.OK, None)
