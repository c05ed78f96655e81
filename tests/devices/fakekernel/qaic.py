"""Fake qaic (Qualcomm Cloud AI 100), after drivers/accel/qaic/qaic_data.c.

Facts modelled:
- work runs on DMA Bridge Channels (DBCs) that belong to the user who activated a network on
  them with ``MANAGE`` (the NNC protocol, spoken by the Cloud AI SDK; this fake does not speak
  it: :meth:`FakeQaic.activate` stands in for a successful activation).
- ``CREATE_BO``: pad must be 0, size non-zero. ``MMAP_BO``: pad must be 0; unknown -> ENOENT.
- ``ATTACH_SLICE_BO`` (qaic_attach_slice_bo_ioctl): no slices, a DBC id beyond the device's, a
  direction other than 1 (to device) / 2 (from device), a size beyond the BO, a slice beyond the
  size, a doorbell length other than 0/8/16/32, or a BO already sliced -> EINVAL.
- ``EXECUTE_BO`` (__qaic_execute_bo_ioctl): no BOs or a bad DBC id -> EINVAL; a DBC the caller
  did not activate -> EPERM; unknown BO -> ENOENT; a BO not sliced, sliced for another DBC or
  direction, or still queued from an earlier request -> EINVAL.
- ``WAIT_BO`` (qaic_wait_bo_ioctl): pad non-zero or bad DBC id -> EINVAL; foreign DBC -> EPERM;
  unknown BO -> ENOENT; BO not sliced or sliced for another DBC -> EINVAL; ``timeout`` in ms,
  0 meaning the driver default (5000 ms); ETIMEDOUT after it.
- requests run in order per DBC; no priority in the UAPI; no job status beyond completion.

``command_from_first_input``: for the device contract suite only, the stand-in firmware takes
the first BO of a request as the npud command stream and the rest as its bindings.
"""

from __future__ import annotations

import errno
import struct
from typing import Any

from tests.devices.fakekernel.base import (
    DIR_RW,
    DIR_WRITE,
    FakeDevice,
    FakeFence,
    FakeFile,
    FakeJob,
    IoctlEntry,
    fail,
    layout,
    page_align,
    read_user,
    wait_fences,
)

CREATE_BO = layout("QII", "size", "handle", "pad")
MMAP_BO = layout("IIQ", "handle", "pad", "offset")
ATTACH = layout("IIIIQQ", "count", "dbc_id", "handle", "dir", "size", "data")
SLICE = layout(
    "Q8s8s8s8sQQIIQ",
    "size",
    "sem0",
    "sem1",
    "sem2",
    "sem3",
    "dev_addr",
    "db_addr",
    "db_data",
    "db_len",
    "offset",
)
EXECUTE = layout("IIQ", "count", "dbc_id", "data")
WAIT = layout("IIII", "handle", "timeout", "dbc_id", "pad")
DETACH = layout("II", "handle", "pad")
MANAGE = layout("IIQ", "len", "count", "data")
DEFAULT_WAIT_MS = 5000


class FakeQaic(FakeDevice):
    """A Cloud AI 100 with ``num_dbc`` DMA bridge channels."""

    driver_name = "qaic"
    driver_desc = "Qualcomm Cloud AI 100"
    driver_version = (1, 0, 0)

    def __init__(
        self,
        *,
        auto_complete: bool = True,
        num_dbc: int = 16,
        command_from_first_input: bool = True,
    ) -> None:
        super().__init__(auto_complete=auto_complete)
        self.num_dbc = num_dbc
        self.dbc_owner: dict[int, FakeFile] = {}
        self.command_from_first_input = command_from_first_input

    def driver_ioctls(self) -> dict[int, IoctlEntry]:
        return {
            0: IoctlEntry("DRM_IOCTL_QAIC_MANAGE", DIR_RW, MANAGE, _manage),
            1: IoctlEntry("DRM_IOCTL_QAIC_CREATE_BO", DIR_RW, CREATE_BO, _create_bo),
            2: IoctlEntry("DRM_IOCTL_QAIC_MMAP_BO", DIR_RW, MMAP_BO, _mmap_bo),
            3: IoctlEntry("DRM_IOCTL_QAIC_ATTACH_SLICE_BO", DIR_WRITE, ATTACH, _attach),
            4: IoctlEntry("DRM_IOCTL_QAIC_EXECUTE_BO", DIR_WRITE, EXECUTE, _execute),
            6: IoctlEntry("DRM_IOCTL_QAIC_WAIT_BO", DIR_WRITE, WAIT, _wait),
            8: IoctlEntry("DRM_IOCTL_QAIC_DETACH_SLICE_BO", DIR_WRITE, DETACH, _detach),
        }

    def activate(self, file: Any, count: int = 1) -> list[int]:
        """Stand-in for an SDK activation over MANAGE: give ``file`` ``count`` free DBCs."""
        free = [d for d in range(self.num_dbc) if d not in self.dbc_owner][:count]
        for dbc in free:
            self.dbc_owner[dbc] = file
        return free

    def on_close(self, file: FakeFile) -> None:
        for dbc, owner in list(self.dbc_owner.items()):
            if owner is file:
                del self.dbc_owner[dbc]
        for job in self.pending():
            if job.file is file:
                self.finish_raw(job)


def _manage(file: FakeFile, v: dict[str, Any]) -> None:
    raise fail(errno.EINVAL)  # the fake does not speak the NNC protocol; see activate()


def _create_bo(file: FakeFile, v: dict[str, Any]) -> None:
    if v["pad"] or v["size"] == 0:
        raise fail(errno.EINVAL)
    v["handle"] = file.add_bo(file.device.new_bo(page_align(v["size"])))


def _mmap_bo(file: FakeFile, v: dict[str, Any]) -> None:
    if v["pad"]:
        raise fail(errno.EINVAL)
    v["offset"] = file.lookup(v["handle"]).mmap_offset


def _attach(file: FakeFile, v: dict[str, Any]) -> None:
    device = file.device
    assert isinstance(device, FakeQaic)
    if v["count"] == 0 or v["dbc_id"] >= device.num_dbc or v["dir"] not in (1, 2):
        raise fail(errno.EINVAL)
    bo = file.lookup(v["handle"])
    if v["size"] == 0 or v["size"] > bo.size or "slicing" in bo.extra:
        raise fail(errno.EINVAL)
    for i in range(v["count"]):
        entry = SLICE.unpack(read_user(v["data"] + i * SLICE.size, SLICE.size))
        if entry["offset"] + entry["size"] > v["size"] or entry["db_len"] not in (0, 8, 16, 32):
            raise fail(errno.EINVAL)
    bo.extra["slicing"] = (v["dbc_id"], v["dir"])


def _detach(file: FakeFile, v: dict[str, Any]) -> None:
    if v["pad"]:
        raise fail(errno.EINVAL)
    bo = file.lookup(v["handle"])
    if "slicing" not in bo.extra or bo.busy_fences(include_reads=True):
        raise fail(errno.EINVAL)
    del bo.extra["slicing"]


def _own_dbc(file: FakeFile, dbc_id: int) -> None:
    device = file.device
    assert isinstance(device, FakeQaic)
    if dbc_id >= device.num_dbc:
        raise fail(errno.EINVAL)
    if device.dbc_owner.get(dbc_id) is not file:
        raise fail(errno.EPERM)


def _execute(file: FakeFile, v: dict[str, Any]) -> None:
    device = file.device
    assert isinstance(device, FakeQaic)
    if v["count"] == 0:
        raise fail(errno.EINVAL)
    _own_dbc(file, v["dbc_id"])
    entries = [struct.unpack("<II", read_user(v["data"] + 8 * i, 8)) for i in range(v["count"])]
    bos = []
    for handle, direction in entries:
        bo = file.lookup(handle)
        if bo.extra.get("slicing") != (v["dbc_id"], direction):
            raise fail(errno.EINVAL)
        if bo.busy_fences(include_reads=True):
            raise fail(errno.EINVAL)  # still queued from an earlier request
        bos.append(bo)
    command = None
    bindings = bos
    if device.command_from_first_input:
        command, bindings = bytes(bos[0].data), bos[1:]
    job = FakeJob(
        file,
        v["dbc_id"],
        FakeFence(device),
        reads=[],
        writes=bos,
        bindings=bindings,
        command=command,
        queue=v["dbc_id"],
    )
    device.queue_job(job)


def _wait(file: FakeFile, v: dict[str, Any]) -> None:
    if v["pad"]:
        raise fail(errno.EINVAL)
    _own_dbc(file, v["dbc_id"])
    bo = file.lookup(v["handle"])
    if bo.extra.get("slicing", (None,))[0] != v["dbc_id"]:
        raise fail(errno.EINVAL)
    timeout_ms = v["timeout"] or DEFAULT_WAIT_MS
    fences = bo.busy_fences(include_reads=True)
    if fences and not wait_fences(file.device, fences, timeout_ms / 1000):
        raise fail(errno.ETIMEDOUT)
