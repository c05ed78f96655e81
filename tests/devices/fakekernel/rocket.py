"""Fake rocket (Rockchip RK3588 NPU), after drivers/accel/rocket/rocket_{drv,gem,job}.c.

Facts modelled:
- ``CREATE_BO`` returns handle, NPU DMA address and mmap offset at once (rocket_ioctl_create_bo).
- ``SUBMIT``: ``job_count == 0`` succeeds doing nothing; ``job_struct_size`` below the kernel's
  struct or a non-zero ``reserved`` is ``EINVAL`` (rocket_ioctl_submit). Each job is then
  submitted with ``rocket_ioctl_submit_job`` **whose return value is ignored**: a job with no
  tasks, a bad task struct size or an unknown BO handle is silently dropped while the ioctl
  returns 0. A BO listed twice fails ``drm_gem_lock_reservations`` (-EALREADY), also dropped.
- ``PREP_BO`` waits for the BO's write fences until an absolute timeout: ``EBUSY`` for a zero
  timeout on a busy BO, ``ETIMEDOUT`` after a real one; reserved must be 0; unknown -> ENOENT.
- ``FINI_BO``: reserved must be 0; unknown -> ENOENT.
- No priority, no context: jobs of one file run in order on the cores the kernel picks.
"""

from __future__ import annotations

import errno
from typing import Any

from tests.devices.fakekernel.base import (
    DIR_RW,
    DIR_WRITE,
    FakeDevice,
    FakeFence,
    FakeFile,
    FakeJob,
    IoctlEntry,
    abs_timeout_s,
    fail,
    layout,
    page_align,
    read_u32s,
    read_user,
    wait_fences,
)

CREATE_BO = layout("IIQQ", "size", "handle", "dma_address", "offset")
SUBMIT = layout("QIIQ", "jobs", "job_count", "job_struct_size", "reserved")
PREP_BO = layout("IIq", "handle", "reserved", "timeout_ns")
FINI_BO = layout("II", "handle", "reserved")
JOB = layout(
    "QQQIIII",
    "tasks",
    "in_bo_handles",
    "out_bo_handles",
    "task_count",
    "task_struct_size",
    "in_bo_handle_count",
    "out_bo_handle_count",
)
TASK = layout("II", "regcmd", "regcmd_count")


class FakeRocket(FakeDevice):
    """An RK3588 NPU with three cores behind one scheduler entity per file."""

    driver_name = "rocket"
    driver_desc = "rocket DRM"
    driver_version = (0, 0, 0)

    def __init__(self, *, auto_complete: bool = True) -> None:
        super().__init__(auto_complete=auto_complete)
        self.dropped: list[str] = []  # why each silently dropped job was dropped

    def driver_ioctls(self) -> dict[int, IoctlEntry]:
        return {
            0x00: IoctlEntry("DRM_IOCTL_ROCKET_CREATE_BO", DIR_RW, CREATE_BO, _create_bo),
            0x01: IoctlEntry("DRM_IOCTL_ROCKET_SUBMIT", DIR_WRITE, SUBMIT, _submit),
            0x02: IoctlEntry("DRM_IOCTL_ROCKET_PREP_BO", DIR_WRITE, PREP_BO, _prep_bo),
            0x03: IoctlEntry("DRM_IOCTL_ROCKET_FINI_BO", DIR_WRITE, FINI_BO, _fini_bo),
        }


def _create_bo(file: FakeFile, v: dict[str, Any]) -> None:
    if v["size"] == 0:
        raise fail(errno.EINVAL)  # drm_gem_shmem_create refuses an empty object
    bo = file.device.new_bo(page_align(v["size"]))
    v["handle"] = file.add_bo(bo)
    v["dma_address"] = bo.device_address
    v["offset"] = bo.mmap_offset


def _submit(file: FakeFile, v: dict[str, Any]) -> None:
    if v["job_count"] == 0:
        return
    if v["job_struct_size"] < JOB.size or v["reserved"] != 0:
        raise fail(errno.EINVAL)
    jobs = [
        JOB.unpack(read_user(v["jobs"] + i * v["job_struct_size"], JOB.size))
        for i in range(v["job_count"])
    ]
    device = file.device
    assert isinstance(device, FakeRocket)
    for job in jobs:  # rocket_ioctl_submit_job's result is discarded by the kernel
        reason = _submit_job(file, device, job)
        if reason is not None:
            device.dropped.append(reason)


def _submit_job(file: FakeFile, device: FakeRocket, job: dict[str, Any]) -> str | None:
    if job["task_count"] == 0:
        return "no tasks (EINVAL)"
    if job["task_struct_size"] < TASK.size:
        return "task struct too small (EINVAL)"
    tasks = [
        TASK.unpack(read_user(job["tasks"] + i * job["task_struct_size"], TASK.size))
        for i in range(job["task_count"])
    ]
    in_handles = read_u32s(job["in_bo_handles"], job["in_bo_handle_count"])
    out_handles = read_u32s(job["out_bo_handles"], job["out_bo_handle_count"])
    try:
        reads = [file.lookup(h) for h in in_handles]
        writes = [file.lookup(h) for h in out_handles]
    except OSError:
        return "unknown BO handle (ENOENT)"
    all_handles = in_handles + out_handles
    if len(set(all_handles)) != len(all_handles):
        return "BO listed twice (drm_gem_lock_reservations: EALREADY)"
    command = b""
    owners = []
    for task in tasks:
        owner = next(
            (
                b
                for b in reads + writes
                if b.device_address <= task["regcmd"] < b.device_address + b.size
            ),
            None,
        )
        if owner is None:
            return "regcmd address outside every BO of the job"
        owners.append(owner)
        start = task["regcmd"] - owner.device_address
        command += bytes(owner.data[start : start + 8 * task["regcmd_count"]])
    # The stand-in firmware sees the job's BOs other than the register-command BO, inputs
    # first, in the order the job lists them.
    data = [b for b in reads + writes if b not in owners]
    device.queue_job(FakeJob(file, 0, FakeFence(device), reads, writes, data, command=command))
    return None


def _prep_bo(file: FakeFile, v: dict[str, Any]) -> None:
    if v["reserved"] != 0:
        raise fail(errno.EINVAL)
    bo = file.lookup(v["handle"])
    fences = bo.busy_fences(include_reads=False)
    timeout = abs_timeout_s(v["timeout_ns"])
    if fences and not wait_fences(file.device, fences, timeout):
        raise fail(errno.ETIMEDOUT if timeout > 0 else errno.EBUSY)
    bo.extra["cpu_prepared"] = True


def _fini_bo(file: FakeFile, v: dict[str, Any]) -> None:
    if v["reserved"] != 0:
        raise fail(errno.EINVAL)
    bo = file.lookup(v["handle"])
    bo.extra["cpu_prepared"] = False
