"""Rockchip's vendor ``rknpu`` UAPI (``drivers/rknpu/include/rknpu_ioctl.h`` of Rockchip's kernel).

The RK3588's NPU as RKNN/RKLLM drive it on Rockchip's BSP kernels: a DRM device named
``rknpu`` (its render node), not a drivers/accel node. Six driver ioctls:

- ``ACTION``: one ``{flags = action, value}`` pair per call: read the hardware and driver
  versions, the clock and voltage, IOMMU state, the total and free NPU SRAM; soft-reset the NPU
  (``RKNPU_ACT_RESET``, every core); set the caller's nice level.
- ``MEM_CREATE``: a GEM object with memory-type flags, its NPU DMA address and ``obj_addr``, the
  kernel object's address, which ``MEM_SYNC`` and ``SUBMIT`` take instead of a handle. With
  ``RKNPU_MEM_TRY_ALLOC_SRAM`` the object is placed in the NPU's SRAM, up to ``sram_size``
  bytes of it, and the kernel reports in ``sram_size`` how much it got.
- ``MEM_MAP`` (the mmap offset), ``MEM_DESTROY`` (drop the handle), ``MEM_SYNC`` (cache
  maintenance of a byte range, to or from the device).
- ``SUBMIT``: run ``task_number`` tasks starting at ``task_start`` of the task array in the
  object ``task_obj_addr`` (``struct rknpu_task``, packed, 40 bytes each), on the cores of
  ``core_mask`` (bit per core; 0 lets the driver pick; ``subcore_task`` splits the range per
  core), with a ``timeout`` in milliseconds. Blocking by default: the ioctl returns when the
  job is done, with ``task_counter`` the tasks completed and ``hw_elapse_time``, or fails
  ``ETIMEDOUT`` (the driver then soft-resets the NPU). ``RKNPU_JOB_NONBLOCK`` with
  ``RKNPU_JOB_FENCE_OUT`` instead returns a sync_file in ``fence_fd``.

Debian ships no such header, so the conformance test cannot compile against it; the facts
(sizes, offsets, request numbers, constants) are recorded with their source in
``tests/abi/test_rknpu_abi.py`` and every declaration here is checked against them.
"""

from __future__ import annotations

import enum

from npud.abi.header import HeaderBuilder
from npud.abi.ioc import Direction

RKNPU_MAX_SUBCORE_TASKS = 5
RKNPU_PC_DATA_EXTRA_AMOUNT = 4
RKNPU_CORE_AUTO_MASK = 0x00
RKNPU_CORE0_MASK = 0x01
RKNPU_CORE1_MASK = 0x02
RKNPU_CORE2_MASK = 0x04

_CDEF = """
struct rknpu_mem_create {
    uint32_t handle;
    uint32_t flags;
    uint64_t size;
    uint64_t obj_addr;
    uint64_t dma_addr;
    uint64_t sram_size;
    int32_t iommu_domain_id;
    uint32_t core_mask;
};

struct rknpu_mem_map {
    uint32_t handle;
    uint32_t reserved;
    uint64_t offset;
};

struct rknpu_mem_destroy {
    uint32_t handle;
    uint32_t reserved;
    uint64_t obj_addr;
};

struct rknpu_mem_sync {
    uint32_t flags;
    uint32_t reserved;
    uint64_t obj_addr;
    uint64_t offset;
    uint64_t size;
};

struct rknpu_subcore_task {
    uint32_t task_start;
    uint32_t task_number;
};

struct rknpu_submit {
    uint32_t flags;
    uint32_t timeout;
    uint32_t task_start;
    uint32_t task_number;
    uint32_t task_counter;
    int32_t priority;
    uint64_t task_obj_addr;
    uint32_t iommu_domain_id;
    uint32_t reserved;
    uint64_t task_base_addr;
    int64_t hw_elapse_time;
    uint32_t core_mask;
    int32_t fence_fd;
    struct rknpu_subcore_task subcore_task[5];
};

struct rknpu_action {
    uint32_t flags;
    uint32_t value;
};
"""

# The header declares ``struct rknpu_task`` ``__packed`` (alignment 1, no padding): an array of
# them in a task object has a 40-byte stride on every architecture.
_PACKED_CDEF = """
struct rknpu_task {
    uint32_t flags;
    uint32_t op_idx;
    uint32_t enable_mask;
    uint32_t int_mask;
    uint32_t int_clear;
    uint32_t int_status;
    uint32_t regcfg_amount;
    uint32_t regcfg_offset;
    uint64_t regcmd_addr;
};
"""


class MemFlag(enum.IntFlag):
    """``enum e_rknpu_mem_type``: memory type and cache attributes of ``MEM_CREATE``."""

    NON_CONTIGUOUS = 1 << 0
    CACHEABLE = 1 << 1
    WRITE_COMBINE = 1 << 2
    KERNEL_MAPPING = 1 << 3
    IOMMU = 1 << 4
    ZEROING = 1 << 5
    SECURE = 1 << 6
    DMA32 = 1 << 7
    TRY_ALLOC_SRAM = 1 << 8
    TRY_ALLOC_NBUF = 1 << 9


class SyncFlag(enum.IntFlag):
    """``enum e_rknpu_mem_sync_mode``: the direction of a ``MEM_SYNC``."""

    TO_DEVICE = 1 << 0
    FROM_DEVICE = 1 << 1


class JobFlag(enum.IntFlag):
    """``enum e_rknpu_job_mode``: flags of ``SUBMIT``."""

    PC = 1 << 0
    NONBLOCK = 1 << 1
    PINGPONG = 1 << 2
    FENCE_IN = 1 << 3
    FENCE_OUT = 1 << 4


class Action(enum.IntEnum):
    """``enum e_rknpu_action``: what one ``ACTION`` call does (the ones npud uses or reports)."""

    GET_HW_VERSION = 0
    GET_DRV_VERSION = 1
    GET_FREQ = 2
    GET_VOLT = 4
    ACT_RESET = 6
    GET_IOMMU_EN = 18
    SET_PROC_NICE = 19
    POWER_ON = 20
    POWER_OFF = 21
    GET_TOTAL_SRAM_SIZE = 22
    GET_FREE_SRAM_SIZE = 23


class Cmd(enum.IntEnum):
    """``RKNPU_*``: the driver's command numbers (``DRM_COMMAND_BASE +`` these)."""

    ACTION = 0x00
    SUBMIT = 0x01
    MEM_CREATE = 0x02
    MEM_MAP = 0x03
    MEM_DESTROY = 0x04
    MEM_SYNC = 0x05


def drv_version(code: int) -> tuple[int, int, int]:
    """``RKNPU_GET_DRV_VERSION_*``: the driver's version code (major*10000 + minor*100 + patch)."""
    return code // 10000, (code % 10000) // 100, code % 100


_b = HeaderBuilder("rknpu", "rknpu_ioctl.h", _CDEF)
_b.ffi.cdef(_PACKED_CDEF, packed=True)
_b.constants(MemFlag, "RKNPU_MEM_")
_b.constants(SyncFlag, "RKNPU_MEM_SYNC_")
_b.constants(JobFlag, "RKNPU_JOB_")
for _action in Action:
    _b.constant("RKNPU_" + _action.name, int(_action))
_b.constant("RKNPU_PC_DATA_EXTRA_AMOUNT", RKNPU_PC_DATA_EXTRA_AMOUNT)

_RW = Direction.READWRITE
ACTION = _b.driver_ioctl(
    "DRM_IOCTL_RKNPU_ACTION", _RW, Cmd.ACTION, "struct rknpu_action", cmd_name="RKNPU_ACTION"
)
SUBMIT = _b.driver_ioctl(
    "DRM_IOCTL_RKNPU_SUBMIT", _RW, Cmd.SUBMIT, "struct rknpu_submit", cmd_name="RKNPU_SUBMIT"
)
MEM_CREATE = _b.driver_ioctl(
    "DRM_IOCTL_RKNPU_MEM_CREATE",
    _RW,
    Cmd.MEM_CREATE,
    "struct rknpu_mem_create",
    cmd_name="RKNPU_MEM_CREATE",
)
MEM_MAP = _b.driver_ioctl(
    "DRM_IOCTL_RKNPU_MEM_MAP", _RW, Cmd.MEM_MAP, "struct rknpu_mem_map", cmd_name="RKNPU_MEM_MAP"
)
MEM_DESTROY = _b.driver_ioctl(
    "DRM_IOCTL_RKNPU_MEM_DESTROY",
    _RW,
    Cmd.MEM_DESTROY,
    "struct rknpu_mem_destroy",
    cmd_name="RKNPU_MEM_DESTROY",
)
MEM_SYNC = _b.driver_ioctl(
    "DRM_IOCTL_RKNPU_MEM_SYNC",
    _RW,
    Cmd.MEM_SYNC,
    "struct rknpu_mem_sync",
    cmd_name="RKNPU_MEM_SYNC",
)

HEADER = _b.build()
