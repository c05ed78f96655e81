"""Fake ivpu (Intel NPU), after drivers/accel/ivpu/ivpu_{drv,gem,job}.c.

Facts modelled:
- ``GET_PARAM``: unknown param -> EINVAL (ivpu_get_param_ioctl); ``CAPABILITIES`` takes the
  capability id in ``index``.
- ``BO_CREATE``: flags outside ``DRM_IVPU_BO_FLAGS`` or a zero (page-aligned) size -> EINVAL
  (ivpu_bo_create_ioctl). ``BO_INFO``: unknown handle -> ENOENT.
- ``BO_WAIT``: unknown handle -> **EINVAL** (not ENOENT: ivpu_bo_wait_ioctl); waits with
  DMA_RESV_USAGE_READ until an absolute timeout, then ETIMEDOUT; returns ``job_status`` of a
  command buffer.
- ``CMDQ_CREATE``/``DESTROY``/``SUBMIT`` need ``DRM_IVPU_CAP_MANAGE_CMDQ`` (ENODEV otherwise);
  priority above REALTIME -> EINVAL; destroying an unknown queue -> ENOENT and aborts the queue's
  jobs with ``DRM_IVPU_JOB_STATUS_ABORTED`` (ivpu_cmdq_destroy_ioctl).
- ``CMDQ_SUBMIT`` (ivpu_cmdq_submit_ioctl, ivpu_submit, ivpu_job_prepare_bos_for_submit):
  cmdq id outside 1..255, no buffers or more than 65535, ``preempt_buffer_index`` not below
  ``buffer_count``, or a commands offset not 8-byte aligned -> EINVAL; a context that took an MMU
  fault -> **EBADFD**; unknown BO -> ENOENT; a command buffer still in use by an earlier job ->
  EBUSY; offset beyond the command buffer -> EINVAL; unknown queue -> EINVAL. The job's fence is
  added to the command buffer as a WRITE fence and to the other BOs as BOOKKEEP.
- An MMU fault marks the file faulty: its in-flight jobs complete ABORTED
  (ivpu_job_signal_and_destroy) and every later submit fails EBADFD.
"""

from __future__ import annotations

import errno
import itertools
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
    wait_fences,
)

PARAM = layout("IIQ", "param", "index", "value")
BO_CREATE = layout("QIIQ", "size", "flags", "handle", "vpu_addr")
BO_INFO = layout("IIQQQ", "handle", "flags", "vpu_addr", "mmap_offset", "size")
BO_WAIT = layout("IIqII", "handle", "flags", "timeout_ns", "job_status", "pad")
CMDQ_CREATE = layout("III", "cmdq_id", "priority", "flags")
CMDQ_DESTROY = layout("I", "cmdq_id")
CMDQ_SUBMIT = layout(
    "QIIIIII",
    "buffers_ptr",
    "buffer_count",
    "cmdq_id",
    "flags",
    "commands_offset",
    "preempt_buffer_index",
    "reserved",
)

BO_FLAGS = 0x1 | 0x2 | 0x4 | 0x8 | 0x30000
BO_MAPPABLE = 0x2
JOB_PRIORITY_REALTIME = 4
CMDQ_FLAG_TURBO = 0x1
JOB_STATUS_ABORTED = 256
CAP_MANAGE_CMDQ = 3
JOB_MAX_BUFFER_COUNT = 65535


class FakeIvpu(FakeDevice):
    """A Lunar Lake NPU (40xx) with firmware that completes jobs when told."""

    driver_name = "intel_vpu"
    driver_desc = "Intel NPU (VPU)"
    driver_version = (1, 0, 0)

    def __init__(self, *, auto_complete: bool = True, manage_cmdq: bool = True) -> None:
        super().__init__(auto_complete=auto_complete)
        self.params = {
            0: 0x643E,  # DEVICE_ID: Lunar Lake
            1: 4,
            2: 0,  # PLATFORM_TYPE_SILICON
            3: 1_950_000_000,
            4: 64,  # NUM_CONTEXTS
            5: 0x8000_0000,
            8: 0x0003_0000,
            10: 0,
            11: 6,  # TILE_CONFIG
            12: 0,
            14: 0x10000,  # PREEMPT_BUFFER_SIZE: HW scheduling with preemption
        }
        self.capabilities = {1: 1, 2: 1, CAP_MANAGE_CMDQ: int(manage_cmdq), 4: 1}
        self._ctx_ids = itertools.count(1)

    def driver_ioctls(self) -> dict[int, IoctlEntry]:
        return {
            0x00: IoctlEntry("DRM_IOCTL_IVPU_GET_PARAM", DIR_RW, PARAM, _get_param),
            0x02: IoctlEntry("DRM_IOCTL_IVPU_BO_CREATE", DIR_RW, BO_CREATE, _bo_create),
            0x03: IoctlEntry("DRM_IOCTL_IVPU_BO_INFO", DIR_RW, BO_INFO, _bo_info),
            0x06: IoctlEntry("DRM_IOCTL_IVPU_BO_WAIT", DIR_RW, BO_WAIT, _bo_wait),
            0x0B: IoctlEntry("DRM_IOCTL_IVPU_CMDQ_CREATE", DIR_RW, CMDQ_CREATE, _cmdq_create),
            0x0C: IoctlEntry("DRM_IOCTL_IVPU_CMDQ_DESTROY", DIR_WRITE, CMDQ_DESTROY, _cmdq_destroy),
            0x0D: IoctlEntry("DRM_IOCTL_IVPU_CMDQ_SUBMIT", DIR_WRITE, CMDQ_SUBMIT, _cmdq_submit),
        }

    def on_open(self, file: FakeFile) -> None:
        file.state.update(ctx_id=next(self._ctx_ids), cmdqs={}, next_cmdq=1, has_mmu_faults=False)

    def on_close(self, file: FakeFile) -> None:
        for job in self.pending():
            if job.file is file:
                self.finish(job, status=JOB_STATUS_ABORTED)

    def error_status(self) -> int:
        return 0x1001  # a device-specific firmware error code

    def on_finish(self, job: FakeJob) -> None:
        status = job.status
        if job.file.state["has_mmu_faults"]:
            status = JOB_STATUS_ABORTED  # ivpu_job_signal_and_destroy
        job.writes[0].extra["job_status"] = status  # the command buffer's job_status

    def mmu_fault(self, file: FakeFile) -> None:
        """The NPU's MMU faulted in ``file``'s context: abort its jobs, refuse new ones."""
        file.state["has_mmu_faults"] = True
        for job in self.pending():
            if job.file is file:
                self.finish(job, status=JOB_STATUS_ABORTED)


def _get_param(file: FakeFile, v: dict[str, Any]) -> None:
    device = file.device
    assert isinstance(device, FakeIvpu)
    if v["param"] == 7:  # CONTEXT_ID
        v["value"] = file.state["ctx_id"]
    elif v["param"] == 13:  # CAPABILITIES, id in index
        v["value"] = device.capabilities.get(v["index"], 0)
    elif v["param"] == 9:  # ENGINE_HEARTBEAT
        v["value"] = len(device.jobs)
    elif v["param"] in device.params:
        v["value"] = device.params[v["param"]]
    else:
        raise fail(errno.EINVAL)


def _bo_create(file: FakeFile, v: dict[str, Any]) -> None:
    if v["flags"] & ~BO_FLAGS:
        raise fail(errno.EINVAL)
    size = page_align(v["size"])
    if size == 0:
        raise fail(errno.EINVAL)
    bo = file.device.new_bo(size)
    bo.extra["flags"] = v["flags"]
    bo.extra["no_mmap"] = not v["flags"] & BO_MAPPABLE
    v["handle"] = file.add_bo(bo)
    v["vpu_addr"] = bo.device_address


def _bo_info(file: FakeFile, v: dict[str, Any]) -> None:
    bo = file.lookup(v["handle"])
    v.update(
        flags=bo.extra.get("flags", 0),
        vpu_addr=bo.device_address,
        mmap_offset=bo.mmap_offset,
        size=bo.size,
    )


def _bo_wait(file: FakeFile, v: dict[str, Any]) -> None:
    bo = file.lookup(v["handle"], missing=errno.EINVAL)
    fences = bo.busy_fences(include_reads=True)
    if fences and not wait_fences(file.device, fences, abs_timeout_s(v["timeout_ns"])):
        raise fail(errno.ETIMEDOUT)
    v["job_status"] = bo.extra.get("job_status", 0)


def _need_cmdq_cap(file: FakeFile) -> None:
    device = file.device
    assert isinstance(device, FakeIvpu)
    if not device.capabilities[CAP_MANAGE_CMDQ]:
        raise fail(errno.ENODEV)


def _cmdq_create(file: FakeFile, v: dict[str, Any]) -> None:
    _need_cmdq_cap(file)
    if v["priority"] > JOB_PRIORITY_REALTIME or v["flags"] & ~CMDQ_FLAG_TURBO:
        raise fail(errno.EINVAL)
    cmdq_id = file.state["next_cmdq"]
    if cmdq_id > 255:
        raise fail(errno.ENOMEM)
    file.state["next_cmdq"] += 1
    file.state["cmdqs"][cmdq_id] = {"priority": v["priority"], "flags": v["flags"]}
    v["cmdq_id"] = cmdq_id


def _cmdq_destroy(file: FakeFile, v: dict[str, Any]) -> None:
    _need_cmdq_cap(file)
    if file.state["cmdqs"].pop(v["cmdq_id"], None) is None:
        raise fail(errno.ENOENT)
    for job in file.device.pending():  # ivpu_cmdq_abort_all_jobs
        if job.file is file and job.queue == v["cmdq_id"]:
            file.device.finish(job, status=JOB_STATUS_ABORTED)


def _cmdq_submit(file: FakeFile, v: dict[str, Any]) -> None:
    _need_cmdq_cap(file)
    if not 1 <= v["cmdq_id"] <= 255:
        raise fail(errno.EINVAL)
    if v["buffer_count"] == 0 or v["buffer_count"] > JOB_MAX_BUFFER_COUNT:
        raise fail(errno.EINVAL)
    if v["preempt_buffer_index"] >= v["buffer_count"] or v["commands_offset"] % 8:
        raise fail(errno.EINVAL)
    if file.state["has_mmu_faults"]:
        raise fail(errno.EBADFD)
    bos = [file.lookup(h) for h in read_u32s(v["buffers_ptr"], v["buffer_count"])]
    cmd = bos[0]
    if cmd.busy_fences(include_reads=True):
        raise fail(errno.EBUSY)  # "Buffer is already in use"
    if v["commands_offset"] >= cmd.size:
        raise fail(errno.EINVAL)
    queue = file.state["cmdqs"].get(v["cmdq_id"])
    if queue is None:
        raise fail(errno.EINVAL)  # "Failed to get job queue"
    device = file.device
    # The stand-in firmware sees the buffers after the command buffer, in submission order.
    job = FakeJob(
        file,
        0,
        FakeFence(device),
        reads=[],
        writes=[cmd],
        bindings=bos[1:],
        command=bytes(cmd.data[v["commands_offset"] :]),
        priority=queue["priority"],
        queue=v["cmdq_id"],
    )
    device.queue_job(job)
