"""Fake rknpu (Rockchip's vendor NPU driver, RK3588), after drivers/rknpu/rknpu_{drv,gem,job}.c
of Rockchip's BSP kernel (rockchip-linux/kernel; the SRAM paths as in armbian/linux-rockchip
a96244a8, driver 0.9.x).

Facts modelled:

- ``ACTION`` (rknpu_action): GET_HW_VERSION, GET_DRV_VERSION (``major*10000 + minor*100 +
  patch``), GET_FREQ, GET_VOLT, GET_IOMMU_EN, SET_PROC_NICE, GET_TOTAL_SRAM_SIZE and
  GET_FREE_SRAM_SIZE (chunks of the SRAM allocator), ACT_RESET (rknpu_soft_reset: every core is
  reset, waiters wake up and a job not yet done fails); anything else -> EINVAL, including
  POWER_ON/POWER_OFF, which the cited driver version does not handle in ``rknpu_action`` (it
  powers the NPU around every ioctl itself, ``RKNPU_IOCTL`` wrapper). With ``power_actions``
  the fake models the versions that do: POWER_ON takes a power reference (rknpu_power_get),
  POWER_OFF drops one if held.
- ``MEM_CREATE`` (rknpu_gem_create_ioctl, rknpu_gem_object_create): an existing ``handle``
  returns that object; size 0 -> EINVAL; the size is page-aligned; ``obj_addr`` is the kernel
  object's address and ``dma_addr`` the NPU's; with ``TRY_ALLOC_SRAM`` and SRAM present the object
  gets ``min(size, sram_size or size, free SRAM)`` of SRAM (page-rounded) and ``sram_size``
  reports it (0 when the SRAM is full: the object is then plain DDR).
- ``MEM_MAP``: unknown handle -> ENOENT (drm_gem_dumb_map_offset). ``MEM_DESTROY``: unknown
  handle -> EINVAL (rknpu_gem_object_find). Closing the last handle frees the object's SRAM.
- ``MEM_SYNC`` (rknpu_gem_sync_ioctl): an ``obj_addr`` that is no live object -> EINVAL (the real
  driver dereferences it: a kernel oops); a non-CACHEABLE object -> EINVAL; a range past the
  object -> EINVAL.
- ``SUBMIT`` (rknpu_submit, rknpu_job_alloc, rknpu_job_commit, rknpu_job_wait):
  ``task_number == 0`` -> EINVAL; ``core_mask`` beyond the SoC's cores (0x7) -> EINVAL; a task
  object that is not a live object with ``KERNEL_MAPPING`` -> EINVAL (the driver reads the tasks
  through its kernel mapping); without ``RKNPU_JOB_PC`` the commit fails -> EINVAL;
  ``FENCE_OUT`` gives a sync_file in ``fence_fd``. Blocking (no ``NONBLOCK``): the ioctl returns
  when the job is done, ``task_counter = task_number`` and ``hw_elapse_time`` set; after
  ``timeout`` ms it fails ETIMEDOUT with ``task_counter`` 0 and the driver soft-resets the NPU
  (rknpu_job_abort); a soft reset while it waits fails it EINVAL (``RKNPU_JOB_DONE`` not set).
  Each task's register commands are read at ``regcmd_addr`` (``regcfg_amount`` 64-bit words).
- per core, jobs run in order; the ``priority`` field is never read.

The stand-in firmware needs to know which buffers a job's regcmds address; the real driver has
no buffer list (the regcmds carry DMA addresses). The adapter's ``describe_bindings`` option
appends the bindings' DMA addresses and sizes after the tasks in the task object; this fake
reads them from there.
"""

from __future__ import annotations

import errno
import itertools
import struct
import time
from typing import Any

from tests.devices.fakekernel.base import (
    DIR_RW,
    FakeBo,
    FakeDevice,
    FakeFence,
    FakeFile,
    FakeJob,
    IoctlEntry,
    fail,
    fence_fd,
    layout,
    page_align,
)

ACTION = layout("II", "flags", "value")
MEM_CREATE = layout(
    "IIQQQQiI",
    "handle",
    "flags",
    "size",
    "obj_addr",
    "dma_addr",
    "sram_size",
    "iommu_domain_id",
    "core_mask",
)
MEM_MAP = layout("IIQ", "handle", "reserved", "offset")
MEM_DESTROY = layout("IIQ", "handle", "reserved", "obj_addr")
MEM_SYNC = layout("IIQQQ", "flags", "reserved", "obj_addr", "offset", "size")
SUBMIT = layout(
    "IIIIIiQIIQqIi10I",
    "flags",
    "timeout",
    "task_start",
    "task_number",
    "task_counter",
    "priority",
    "task_obj_addr",
    "iommu_domain_id",
    "reserved",
    "task_base_addr",
    "hw_elapse_time",
    "core_mask",
    "fence_fd",
    *(f"subcore{i}" for i in range(10)),
)
TASK = layout(
    "IIIIIIIIQ",
    "flags",
    "op_idx",
    "enable_mask",
    "int_mask",
    "int_clear",
    "int_status",
    "regcfg_amount",
    "regcfg_offset",
    "regcmd_addr",
)
BINDING = struct.Struct("<QQ")  # describe_bindings: (dma address, size) after the tasks

MEM_CACHEABLE, MEM_KERNEL_MAPPING, MEM_TRY_ALLOC_SRAM = 1 << 1, 1 << 3, 1 << 8
SYNC_TO_DEVICE, SYNC_FROM_DEVICE = 1, 2
JOB_PC, JOB_NONBLOCK, JOB_FENCE_OUT = 1 << 0, 1 << 1, 1 << 4
DRIVER_VERSION = (0, 9, 8)


class FakeRknpu(FakeDevice):
    """An RK3588 NPU: three cores, 956 KiB of SRAM, IOMMU on (see the module)."""

    driver_name = "rknpu"
    driver_desc = "RKNPU driver"
    driver_version = DRIVER_VERSION

    def __init__(
        self,
        *,
        auto_complete: bool = True,
        sram: int = 0xEF000,
        core_mask: int = 0x7,
        power_actions: bool = False,
    ) -> None:
        super().__init__(auto_complete=auto_complete)
        self.power_actions = power_actions
        self.power_refs = 0
        self.sram = sram
        self.core_mask = core_mask
        self.hw_version = 0x0AB20000 + 0x3588
        self.objects: dict[int, FakeBo] = {}  # obj_addr -> object
        self._obj_addrs = itertools.count(0xFFFF_FF80_1000_0000, 0x1000)
        self.resets = 0
        self.reset_gen = 0
        self.syncs: list[tuple[int, int]] = []  # (obj_addr, flags) of each MEM_SYNC
        self.submits: list[dict[str, Any]] = []

    def driver_ioctls(self) -> dict[int, IoctlEntry]:
        return {
            0x00: IoctlEntry("DRM_IOCTL_RKNPU_ACTION", DIR_RW, ACTION, _action),
            0x01: IoctlEntry("DRM_IOCTL_RKNPU_SUBMIT", DIR_RW, SUBMIT, _submit),
            0x02: IoctlEntry("DRM_IOCTL_RKNPU_MEM_CREATE", DIR_RW, MEM_CREATE, _mem_create),
            0x03: IoctlEntry("DRM_IOCTL_RKNPU_MEM_MAP", DIR_RW, MEM_MAP, _mem_map),
            0x04: IoctlEntry("DRM_IOCTL_RKNPU_MEM_DESTROY", DIR_RW, MEM_DESTROY, _mem_destroy),
            0x05: IoctlEntry("DRM_IOCTL_RKNPU_MEM_SYNC", DIR_RW, MEM_SYNC, _mem_sync),
        }

    def live(self, bo: FakeBo) -> bool:
        """Whether some open file still holds a handle to ``bo``."""
        return any(not f.closed and bo in f.bos.values() for f in self.files)

    def sram_used(self) -> int:
        """SRAM bytes held by live objects."""
        return sum(int(b.extra.get("sram", 0)) for b in self.objects.values() if self.live(b))

    def soft_reset(self) -> None:
        """rknpu_soft_reset: every core stops; waiters wake; unfinished jobs fail."""
        with self.cond:
            self.resets += 1
            self.reset_gen += 1
            self.cond.notify_all()
        for job in self.pending():
            job.failure = "soft reset"
            self.finish_raw(job, status=self.error_status())


def _rknpu(file: FakeFile) -> FakeRknpu:
    device = file.device
    assert isinstance(device, FakeRknpu)
    return device


def _action(file: FakeFile, v: dict[str, Any]) -> None:
    device = _rknpu(file)
    major, minor, patch = DRIVER_VERSION
    values = {
        0: device.hw_version,  # RKNPU_GET_HW_VERSION
        1: major * 10000 + minor * 100 + patch,  # RKNPU_GET_DRV_VERSION
        2: 1_000_000_000,  # RKNPU_GET_FREQ (clk_get_rate)
        4: 850_000,  # RKNPU_GET_VOLT (regulator_get_voltage, uV)
        18: 1,  # RKNPU_GET_IOMMU_EN
        19: v["value"],  # RKNPU_SET_PROC_NICE
        22: device.sram,  # RKNPU_GET_TOTAL_SRAM_SIZE
        23: device.sram - device.sram_used(),  # RKNPU_GET_FREE_SRAM_SIZE
    }
    if v["flags"] == 6:  # RKNPU_ACT_RESET
        device.soft_reset()
        return
    if v["flags"] in (20, 21) and device.power_actions:  # RKNPU_POWER_ON / RKNPU_POWER_OFF
        if v["flags"] == 20:
            device.power_refs += 1
        elif device.power_refs > 0:
            device.power_refs -= 1
        return
    if v["flags"] not in values:
        raise fail(errno.EINVAL)
    v["value"] = values[v["flags"]] & 0xFFFFFFFF


def _mem_create(file: FakeFile, v: dict[str, Any]) -> None:
    device = _rknpu(file)
    bo = file.bos.get(v["handle"]) if v["handle"] else None
    if bo is None:
        if v["size"] == 0:
            raise fail(errno.EINVAL)
        size = page_align(v["size"])
        bo = device.new_bo(size)
        bo.extra["flags"] = v["flags"]
        sram = 0
        if v["flags"] & MEM_TRY_ALLOC_SRAM and device.sram:
            want = page_align(v["sram_size"]) if v["sram_size"] else size
            free = device.sram - device.sram_used()
            sram = min(size, want, free) // 4096 * 4096
        bo.extra["sram"] = sram
        obj_addr = next(device._obj_addrs)
        bo.extra["obj_addr"] = obj_addr
        device.objects[obj_addr] = bo
        v["handle"] = file.add_bo(bo)
    v["size"] = bo.size
    v["sram_size"] = bo.extra["sram"]
    v["obj_addr"] = bo.extra["obj_addr"]
    v["dma_addr"] = bo.device_address


def _mem_map(file: FakeFile, v: dict[str, Any]) -> None:
    v["offset"] = file.lookup(v["handle"]).mmap_offset


def _mem_destroy(file: FakeFile, v: dict[str, Any]) -> None:
    bo = file.bos.pop(v["handle"], None)
    if bo is None:
        raise fail(errno.EINVAL)
    bo.closed = True


def _object(file: FakeFile, obj_addr: int) -> FakeBo:
    device = _rknpu(file)
    bo = device.objects.get(obj_addr)
    if bo is None or not device.live(bo):
        raise fail(errno.EINVAL)
    return bo


def _mem_sync(file: FakeFile, v: dict[str, Any]) -> None:
    bo = _object(file, v["obj_addr"])
    if not bo.extra["flags"] & MEM_CACHEABLE:
        raise fail(errno.EINVAL)
    if v["offset"] + v["size"] > bo.size or not v["flags"] & (SYNC_TO_DEVICE | SYNC_FROM_DEVICE):
        raise fail(errno.EINVAL)
    _rknpu(file).syncs.append((v["obj_addr"], v["flags"]))


def _by_address(device: FakeRknpu, address: int) -> FakeBo | None:
    for bo in device.objects.values():
        if bo.device_address <= address < bo.device_address + bo.size and device.live(bo):
            return bo
    return None


def _submit(file: FakeFile, v: dict[str, Any]) -> None:
    device = _rknpu(file)
    device.submits.append(dict(v))
    if v["task_number"] == 0:
        raise fail(errno.EINVAL)
    if v["core_mask"] > device.core_mask:
        raise fail(errno.EINVAL)
    task_obj = _object(file, v["task_obj_addr"])
    if not task_obj.extra["flags"] & MEM_KERNEL_MAPPING:
        raise fail(errno.EINVAL)
    if not v["flags"] & JOB_PC:
        raise fail(errno.EINVAL)  # rknpu_job_subcore_commit: slave mode is not supported
    end = (v["task_start"] + v["task_number"]) * TASK.size
    if end > task_obj.size:
        raise fail(errno.EINVAL)
    tasks = [
        TASK.unpack(task_obj.data[i * TASK.size : (i + 1) * TASK.size])
        for i in range(v["task_start"], v["task_start"] + v["task_number"])
    ]
    command = b""
    for task in tasks:
        owner = _by_address(device, task["regcmd_addr"])
        if owner is None:
            raise fail(errno.EINVAL)  # the NPU would fault on the address; the job never ends
        start = task["regcmd_addr"] - owner.device_address
        command += bytes(owner.data[start : start + 8 * task["regcfg_amount"]])
    bindings: list[FakeBo] = []
    offset = end
    count = struct.unpack_from("<I", task_obj.data, offset)[0] if offset + 4 <= task_obj.size else 0
    for i in range(count):
        address, _size = BINDING.unpack_from(task_obj.data, offset + 8 + i * BINDING.size)
        bo = _by_address(device, address)
        if bo is not None:
            bindings.append(bo)
    mask = v["core_mask"] or 0x1
    engine = (mask & -mask).bit_length() - 1
    fence = FakeFence(device)
    job = FakeJob(file, engine, fence, [], bindings, bindings, command=command)
    generation = device.reset_gen
    started = time.monotonic_ns()
    if v["flags"] & JOB_FENCE_OUT:
        v["fence_fd"] = fence_fd([fence])
    device.queue_job(job)
    if v["flags"] & JOB_NONBLOCK:
        return
    deadline = time.monotonic() + v["timeout"] / 1000
    with device.cond:
        done = device.cond.wait_for(
            lambda: fence.signaled or device.reset_gen != generation, v["timeout"] / 1000
        )
    if done and job.status and job.failure not in (None, "soft reset"):
        # The firmware stopped on an error: its interrupt status does not match the task's
        # int_mask, so rknpu_irq_handler ignores it and the job is never done (it times out).
        with device.cond:
            done = device.cond.wait_for(
                lambda: device.reset_gen != generation, max(0.0, deadline - time.monotonic())
            )
    if not done:
        v["task_counter"] = 0
        device.soft_reset()  # rknpu_job_abort on -ETIMEDOUT
        raise fail(errno.ETIMEDOUT)
    if device.reset_gen != generation or job.status:
        raise fail(errno.EINVAL)  # woken by a soft reset or a closed file: not RKNPU_JOB_DONE
    v["task_counter"] = v["task_number"]
    v["hw_elapse_time"] = time.monotonic_ns() - started
