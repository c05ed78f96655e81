"""Fake amdxdna (AMD XDNA NPU), after drivers/accel/amdxdna/{amdxdna_ctx,amdxdna_gem,aie2_*}.c.

Facts modelled:
- ``CREATE_HWCTX`` (amdxdna_drm_create_hwctx_ioctl): non-zero ``ext``/``ext_flags`` -> EINVAL;
  the QoS struct is copied from ``qos_p`` (EFAULT for NULL); the client must own a device heap
  BO first (aie2_hwctx_init: ENOENT otherwise); past the device's hardware-context limit
  (``hwctx_limit``: 6 on npu1, 16 on npu4+) the column solver finds no partition and creation
  fails (get_free_partition in aie2_solver.c: -ENODEV). The limit is device-wide, across files.
  Returns a handle and a timeline syncobj that carries one point per command.
- a new context is not READY until ``CONFIG_HWCTX(CONFIG_CU)`` loads its compute units;
  ``EXEC_CMD`` on it fails EINVAL ("HW Context is not ready", amdxdna_cmd_submit).
- ``DESTROY_HWCTX``: non-zero pad or unknown handle -> EINVAL; queued commands end ABORT.
- ``CREATE_BO`` types SHARE, DEV_HEAP (one per client), DEV (carved from the heap), CMD; flags
  must be 0; anything else EINVAL. ``GET_BO_INFO``: ext must be 0; unknown handle -> ENOENT.
- ``EXEC_CMD`` (amdxdna_drm_submit_execbuf): type other than EXEC_BUF, ``cmd_count != 1``, no
  argument BOs or more than 4095 -> EINVAL; a command handle that is not a CMD BO -> EINVAL;
  unknown argument BO -> ENOENT; unknown hwctx -> EINVAL. Returns the command's sequence number.
- completion: the command BO's header state (bits 3:0) becomes ERT_CMD_STATE_COMPLETED (4),
  ERROR (5), ABORT (6) or TIMEOUT (8), and the hwctx syncobj point ``seq`` signals.
- ``GET_INFO`` (aie2_get_info): AIE metadata, firmware version, resource info
  (``npu_task_max`` = hwctx_limit); unknown params -> EOPNOTSUPP.
"""

from __future__ import annotations

import errno
import itertools
import struct
from typing import Any, ClassVar

from tests.devices.fakekernel.base import (
    DIR_RW,
    DRM_CAP_PRIME,
    DRM_CAP_SYNCOBJ,
    DRM_CAP_SYNCOBJ_TIMELINE,
    FakeDevice,
    FakeFence,
    FakeFile,
    FakeJob,
    IoctlEntry,
    fail,
    layout,
    page_align,
    read_u32s,
    read_user,
    write_user,
)

CREATE_HWCTX = layout(
    "QQQIIIIIIII",
    "ext",
    "ext_flags",
    "qos_p",
    "umq_bo",
    "log_buf_bo",
    "max_opc",
    "num_tiles",
    "mem_size",
    "umq_doorbell",
    "handle",
    "syncobj_handle",
)
DESTROY_HWCTX = layout("II", "handle", "pad")
CONFIG_HWCTX = layout("IIQII", "handle", "param_type", "param_val", "param_val_size", "pad")
CREATE_BO = layout("QQQII", "flags", "vaddr", "size", "type", "handle")
GET_BO_INFO = layout(
    "QQIIQQQ", "ext", "ext_flags", "handle", "pad", "map_offset", "vaddr", "xdna_addr"
)
EXEC_CMD = layout(
    "QQIIQQIIQ",
    "ext",
    "ext_flags",
    "hwctx",
    "type",
    "cmd_handles",
    "args",
    "cmd_count",
    "arg_count",
    "seq",
)
GET_INFO = layout("IIQ", "param", "buffer_size", "buffer")
QOS = layout("IIIIII", "gops", "fps", "dma_bandwidth", "latency", "frame_exec_time", "priority")

BO_SHARE, BO_DEV_HEAP, BO_DEV, BO_CMD = 1, 2, 3, 4
STATE_COMPLETED, STATE_ERROR, STATE_ABORT, STATE_TIMEOUT = 4, 5, 6, 8
CONFIG_CU = 0
MAX_ARG_COUNT = 4095


class FakeAmdxdna(FakeDevice):
    """An XDNA NPU: ``hwctx_limit`` contexts for the whole device, shared by every file."""

    driver_name = "amdxdna_accel_driver"
    driver_desc = "AMD XDNA"
    driver_version = (0, 6, 0)
    caps: ClassVar[dict[int, int]] = {
        DRM_CAP_PRIME: 3,
        DRM_CAP_SYNCOBJ: 1,
        DRM_CAP_SYNCOBJ_TIMELINE: 1,
    }

    def __init__(self, *, auto_complete: bool = True, hwctx_limit: int = 6, cols: int = 4) -> None:
        super().__init__(auto_complete=auto_complete)
        self.hwctx_limit = hwctx_limit
        self.cols = cols
        self.hwctxs: dict[tuple[int, int], dict[str, Any]] = {}  # (file id, handle) -> ctx
        self.created_total = 0

    def driver_ioctls(self) -> dict[int, IoctlEntry]:
        return {
            0x00: IoctlEntry("DRM_IOCTL_AMDXDNA_CREATE_HWCTX", DIR_RW, CREATE_HWCTX, _create_hwctx),
            0x01: IoctlEntry(
                "DRM_IOCTL_AMDXDNA_DESTROY_HWCTX", DIR_RW, DESTROY_HWCTX, _destroy_hwctx
            ),
            0x02: IoctlEntry("DRM_IOCTL_AMDXDNA_CONFIG_HWCTX", DIR_RW, CONFIG_HWCTX, _config_hwctx),
            0x03: IoctlEntry("DRM_IOCTL_AMDXDNA_CREATE_BO", DIR_RW, CREATE_BO, _create_bo),
            0x04: IoctlEntry("DRM_IOCTL_AMDXDNA_GET_BO_INFO", DIR_RW, GET_BO_INFO, _bo_info),
            0x06: IoctlEntry("DRM_IOCTL_AMDXDNA_EXEC_CMD", DIR_RW, EXEC_CMD, _exec_cmd),
            0x07: IoctlEntry("DRM_IOCTL_AMDXDNA_GET_INFO", DIR_RW, GET_INFO, _get_info),
        }

    def on_open(self, file: FakeFile) -> None:
        file.state.update(ctx_ids=itertools.count(1), heap=None, heap_used=0)

    def on_close(self, file: FakeFile) -> None:
        for owner, handle in list(self.hwctxs):  # amdxdna_hwctx_remove_all
            if owner == id(file):
                _drop_hwctx(file, handle)

    def live_contexts(self) -> int:
        """Hardware contexts alive on the device, across all files."""
        return len(self.hwctxs)

    def error_status(self) -> int:
        return STATE_ERROR

    def on_finish(self, job: FakeJob) -> None:
        state = {0: STATE_COMPLETED, 1: STATE_ERROR}.get(job.status, job.status)
        cmd = job.extra["cmd_bo"]
        header = struct.unpack_from("<I", cmd.data, 0)[0]
        struct.pack_into("<I", cmd.data, 0, (header & ~0xF) | state)
        hwctx = self.hwctxs.get((id(job.file), job.queue))
        if hwctx is not None:
            hwctx["completions"] += 1


def _create_hwctx(file: FakeFile, v: dict[str, Any]) -> None:
    device = file.device
    assert isinstance(device, FakeAmdxdna)
    if v["ext"] or v["ext_flags"]:
        raise fail(errno.EINVAL)
    qos = QOS.unpack(read_user(v["qos_p"], QOS.size))
    if file.state["heap"] is None:
        raise fail(errno.ENOENT)  # "The client dev heap object not exist"
    if device.live_contexts() >= device.hwctx_limit:
        raise fail(errno.ENODEV)  # the solver finds no free partition
    handle = next(file.state["ctx_ids"])
    syncobj = file.add_syncobj()
    device.hwctxs[(id(file), handle)] = {
        "qos": qos,
        "syncobj": syncobj,
        "ready": False,
        "seq": 0,
        "completions": 0,
        "num_tiles": v["num_tiles"],
    }
    device.created_total += 1
    v["handle"], v["syncobj_handle"] = handle, syncobj


def _drop_hwctx(file: FakeFile, handle: int) -> None:
    device = file.device
    hwctx = device.hwctxs.pop((id(file), handle))  # type: ignore[attr-defined]
    for job in device.pending():
        if job.file is file and job.queue == handle:
            device.finish(job, status=STATE_ABORT)
    file.syncobjs.pop(hwctx["syncobj"], None)


def _destroy_hwctx(file: FakeFile, v: dict[str, Any]) -> None:
    device = file.device
    assert isinstance(device, FakeAmdxdna)
    if v["pad"] or (id(file), v["handle"]) not in device.hwctxs:
        raise fail(errno.EINVAL)
    _drop_hwctx(file, v["handle"])


def _config_hwctx(file: FakeFile, v: dict[str, Any]) -> None:
    device = file.device
    assert isinstance(device, FakeAmdxdna)
    if v["pad"]:
        raise fail(errno.EINVAL)
    if v["param_type"] != CONFIG_CU:
        raise fail(errno.EINVAL)
    if v["param_val_size"] > 4096:
        raise fail(errno.E2BIG)
    config = read_user(v["param_val"], v["param_val_size"])
    hwctx = device.hwctxs.get((id(file), v["handle"]))
    if hwctx is None:
        raise fail(errno.EINVAL)
    (num_cus,) = struct.unpack_from("<H", config, 0)
    if num_cus == 0:
        raise fail(errno.EINVAL)
    for i in range(num_cus):
        cu_bo, _func = struct.unpack_from("<IB", config, 8 + 8 * i)
        bo = file.lookup(cu_bo)
        if bo.kind != "dev":
            raise fail(errno.EINVAL)
    hwctx["ready"] = True


def _create_bo(file: FakeFile, v: dict[str, Any]) -> None:
    if v["flags"] or v["size"] == 0:
        raise fail(errno.EINVAL)
    size = page_align(v["size"])
    kind = {BO_SHARE: "share", BO_DEV_HEAP: "heap", BO_DEV: "dev", BO_CMD: "cmd"}.get(v["type"])
    if kind is None:
        raise fail(errno.EINVAL)
    if kind == "heap":
        if file.state["heap"] is not None:
            raise fail(errno.EBUSY)
        file.state["heap"] = size
    if kind == "dev":
        if file.state["heap"] is None:
            raise fail(errno.EINVAL)
        if file.state["heap_used"] + size > file.state["heap"]:
            raise fail(errno.ENOMEM)
        file.state["heap_used"] += size
    bo = file.device.new_bo(size, kind=kind)
    v["handle"] = file.add_bo(bo)


def _bo_info(file: FakeFile, v: dict[str, Any]) -> None:
    if v["ext"] or v["ext_flags"]:
        raise fail(errno.EINVAL)
    bo = file.lookup(v["handle"])
    v.update(map_offset=bo.mmap_offset, vaddr=0, xdna_addr=bo.device_address)


def _exec_cmd(file: FakeFile, v: dict[str, Any]) -> None:
    device = file.device
    assert isinstance(device, FakeAmdxdna)
    if v["ext"] or v["ext_flags"] or v["type"] != 0:
        raise fail(errno.EINVAL)
    if not v["arg_count"] or v["arg_count"] > MAX_ARG_COUNT or v["cmd_count"] != 1:
        raise fail(errno.EINVAL)
    cmd = file.bos.get(v["cmd_handles"] & 0xFFFFFFFF)
    if cmd is None or cmd.kind != "cmd":
        raise fail(errno.EINVAL)  # amdxdna_gem_get_obj(..., AMDXDNA_BO_CMD) failed
    args = [file.lookup(h) for h in read_u32s(v["args"], v["arg_count"])]
    hwctx = device.hwctxs.get((id(file), v["hwctx"]))
    if hwctx is None or not hwctx["ready"]:
        raise fail(errno.EINVAL)
    hwctx["seq"] += 1
    seq = hwctx["seq"]
    fence = FakeFence(device)
    file.syncobjs[hwctx["syncobj"]].points[seq] = fence
    job = FakeJob(
        file,
        0,
        fence,
        reads=[],
        writes=[cmd, *args],
        bindings=args,
        command=bytes(cmd.data),
        priority=hwctx["qos"]["priority"],
        queue=v["hwctx"],
    )
    job.extra["cmd_bo"] = cmd
    v["seq"] = seq
    device.queue_job(job)


def _get_info(file: FakeFile, v: dict[str, Any]) -> None:
    device = file.device
    assert isinstance(device, FakeAmdxdna)
    tile = struct.pack("<HHHHH6x", 4, 2, 2, 16, 128)
    payloads = {
        1: struct.pack("<IHH", 0x0800, device.cols, 6) + struct.pack("<II", 2, 0) + tile * 3,
        8: struct.pack("<IIII", 1, 5, 7, 0),
        12: struct.pack("<QQQQQ", 1_600, 50, device.hwctx_limit, 0, device.live_contexts()),
    }
    data = payloads.get(v["param"])
    if data is None:
        raise fail(errno.EOPNOTSUPP)
    if v["buffer_size"] < len(data) and v["param"] != 12:
        raise fail(errno.EINVAL)
    write_user(v["buffer"], data[: min(len(data), v["buffer_size"])])
