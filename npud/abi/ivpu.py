"""ivpu's UAPI (``include/uapi/drm/ivpu_accel.h``): the Intel NPU (Meteor/Arrow/Lunar Lake, ...).

``GET_PARAM`` reads device facts (``NUM_CONTEXTS``, ``TILE_CONFIG``, ``CAPABILITIES`` with an
index naming the capability); ``BO_CREATE`` allocates (``MAPPABLE``, cache mode, high/DMA
memory) and returns the NPU virtual address, ``BO_INFO`` the mmap offset; ``SUBMIT`` runs a
command buffer on an engine with a per-job priority (``DRM_IVPU_JOB_PRIORITY_*``: npud maps
its classes onto these), and ``BO_WAIT`` waits for the last job using a BO and returns its
status. Newer firmware offers explicit command queues: ``CMDQ_CREATE`` with a priority and the
``TURBO`` flag, ``CMDQ_SUBMIT``, ``CMDQ_DESTROY`` (when ``DRM_IVPU_CAP_MANAGE_CMDQ`` is set).
An MMU fault marks the context faulty and submits then fail with ``EBADFD``.
"""

from __future__ import annotations

import enum

from npud.abi.header import HeaderBuilder
from npud.abi.ioc import Direction

_CDEF = """
struct drm_ivpu_param {
    uint32_t param;
    uint32_t index;
    uint64_t value;
};

struct drm_ivpu_bo_create {
    uint64_t size;
    uint32_t flags;
    uint32_t handle;
    uint64_t vpu_addr;
};

struct drm_ivpu_bo_create_from_userptr {
    uint64_t user_ptr;
    uint64_t size;
    uint32_t flags;
    uint32_t handle;
    uint64_t vpu_addr;
};

struct drm_ivpu_bo_info {
    uint32_t handle;
    uint32_t flags;
    uint64_t vpu_addr;
    uint64_t mmap_offset;
    uint64_t size;
};

struct drm_ivpu_submit {
    uint64_t buffers_ptr;
    uint32_t buffer_count;
    uint32_t engine;
    uint32_t flags;
    uint32_t commands_offset;
    uint32_t priority;
};

struct drm_ivpu_cmdq_submit {
    uint64_t buffers_ptr;
    uint32_t buffer_count;
    uint32_t cmdq_id;
    uint32_t flags;
    uint32_t commands_offset;
    uint32_t preempt_buffer_index;
    uint32_t reserved;
};

struct drm_ivpu_bo_wait {
    uint32_t handle;
    uint32_t flags;
    int64_t timeout_ns;
    uint32_t job_status;
    uint32_t pad;
};

struct drm_ivpu_metric_streamer_start {
    uint64_t metric_group_mask;
    uint64_t sampling_period_ns;
    uint32_t read_period_samples;
    uint32_t sample_size;
    uint32_t max_data_size;
};

struct drm_ivpu_metric_streamer_get_data {
    uint64_t metric_group_mask;
    uint64_t buffer_ptr;
    uint64_t buffer_size;
    uint64_t data_size;
};

struct drm_ivpu_cmdq_create {
    uint32_t cmdq_id;
    uint32_t priority;
    uint32_t flags;
};

struct drm_ivpu_cmdq_destroy {
    uint32_t cmdq_id;
};

struct drm_ivpu_metric_streamer_stop {
    uint64_t metric_group_mask;
};
"""


class Param(enum.IntEnum):
    """``DRM_IVPU_PARAM_*``: what ``GET_PARAM``/``SET_PARAM`` address."""

    DEVICE_ID = 0
    DEVICE_REVISION = 1
    PLATFORM_TYPE = 2
    CORE_CLOCK_RATE = 3
    NUM_CONTEXTS = 4
    CONTEXT_BASE_ADDRESS = 5
    CONTEXT_PRIORITY = 6  # deprecated by per-job priority
    CONTEXT_ID = 7
    FW_API_VERSION = 8
    ENGINE_HEARTBEAT = 9
    UNIQUE_INFERENCE_ID = 10
    TILE_CONFIG = 11
    SKU = 12
    CAPABILITIES = 13
    PREEMPT_BUFFER_SIZE = 14


class ContextPriority(enum.IntEnum):
    """``DRM_IVPU_CONTEXT_PRIORITY_*`` (deprecated context-wide priority)."""

    IDLE = 0
    NORMAL = 1
    FOCUS = 2
    REALTIME = 3


class JobPriority(enum.IntEnum):
    """``DRM_IVPU_JOB_PRIORITY_*``: the native priority of one submit or command queue."""

    DEFAULT = 0
    IDLE = 1
    NORMAL = 2
    FOCUS = 3
    REALTIME = 4


class Capability(enum.IntEnum):
    """``DRM_IVPU_CAP_*``: the index of a ``GET_PARAM(CAPABILITIES)`` query."""

    METRIC_STREAMER = 1
    DMA_MEMORY_RANGE = 2
    MANAGE_CMDQ = 3
    BO_CREATE_FROM_USERPTR = 4


class BoFlag(enum.IntFlag):
    """``DRM_IVPU_BO_*``: placement, mapping and cache mode of a BO."""

    SHAVE_MEM = 0x00000001
    MAPPABLE = 0x00000002
    DMA_MEM = 0x00000004
    READ_ONLY = 0x00000008
    UNCACHED = 0x00010000
    WC = 0x00020000
    CACHE_MASK = 0x00030000


class Engine(enum.IntEnum):
    """``DRM_IVPU_ENGINE_*``."""

    COMPUTE = 0
    COPY = 1


class JobStatus(enum.IntEnum):
    """``DRM_IVPU_JOB_STATUS_*``: what ``BO_WAIT`` reports."""

    SUCCESS = 0
    ABORTED = 256


DRM_IVPU_PLATFORM_TYPE_SILICON = 0
DRM_IVPU_BO_HIGH_MEM = BoFlag.SHAVE_MEM
DRM_IVPU_BO_CACHED = 0
DRM_IVPU_BO_FLAGS = (
    BoFlag.SHAVE_MEM | BoFlag.MAPPABLE | BoFlag.DMA_MEM | BoFlag.READ_ONLY | BoFlag.CACHE_MASK
)
DRM_IVPU_CMDQ_FLAG_TURBO = 0x00000001

_b = HeaderBuilder("ivpu", "drm/ivpu_accel.h", _CDEF)
_b.constants(Param, "DRM_IVPU_PARAM_")
_b.constants(ContextPriority, "DRM_IVPU_CONTEXT_PRIORITY_")
_b.constants(JobPriority, "DRM_IVPU_JOB_PRIORITY_")
_b.constants(Capability, "DRM_IVPU_CAP_")
_b.constants(BoFlag, "DRM_IVPU_BO_")
_b.constants(Engine, "DRM_IVPU_ENGINE_")
_b.constants(JobStatus, "DRM_IVPU_JOB_STATUS_")
_b.constant("DRM_IVPU_PLATFORM_TYPE_SILICON", DRM_IVPU_PLATFORM_TYPE_SILICON)
_b.constant("DRM_IVPU_BO_HIGH_MEM", int(DRM_IVPU_BO_HIGH_MEM))
_b.constant("DRM_IVPU_BO_CACHED", DRM_IVPU_BO_CACHED)
_b.constant("DRM_IVPU_BO_FLAGS", int(DRM_IVPU_BO_FLAGS))
_b.constant("DRM_IVPU_CMDQ_FLAG_TURBO", DRM_IVPU_CMDQ_FLAG_TURBO)

_RW = Direction.READWRITE
_W = Direction.WRITE
GET_PARAM = _b.driver_ioctl(
    "DRM_IOCTL_IVPU_GET_PARAM",
    _RW,
    0x00,
    "struct drm_ivpu_param",
    cmd_name="DRM_IVPU_GET_PARAM",
)
SET_PARAM = _b.driver_ioctl(
    "DRM_IOCTL_IVPU_SET_PARAM",
    _W,
    0x01,
    "struct drm_ivpu_param",
    cmd_name="DRM_IVPU_SET_PARAM",
)
BO_CREATE = _b.driver_ioctl(
    "DRM_IOCTL_IVPU_BO_CREATE",
    _RW,
    0x02,
    "struct drm_ivpu_bo_create",
    cmd_name="DRM_IVPU_BO_CREATE",
)
BO_INFO = _b.driver_ioctl(
    "DRM_IOCTL_IVPU_BO_INFO",
    _RW,
    0x03,
    "struct drm_ivpu_bo_info",
    cmd_name="DRM_IVPU_BO_INFO",
)
SUBMIT = _b.driver_ioctl(
    "DRM_IOCTL_IVPU_SUBMIT",
    _W,
    0x05,
    "struct drm_ivpu_submit",
    cmd_name="DRM_IVPU_SUBMIT",
)
BO_WAIT = _b.driver_ioctl(
    "DRM_IOCTL_IVPU_BO_WAIT",
    _RW,
    0x06,
    "struct drm_ivpu_bo_wait",
    cmd_name="DRM_IVPU_BO_WAIT",
)
METRIC_STREAMER_START = _b.driver_ioctl(
    "DRM_IOCTL_IVPU_METRIC_STREAMER_START",
    _RW,
    0x07,
    "struct drm_ivpu_metric_streamer_start",
    cmd_name="DRM_IVPU_METRIC_STREAMER_START",
)
METRIC_STREAMER_STOP = _b.driver_ioctl(
    "DRM_IOCTL_IVPU_METRIC_STREAMER_STOP",
    _W,
    0x08,
    "struct drm_ivpu_metric_streamer_stop",
    cmd_name="DRM_IVPU_METRIC_STREAMER_STOP",
)
METRIC_STREAMER_GET_DATA = _b.driver_ioctl(
    "DRM_IOCTL_IVPU_METRIC_STREAMER_GET_DATA",
    _RW,
    0x09,
    "struct drm_ivpu_metric_streamer_get_data",
    cmd_name="DRM_IVPU_METRIC_STREAMER_GET_DATA",
)
METRIC_STREAMER_GET_INFO = _b.driver_ioctl(
    "DRM_IOCTL_IVPU_METRIC_STREAMER_GET_INFO",
    _RW,
    0x0A,
    "struct drm_ivpu_metric_streamer_get_data",
    cmd_name="DRM_IVPU_METRIC_STREAMER_GET_INFO",
)
CMDQ_CREATE = _b.driver_ioctl(
    "DRM_IOCTL_IVPU_CMDQ_CREATE",
    _RW,
    0x0B,
    "struct drm_ivpu_cmdq_create",
    cmd_name="DRM_IVPU_CMDQ_CREATE",
)
CMDQ_DESTROY = _b.driver_ioctl(
    "DRM_IOCTL_IVPU_CMDQ_DESTROY",
    _W,
    0x0C,
    "struct drm_ivpu_cmdq_destroy",
    cmd_name="DRM_IVPU_CMDQ_DESTROY",
)
CMDQ_SUBMIT = _b.driver_ioctl(
    "DRM_IOCTL_IVPU_CMDQ_SUBMIT",
    _W,
    0x0D,
    "struct drm_ivpu_cmdq_submit",
    cmd_name="DRM_IVPU_CMDQ_SUBMIT",
)
BO_CREATE_FROM_USERPTR = _b.driver_ioctl(
    "DRM_IOCTL_IVPU_BO_CREATE_FROM_USERPTR",
    _RW,
    0x0E,
    "struct drm_ivpu_bo_create_from_userptr",
    cmd_name="DRM_IVPU_BO_CREATE_FROM_USERPTR",
)

HEADER = _b.build()
