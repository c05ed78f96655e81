"""Ethos-U's UAPI (``include/uapi/drm/ethosu_accel.h``): Arm Ethos-U65/U85 NPUs.

``DEV_QUERY`` reads the NPU's identity (``drm_ethosu_npu_info``: id, config, and the size of the
on-chip SRAM that jobs may use); ``BO_CREATE`` / ``BO_MMAP_OFFSET`` / ``BO_WAIT`` manage DRAM
buffers; ``CMDSTREAM_BO_CREATE`` copies a command stream into a kernel-validated BO; ``SUBMIT``
runs jobs, each naming its command-stream BO, the SRAM it needs and up to
``ETHOSU_MAX_REGIONS`` region BOs. No priority in the UAPI: npud orders jobs itself.
"""

from __future__ import annotations

import enum

from npud.abi.header import HeaderBuilder
from npud.abi.ioc import Direction

ETHOSU_MAX_REGIONS = 8

_CDEF = """
struct drm_ethosu_npu_info {
    uint32_t id;
    uint32_t config;
    uint32_t sram_size;
};

struct drm_ethosu_dev_query {
    uint32_t type;
    uint32_t size;
    uint64_t pointer;
};

struct drm_ethosu_bo_create {
    uint64_t size;
    uint32_t flags;
    uint32_t handle;
};

struct drm_ethosu_bo_mmap_offset {
    uint32_t handle;
    uint32_t pad;
    uint64_t offset;
};

struct drm_ethosu_bo_wait {
    uint32_t handle;
    uint32_t pad;
    int64_t timeout_ns;
};

struct drm_ethosu_cmdstream_bo_create {
    uint32_t size;
    uint32_t flags;
    uint64_t data;
    uint32_t handle;
    uint32_t pad;
};

struct drm_ethosu_job {
    uint32_t cmd_bo;
    uint32_t sram_size;
    uint32_t region_bo_handles[8];
};

struct drm_ethosu_submit {
    uint64_t jobs;
    uint32_t job_count;
    uint32_t pad;
};
"""


class Cmd(enum.IntEnum):
    """``DRM_ETHOSU_*`` (enum drm_ethosu_ioctl_id): the driver's command numbers."""

    DEV_QUERY = 0
    BO_CREATE = 1
    BO_WAIT = 2
    BO_MMAP_OFFSET = 3
    CMDSTREAM_BO_CREATE = 4
    SUBMIT = 5


class DevQueryType(enum.IntEnum):
    """``DRM_ETHOSU_DEV_QUERY_*``."""

    NPU_INFO = 0


class BoFlag(enum.IntFlag):
    """``DRM_ETHOSU_BO_*``."""

    NO_MMAP = 1 << 0


_b = HeaderBuilder("ethosu", "drm/ethosu_accel.h", _CDEF)
_b.constant("ETHOSU_MAX_REGIONS", ETHOSU_MAX_REGIONS)
_b.constants(DevQueryType, "DRM_ETHOSU_DEV_QUERY_")
_b.constants(BoFlag, "DRM_ETHOSU_BO_")


_RW = Direction.READWRITE
DEV_QUERY = _b.driver_ioctl(
    "DRM_IOCTL_ETHOSU_DEV_QUERY",
    _RW,
    Cmd.DEV_QUERY,
    "struct drm_ethosu_dev_query",
    cmd_name="DRM_ETHOSU_DEV_QUERY",
)
BO_CREATE = _b.driver_ioctl(
    "DRM_IOCTL_ETHOSU_BO_CREATE",
    _RW,
    Cmd.BO_CREATE,
    "struct drm_ethosu_bo_create",
    cmd_name="DRM_ETHOSU_BO_CREATE",
)
BO_WAIT = _b.driver_ioctl(
    "DRM_IOCTL_ETHOSU_BO_WAIT",
    _RW,
    Cmd.BO_WAIT,
    "struct drm_ethosu_bo_wait",
    cmd_name="DRM_ETHOSU_BO_WAIT",
)
BO_MMAP_OFFSET = _b.driver_ioctl(
    "DRM_IOCTL_ETHOSU_BO_MMAP_OFFSET",
    _RW,
    Cmd.BO_MMAP_OFFSET,
    "struct drm_ethosu_bo_mmap_offset",
    cmd_name="DRM_ETHOSU_BO_MMAP_OFFSET",
)
CMDSTREAM_BO_CREATE = _b.driver_ioctl(
    "DRM_IOCTL_ETHOSU_CMDSTREAM_BO_CREATE",
    _RW,
    Cmd.CMDSTREAM_BO_CREATE,
    "struct drm_ethosu_cmdstream_bo_create",
    cmd_name="DRM_ETHOSU_CMDSTREAM_BO_CREATE",
)
SUBMIT = _b.driver_ioctl(
    "DRM_IOCTL_ETHOSU_SUBMIT",
    _RW,
    Cmd.SUBMIT,
    "struct drm_ethosu_submit",
    cmd_name="DRM_ETHOSU_SUBMIT",
)

HEADER = _b.build()
