"""The ethosu adapter: Arm Ethos-U65/U85 NPUs through the mainline ``ethosu`` accel driver.

What the kernel offers (``include/uapi/drm/ethosu_accel.h``, ``drivers/accel/ethosu``):
``DEV_QUERY`` (NPU id, config, SRAM size), BOs (``BO_CREATE``, ``BO_MMAP_OFFSET``), command
streams copied into kernel-owned BOs that the driver validates (``CMDSTREAM_BO_CREATE``: it parses
every NPU command and records which regions and how much of each it touches), ``SUBMIT`` of jobs
``{cmd_bo, sram_size, region_bo_handles[8]}``, and ``BO_WAIT``. One NPU, a drm_sched scheduler
with ``credit_limit`` 1, a job timeout whose handler extends the deadline while the NPU's queue
pointer moves and power-cycles it otherwise. No priority, no job status.

How npud drives it:

- the command range is an Ethos-U command stream (as Vela or Mesa's ethosu Gallium driver emit
  it; opaque to npud); each job gets its own command-stream BO (created from the range, closed
  when the job completes), because the kernel validates a stream against the regions at
  creation and owns the copy.
- bindings map to regions 0..7 in order (more than eight is refused); every job may use all of
  the NPU's SRAM (``sram_size``): jobs run one at a time anyway.
- completion: ``BO_WAIT`` on the job's command-stream BO is a blocking ioctl, so the device has
  ONE waiter thread (:class:`~npud.devices.accel.waiter.WaiterThread`) that waits in submission
  order (exact: the NPU runs jobs in order) and hands completions to the loop. The UAPI has no job
  status, so a completed job is OK; a hang is npud's watchdog's to catch (the kernel's timeout
  power-cycles the NPU and signals the fence).
"""

from __future__ import annotations

import asyncio
import errno
from collections.abc import Callable
from typing import Any

from npud.abi import ethosu
from npud.devices.accel.device import InFlight
from npud.devices.accel.kernel import KernelFile, absolute_timeout_ns, pointer
from npud.devices.accel.waiter import BlockingWaitDevice
from npud.devices.base import BoHandle, Capabilities, EngineInfo
from npud.devices.priority import ETHOSU as PRIORITIES
from npud.errors import DeviceLost, InvalidArgument
from npud.vocab import MemoryTier

# How long one BO_WAIT blocks before the waiter checks for shutdown. Closing the device joins the
# waiter thread on the event loop, so this bounds how long a close (e.g. a hot-unplug) can hold
# the loop: 50 ms costs 20 cheap ioctls a second per waiting job and keeps other devices'
# completions flowing (0.5 s stalled them long enough to trip time-slice admission).
WAIT_SLICE_S = 0.05
PRODUCTS = {5: "ethos-u85", 1: "ethos-u65", 0: "ethos-u55"}


class EthosuDevice(BlockingWaitDevice):
    """An Arm Ethos-U NPU (``/dev/accel/accelN`` driven by ``ethosu``)."""

    driver = "ethosu"
    wait_ioctl = ethosu.BO_WAIT

    def __init__(
        self,
        opener: Callable[[], KernelFile] | str,
        *,
        name: str = "accel0",
        loop: asyncio.AbstractEventLoop | None = None,
        kernel_depth: int = 1,
    ) -> None:
        super().__init__(opener, name=name, loop=loop, kernel_depth=kernel_depth)
        self.npu_info: dict[str, int] = {}

    def _probe(self) -> Capabilities:
        ffi = ethosu.HEADER.ffi
        info: Any = ffi.new("struct drm_ethosu_npu_info *")
        size = ffi.sizeof("struct drm_ethosu_npu_info")
        arg = ethosu.HEADER.new(
            "struct drm_ethosu_dev_query",
            type=int(ethosu.DevQueryType.NPU_INFO),
            size=size,
            pointer=pointer(ffi, info),
        )
        self.call(ethosu.DEV_QUERY, arg)
        self.npu_info = {
            "id": int(info.id),
            "config": int(info.config),
            "sram_size": int(info.sram_size),
        }
        product = PRODUCTS.get((int(info.id) >> 12) & 0xF, "ethos-u")
        self._start_waiter()
        return self._accel_capabilities(
            description=(
                f"{self.version[2] or 'Arm Ethos-U'} ({self.npu_info['sram_size']} B SRAM "
                "used per job by the kernel, not allocatable)"
            ),
            board=product,
            engines=(EngineInfo(0, "npu"),),
            native_priorities=PRIORITIES.levels,
        )

    def _alloc(
        self, size: int, tier: MemoryTier, flags: int
    ) -> tuple[BoHandle, int, int | None, int]:
        if flags & ~int(ethosu.BoFlag.NO_MMAP):
            raise InvalidArgument(f"{self.name}: flags {flags:#x} are not DRM_ETHOSU_BO_* flags")
        arg = ethosu.HEADER.new("struct drm_ethosu_bo_create", size=size, flags=flags)
        self.call(ethosu.BO_CREATE, arg)
        handle = BoHandle(int(arg.handle))
        if flags & int(ethosu.BoFlag.NO_MMAP):
            return handle, 0, None, int(arg.size)
        off = ethosu.HEADER.new("struct drm_ethosu_bo_mmap_offset", handle=handle)
        self.call(ethosu.BO_MMAP_OFFSET, off)
        return handle, 0, int(off.offset), int(arg.size)

    def _submit(self, record: InFlight) -> None:
        sub = record.submission
        regions: list[int] = []
        for binding in sub.bindings:
            if binding.handle not in regions:
                regions.append(binding.handle)
        if len(regions) > ethosu.ETHOSU_MAX_REGIONS:
            raise InvalidArgument(
                f"{self.name}: an Ethos-U job addresses at most {ethosu.ETHOSU_MAX_REGIONS} "
                f"regions, this one binds {len(regions)} buffers"
            )
        if sub.command_size % 4:
            raise InvalidArgument(f"{self.name}: Ethos-U commands are 32-bit words")
        ffi = ethosu.HEADER.ffi
        data = ffi.new(
            "uint8_t[]", self.read_bytes(sub.command, sub.command_offset, sub.command_size)
        )
        stream = ethosu.HEADER.new(
            "struct drm_ethosu_cmdstream_bo_create",
            size=sub.command_size,
            data=pointer(ffi, data),
        )
        self.call(ethosu.CMDSTREAM_BO_CREATE, stream)
        cmd_bo = int(stream.handle)
        record.cleanup.append(lambda: self._gem_close(cmd_bo))
        job = ffi.new(
            "struct drm_ethosu_job *",
            {
                "cmd_bo": cmd_bo,
                "sram_size": self.npu_info["sram_size"],
                "region_bo_handles": regions + [0] * (ethosu.ETHOSU_MAX_REGIONS - len(regions)),
            },
        )
        arg = ethosu.HEADER.new("struct drm_ethosu_submit", jobs=pointer(ffi, job), job_count=1)
        self.call(ethosu.SUBMIT, arg)
        token = record.token
        self._wait_in_thread(record, lambda: self._wait_bo(cmd_bo, token))

    def _wait_bo(self, handle: int, token: Any) -> object:
        """On the waiter thread: block in BO_WAIT until the job is done or npud gives up."""
        while self._still_waiting(token):
            arg = ethosu.HEADER.new(
                "struct drm_ethosu_bo_wait",
                handle=handle,
                timeout_ns=absolute_timeout_ns(WAIT_SLICE_S),
            )
            try:
                self.file.ioctl(ethosu.BO_WAIT, arg)
                return None
            except OSError as exc:
                if exc.errno not in (errno.ETIMEDOUT, errno.EBUSY):  # else: not done yet
                    return exc
            except DeviceLost as exc:
                return exc
        return None
