"""amdxdna's UAPI (``include/uapi/drm/amdxdna_accel.h``): AMD XDNA NPUs (Ryzen AI).

Work runs in hardware contexts: ``CREATE_HWCTX`` takes a ``amdxdna_qos_info`` (GOPS, FPS, DMA
bandwidth, latency, frame time and a ``priority`` from ``AMDXDNA_QOS_*_PRIORITY``: npud maps its
classes onto these) and the number of tiles, and returns the context handle plus a syncobj
handle whose timeline points are the context's command sequence numbers. The number of
concurrent contexts is small (6 on Phoenix, 16 on Strix), so npud pools them. Buffers come from
``CREATE_BO`` by type (a device heap, device BOs carved from it, command BOs, shared BOs),
``GET_BO_INFO`` gives the mmap offset and device address, ``SYNC_BO`` flushes caches.
``EXEC_CMD`` submits command BOs and returns a sequence number; ``WAIT_CMD`` waits for it (or
the syncobj point is waited on / exported as a sync_file). ``GET_INFO`` / ``GET_ARRAY`` /
``SET_STATE`` query and set device state (AIE metadata, clocks, contexts, power mode).
"""

from __future__ import annotations

import enum

from npud.abi.header import HeaderBuilder, IoctlSpec
from npud.abi.ioc import Direction

_CDEF = """
struct amdxdna_qos_info {
    uint32_t gops;
    uint32_t fps;
    uint32_t dma_bandwidth;
    uint32_t latency;
    uint32_t frame_exec_time;
    uint32_t priority;
};

struct amdxdna_drm_create_hwctx {
    uint64_t ext;
    uint64_t ext_flags;
    uint64_t qos_p;
    uint32_t umq_bo;
    uint32_t log_buf_bo;
    uint32_t max_opc;
    uint32_t num_tiles;
    uint32_t mem_size;
    uint32_t umq_doorbell;
    uint32_t handle;
    uint32_t syncobj_handle;
};

struct amdxdna_drm_destroy_hwctx {
    uint32_t handle;
    uint32_t pad;
};

struct amdxdna_cu_config {
    uint32_t cu_bo;
    uint8_t cu_func;
    uint8_t pad[3];
};

struct amdxdna_hwctx_param_config_cu {
    uint16_t num_cus;
    uint16_t pad[3];
    struct amdxdna_cu_config cu_configs[];
};

struct amdxdna_drm_config_hwctx {
    uint32_t handle;
    uint32_t param_type;
    uint64_t param_val;
    uint32_t param_val_size;
    uint32_t pad;
};

struct amdxdna_drm_va_entry {
    uint64_t vaddr;
    uint64_t len;
};

struct amdxdna_drm_va_tbl {
    int32_t dmabuf_fd;
    uint32_t num_entries;
    struct amdxdna_drm_va_entry va_entries[];
};

struct amdxdna_drm_create_bo {
    uint64_t flags;
    uint64_t vaddr;
    uint64_t size;
    uint32_t type;
    uint32_t handle;
};

struct amdxdna_drm_get_bo_info {
    uint64_t ext;
    uint64_t ext_flags;
    uint32_t handle;
    uint32_t pad;
    uint64_t map_offset;
    uint64_t vaddr;
    uint64_t xdna_addr;
};

struct amdxdna_drm_sync_bo {
    uint32_t handle;
    uint32_t direction;
    uint64_t offset;
    uint64_t size;
};

struct amdxdna_drm_exec_cmd {
    uint64_t ext;
    uint64_t ext_flags;
    uint32_t hwctx;
    uint32_t type;
    uint64_t cmd_handles;
    uint64_t args;
    uint32_t cmd_count;
    uint32_t arg_count;
    uint64_t seq;
};

struct amdxdna_drm_wait_cmd {
    uint32_t hwctx;
    uint32_t timeout;
    uint64_t seq;
};

struct amdxdna_drm_query_aie_status {
    uint64_t buffer;
    uint32_t buffer_size;
    uint32_t cols_filled;
};

struct amdxdna_drm_query_aie_version {
    uint32_t major;
    uint32_t minor;
};

struct amdxdna_drm_query_aie_tile_metadata {
    uint16_t row_count;
    uint16_t row_start;
    uint16_t dma_channel_count;
    uint16_t lock_count;
    uint16_t event_reg_count;
    uint16_t pad[3];
};

struct amdxdna_drm_query_aie_metadata {
    uint32_t col_size;
    uint16_t cols;
    uint16_t rows;
    struct amdxdna_drm_query_aie_version version;
    struct amdxdna_drm_query_aie_tile_metadata core;
    struct amdxdna_drm_query_aie_tile_metadata mem;
    struct amdxdna_drm_query_aie_tile_metadata shim;
};

struct amdxdna_drm_query_clock {
    uint8_t name[16];
    uint32_t freq_mhz;
    uint32_t pad;
};

struct amdxdna_drm_query_clock_metadata {
    struct amdxdna_drm_query_clock mp_npu_clock;
    struct amdxdna_drm_query_clock h_clock;
};

struct amdxdna_drm_query_sensor {
    uint8_t label[64];
    uint32_t input;
    uint32_t max;
    uint32_t average;
    uint32_t highest;
    uint8_t status[64];
    uint8_t units[16];
    int8_t unitm;
    uint8_t type;
    uint8_t pad[6];
};

struct amdxdna_drm_query_hwctx {
    uint32_t context_id;
    uint32_t start_col;
    uint32_t num_col;
    uint32_t pad;
    int64_t pid;
    uint64_t command_submissions;
    uint64_t command_completions;
    uint64_t migrations;
    uint64_t preemptions;
    uint64_t errors;
};

struct amdxdna_drm_get_power_mode {
    uint8_t power_mode;
    uint8_t pad[7];
};

struct amdxdna_drm_query_firmware_version {
    uint32_t major;
    uint32_t minor;
    uint32_t patch;
    uint32_t build;
};

struct amdxdna_drm_get_resource_info {
    uint64_t npu_clk_max;
    uint64_t npu_tops_max;
    uint64_t npu_task_max;
    uint64_t npu_tops_curr;
    uint64_t npu_task_curr;
};

struct amdxdna_drm_attribute_state {
    uint8_t state;
    uint8_t pad[7];
};

struct amdxdna_drm_query_telemetry_header {
    uint32_t major;
    uint32_t minor;
    uint32_t type;
    uint32_t map_num_elements;
    uint32_t map[];
};

struct amdxdna_drm_get_info {
    uint32_t param;
    uint32_t buffer_size;
    uint64_t buffer;
};

struct amdxdna_drm_hwctx_entry {
    uint32_t context_id;
    uint32_t start_col;
    uint32_t num_col;
    uint32_t hwctx_id;
    int64_t pid;
    uint64_t command_submissions;
    uint64_t command_completions;
    uint64_t migrations;
    uint64_t preemptions;
    uint64_t errors;
    uint64_t priority;
    uint64_t heap_usage;
    uint64_t suspensions;
    uint32_t state;
    uint32_t pasid;
    uint32_t gops;
    uint32_t fps;
    uint32_t dma_bandwidth;
    uint32_t latency;
    uint32_t frame_exec_time;
    uint32_t txn_op_idx;
    uint32_t ctx_pc;
    uint32_t fatal_error_type;
    uint32_t fatal_error_exception_type;
    uint32_t fatal_error_exception_pc;
    uint32_t fatal_error_app_module;
    uint32_t pad;
};

struct amdxdna_async_error {
    uint64_t err_code;
    uint64_t ts_us;
    uint64_t ex_err_code;
};

struct amdxdna_drm_bo_usage {
    int64_t pid;
    uint64_t total_usage;
    uint64_t internal_usage;
    uint64_t heap_usage;
};

struct amdxdna_drm_get_array {
    uint32_t param;
    uint32_t element_size;
    uint32_t num_element;
    uint32_t pad;
    uint64_t buffer;
};

struct amdxdna_drm_set_state {
    uint32_t param;
    uint32_t buffer_size;
    uint64_t buffer;
};

struct amdxdna_drm_set_power_mode {
    uint8_t power_mode;
    uint8_t pad[7];
};
"""


class Cmd(enum.IntEnum):
    """``DRM_AMDXDNA_*`` (enum amdxdna_drm_ioctl_id): the driver's command numbers."""

    CREATE_HWCTX = 0
    DESTROY_HWCTX = 1
    CONFIG_HWCTX = 2
    CREATE_BO = 3
    GET_BO_INFO = 4
    SYNC_BO = 5
    EXEC_CMD = 6
    GET_INFO = 7
    SET_STATE = 8
    WAIT_CMD = 9
    GET_ARRAY = 10


class QosPriority(enum.IntEnum):
    """``AMDXDNA_QOS_*_PRIORITY``: the hardware context priority (lower is more urgent)."""

    REALTIME = 0x100
    HIGH = 0x180
    NORMAL = 0x200
    LOW = 0x280


class DeviceType(enum.IntEnum):
    """``AMDXDNA_DEV_TYPE_*``."""

    UNKNOWN = -1
    KMQ = 0
    UMQ = 1
    PF = 2


class HwctxConfig(enum.IntEnum):
    """``DRM_AMDXDNA_HWCTX_*``: the ``param_type`` of ``CONFIG_HWCTX``."""

    CONFIG_CU = 0
    ASSIGN_DBG_BUF = 1
    REMOVE_DBG_BUF = 2


class BoType(enum.IntEnum):
    """``AMDXDNA_BO_*``: the ``type`` of ``CREATE_BO`` (``SHARE`` is an alias of ``SHMEM``)."""

    INVALID = 0
    SHMEM = 1
    SHARE = 1
    DEV_HEAP = 2
    DEV = 3
    CMD = 4


class CmdType(enum.IntEnum):
    """``AMDXDNA_CMD_SUBMIT_*``: the ``type`` of ``EXEC_CMD``."""

    EXEC_BUF = 0
    DEPENDENCY = 1
    SIGNAL = 2


class SensorType(enum.IntEnum):
    """``AMDXDNA_SENSOR_TYPE_*``."""

    POWER = 0
    COLUMN_UTILIZATION = 1


class PowerMode(enum.IntEnum):
    """``POWER_MODE_*`` (enum amdxdna_power_mode_type)."""

    DEFAULT = 0
    LOW = 1
    MEDIUM = 2
    HIGH = 3
    TURBO = 4


class GetParam(enum.IntEnum):
    """``DRM_AMDXDNA_*`` of ``GET_INFO`` (enum amdxdna_drm_get_param)."""

    QUERY_AIE_STATUS = 0
    QUERY_AIE_METADATA = 1
    QUERY_AIE_VERSION = 2
    QUERY_CLOCK_METADATA = 3
    QUERY_SENSORS = 4
    QUERY_HW_CONTEXTS = 5
    QUERY_FIRMWARE_VERSION = 8
    GET_POWER_MODE = 9
    QUERY_TELEMETRY = 10
    GET_FORCE_PREEMPT_STATE = 11
    QUERY_RESOURCE_INFO = 12
    GET_FRAME_BOUNDARY_PREEMPT_STATE = 13


class ArrayParam(enum.IntEnum):
    """``DRM_AMDXDNA_*`` of ``GET_ARRAY``."""

    HW_CONTEXT_ALL = 0
    HW_LAST_ASYNC_ERR = 2
    BO_USAGE = 6


class SetParam(enum.IntEnum):
    """``DRM_AMDXDNA_*`` of ``SET_STATE`` (enum amdxdna_drm_set_param)."""

    SET_POWER_MODE = 0
    WRITE_AIE_MEM = 1
    WRITE_AIE_REG = 2
    SET_FORCE_PREEMPT = 3
    SET_FRAME_BOUNDARY_PREEMPT = 4


class SyncDirection(enum.IntEnum):
    """``SYNC_DIRECT_*``: the ``direction`` of ``SYNC_BO``."""

    TO_DEVICE = 0
    FROM_DEVICE = 1


class HwctxState(enum.IntEnum):
    """``AMDXDNA_HWCTX_STATE_*``."""

    IDLE = 0
    ACTIVE = 1


AMDXDNA_INVALID_CMD_HANDLE = (1 << 64) - 1  # ~0UL
AMDXDNA_INVALID_ADDR = (1 << 64) - 1  # ~0UL
AMDXDNA_INVALID_CTX_HANDLE = 0
AMDXDNA_INVALID_BO_HANDLE = 0
AMDXDNA_INVALID_FENCE_HANDLE = 0
AMDXDNA_INVALID_DOORBELL_OFFSET = (1 << 32) - 1  # ~0U

_b = HeaderBuilder("amdxdna", "drm/amdxdna_accel.h", _CDEF)
_b.constants(QosPriority, "AMDXDNA_QOS_", "_PRIORITY")
_b.constants(DeviceType, "AMDXDNA_DEV_TYPE_")
_b.constants(HwctxConfig, "DRM_AMDXDNA_HWCTX_")
_b.constants(BoType, "AMDXDNA_BO_")
_b.constants(CmdType, "AMDXDNA_CMD_SUBMIT_")
_b.constants(SensorType, "AMDXDNA_SENSOR_TYPE_")
_b.constants(PowerMode, "POWER_MODE_")
_b.constants(GetParam, "DRM_AMDXDNA_")
_b.constants(ArrayParam, "DRM_AMDXDNA_")
_b.constants(SetParam, "DRM_AMDXDNA_")
_b.constants(SyncDirection, "SYNC_DIRECT_")
_b.constants(HwctxState, "AMDXDNA_HWCTX_STATE_")
_b.constant("AMDXDNA_INVALID_CMD_HANDLE", AMDXDNA_INVALID_CMD_HANDLE)
_b.constant("AMDXDNA_INVALID_ADDR", AMDXDNA_INVALID_ADDR)
_b.constant("AMDXDNA_INVALID_CTX_HANDLE", AMDXDNA_INVALID_CTX_HANDLE)
_b.constant("AMDXDNA_INVALID_BO_HANDLE", AMDXDNA_INVALID_BO_HANDLE)
_b.constant("AMDXDNA_INVALID_FENCE_HANDLE", AMDXDNA_INVALID_FENCE_HANDLE)
_b.constant("AMDXDNA_INVALID_DOORBELL_OFFSET", AMDXDNA_INVALID_DOORBELL_OFFSET)


def _ioctl(cmd: Cmd, struct: str, direction: Direction = Direction.READWRITE) -> IoctlSpec:
    # Every amdxdna ioctl is DRM_IOCTL_AMDXDNA_<CMD> at DRM_COMMAND_BASE + DRM_AMDXDNA_<CMD>.
    return _b.driver_ioctl(
        f"DRM_IOCTL_AMDXDNA_{cmd.name}",
        direction,
        cmd,
        f"struct amdxdna_drm_{struct}",
        cmd_name=f"DRM_AMDXDNA_{cmd.name}",
    )


CREATE_HWCTX = _ioctl(Cmd.CREATE_HWCTX, "create_hwctx")
DESTROY_HWCTX = _ioctl(Cmd.DESTROY_HWCTX, "destroy_hwctx")
CONFIG_HWCTX = _ioctl(Cmd.CONFIG_HWCTX, "config_hwctx")
CREATE_BO = _ioctl(Cmd.CREATE_BO, "create_bo")
GET_BO_INFO = _ioctl(Cmd.GET_BO_INFO, "get_bo_info")
SYNC_BO = _ioctl(Cmd.SYNC_BO, "sync_bo")
EXEC_CMD = _ioctl(Cmd.EXEC_CMD, "exec_cmd")
GET_INFO = _ioctl(Cmd.GET_INFO, "get_info")
SET_STATE = _ioctl(Cmd.SET_STATE, "set_state")
GET_ARRAY = _ioctl(Cmd.GET_ARRAY, "get_array")
WAIT_CMD = _ioctl(Cmd.WAIT_CMD, "wait_cmd", Direction.WRITE)

HEADER = _b.build()
