"""Fake ethosu (Arm Ethos-U65/U85), after drivers/accel/ethosu/ethosu_{drv,gem,job}.c.

Facts modelled:
- ``DEV_QUERY(NPU_INFO)``: with a NULL pointer only the size is returned; otherwise
  ``min(size, sizeof)`` bytes are copied and ``size`` updated; unknown type -> EINVAL.
- ``BO_CREATE``: flags other than ``DRM_ETHOSU_BO_NO_MMAP`` or a zero size -> EINVAL; the size
  comes back page-aligned. ``BO_MMAP_OFFSET``: pad must be 0; unknown handle -> ENOENT.
- ``CMDSTREAM_BO_CREATE`` copies and validates a command stream into a kernel-owned BO: flags
  and pad must be 0, the size non-zero and whole 32-bit command words. (The real driver parses
  every NPU command and records the regions it touches; this fake checks only the framing.)
- ``SUBMIT`` (ethosu_ioctl_submit, ethosu_ioctl_submit_job): pad must be 0; per job the command
  BO must exist (ENOENT) and be a command-stream BO (EINVAL); an SRAM request beyond the NPU's
  SRAM -> EINVAL; each non-zero region handle must exist (ENOENT) and must not be a command-stream
  BO (EINVAL). Unlike rocket, the first failing job's error is returned.
- ``BO_WAIT``: pad must be 0; unknown handle -> ENOENT; a busy BO after the absolute timeout ->
  ETIMEDOUT (EBUSY for a zero timeout).
- one NPU, jobs in order (drm_sched with credit_limit 1); no priority; no job status.
"""

from __future__ import annotations

import errno
import struct
from typing import Any

from tests.devices.fakekernel.base import (
    DIR_RW,
    FakeDevice,
    FakeFence,
    FakeFile,
    FakeJob,
    IoctlEntry,
    abs_timeout_s,
    fail,
    layout,
    page_align,
    read_user,
    wait_fences,
    write_user,
)

DEV_QUERY = layout("IIQ", "type", "size", "pointer")
BO_CREATE = layout("QII", "size", "flags", "handle")
BO_WAIT = layout("IIq", "handle", "pad", "timeout_ns")
BO_MMAP_OFFSET = layout("IIQ", "handle", "pad", "offset")
CMDSTREAM_BO_CREATE = layout("IIQII", "size", "flags", "data", "handle", "pad")
SUBMIT = layout("QII", "jobs", "job_count", "pad")
JOB = layout("II8I", "cmd_bo", "sram_size", *(f"region{i}" for i in range(8)))
BO_NO_MMAP = 1


class FakeEthosu(FakeDevice):
    """An Ethos-U85 with 2 MiB of SRAM."""

    driver_name = "ethosu"
    driver_desc = "Arm Ethos-U NPU"
    driver_version = (1, 0, 0)

    def __init__(self, *, auto_complete: bool = True, sram: int = 2 << 20) -> None:
        super().__init__(auto_complete=auto_complete)
        self.sram = sram
        self.npu_id = (2 << 28) | (0 << 20) | (0 << 16) | (5 << 12)  # arch 2.0.0, product U85

    def driver_ioctls(self) -> dict[int, IoctlEntry]:
        return {
            0: IoctlEntry("DRM_IOCTL_ETHOSU_DEV_QUERY", DIR_RW, DEV_QUERY, _dev_query),
            1: IoctlEntry("DRM_IOCTL_ETHOSU_BO_CREATE", DIR_RW, BO_CREATE, _bo_create),
            2: IoctlEntry("DRM_IOCTL_ETHOSU_BO_WAIT", DIR_RW, BO_WAIT, _bo_wait),
            3: IoctlEntry("DRM_IOCTL_ETHOSU_BO_MMAP_OFFSET", DIR_RW, BO_MMAP_OFFSET, _mmap_off),
            4: IoctlEntry(
                "DRM_IOCTL_ETHOSU_CMDSTREAM_BO_CREATE",
                DIR_RW,
                CMDSTREAM_BO_CREATE,
                _cmdstream_create,
            ),
            5: IoctlEntry("DRM_IOCTL_ETHOSU_SUBMIT", DIR_RW, SUBMIT, _submit),
        }


def _dev_query(file: FakeFile, v: dict[str, Any]) -> None:
    device = file.device
    assert isinstance(device, FakeEthosu)
    if v["type"] != 0:
        raise fail(errno.EINVAL)
    info = struct.pack("<III", device.npu_id, 0, device.sram)
    if v["pointer"]:
        write_user(v["pointer"], info[: min(v["size"], len(info))])
        v["size"] = min(v["size"], len(info))
    else:
        v["size"] = len(info)


def _bo_create(file: FakeFile, v: dict[str, Any]) -> None:
    if v["flags"] & ~BO_NO_MMAP or v["size"] == 0:
        raise fail(errno.EINVAL)
    bo = file.device.new_bo(page_align(v["size"]))
    bo.extra["no_mmap"] = bool(v["flags"] & BO_NO_MMAP)
    v["handle"] = file.add_bo(bo)
    v["size"] = bo.size


def _mmap_off(file: FakeFile, v: dict[str, Any]) -> None:
    if v["pad"]:
        raise fail(errno.EINVAL)
    v["offset"] = file.lookup(v["handle"]).mmap_offset


def _cmdstream_create(file: FakeFile, v: dict[str, Any]) -> None:
    if v["flags"] or v["pad"] or v["size"] == 0 or v["size"] % 4:
        raise fail(errno.EINVAL)
    data = read_user(v["data"], v["size"])
    bo = file.device.new_bo(page_align(v["size"]), kind="cmdstream")
    bo.data[: len(data)] = data
    bo.extra.update(no_mmap=True, length=len(data))
    v["handle"] = file.add_bo(bo)


def _submit(file: FakeFile, v: dict[str, Any]) -> None:
    device = file.device
    assert isinstance(device, FakeEthosu)
    if v["pad"]:
        raise fail(errno.EINVAL)
    for i in range(v["job_count"]):
        job = JOB.unpack(read_user(v["jobs"] + i * JOB.size, JOB.size))
        cmd = file.lookup(job["cmd_bo"])
        if cmd.kind != "cmdstream" or job["sram_size"] > device.sram:
            raise fail(errno.EINVAL)
        regions = []
        for r in range(8):
            handle = job[f"region{r}"]
            if handle:
                bo = file.lookup(handle)
                if bo.kind == "cmdstream":
                    raise fail(errno.EINVAL)  # "Cmdstream BO handle %d used for region %d"
                regions.append(bo)
        fake_job = FakeJob(
            file,
            0,
            FakeFence(device),
            reads=[],
            writes=[cmd, *regions],
            bindings=regions,
            command=bytes(cmd.data[: cmd.extra["length"]]),
        )
        device.queue_job(fake_job)


def _bo_wait(file: FakeFile, v: dict[str, Any]) -> None:
    if v["pad"]:
        raise fail(errno.EINVAL)
    bo = file.lookup(v["handle"])
    fences = bo.busy_fences(include_reads=True)
    timeout = abs_timeout_s(v["timeout_ns"])
    if fences and not wait_fences(file.device, fences, timeout):
        raise fail(errno.ETIMEDOUT if timeout > 0 else errno.EBUSY)
