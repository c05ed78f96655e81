"""qaic's UAPI (``include/uapi/drm/qaic_accel.h``): Qualcomm Cloud AI 100.

qaic talks to the card's firmware through ``MANAGE`` messages (a list of transactions: DMA a
network image, activate a DMA bridge channel (DBC), deactivate it, query status). Data moves in
BOs: ``CREATE_BO``, ``MMAP_BO``, then ``ATTACH_SLICE_BO`` splits a BO into slices bound to a DBC
with semaphores and doorbells; ``EXECUTE_BO`` / ``PARTIAL_EXECUTE_BO`` queue BOs on a DBC,
``WAIT_BO`` waits for one (timeout in ms), ``PERF_STATS_BO`` reads per-BO latencies and
``DETACH_SLICE_BO`` releases the slicing. No priorities: each DBC is a FIFO, so npud orders
work before it reaches the card.
"""

from __future__ import annotations

import enum

from npud.abi.header import HeaderBuilder, IoctlSpec
from npud.abi.ioc import Direction

_CDEF = """
struct qaic_manage_trans_hdr {
    uint32_t type;
    uint32_t len;
};

struct qaic_manage_trans_passthrough {
    struct qaic_manage_trans_hdr hdr;
    uint8_t data[];
};

struct qaic_manage_trans_dma_xfer {
    struct qaic_manage_trans_hdr hdr;
    uint32_t tag;
    uint32_t pad;
    uint64_t addr;
    uint64_t size;
};

struct qaic_manage_trans_activate_to_dev {
    struct qaic_manage_trans_hdr hdr;
    uint32_t queue_size;
    uint32_t eventfd;
    uint32_t options;
    uint32_t pad;
};

struct qaic_manage_trans_activate_from_dev {
    struct qaic_manage_trans_hdr hdr;
    uint32_t status;
    uint32_t dbc_id;
    uint64_t options;
};

struct qaic_manage_trans_deactivate {
    struct qaic_manage_trans_hdr hdr;
    uint32_t dbc_id;
    uint32_t pad;
};

struct qaic_manage_trans_status_to_dev {
    struct qaic_manage_trans_hdr hdr;
};

struct qaic_manage_trans_status_from_dev {
    struct qaic_manage_trans_hdr hdr;
    uint16_t major;
    uint16_t minor;
    uint32_t status;
    uint64_t status_flags;
};

struct qaic_manage_msg {
    uint32_t len;
    uint32_t count;
    uint64_t data;
};

struct qaic_create_bo {
    uint64_t size;
    uint32_t handle;
    uint32_t pad;
};

struct qaic_mmap_bo {
    uint32_t handle;
    uint32_t pad;
    uint64_t offset;
};

struct qaic_sem {
    uint16_t val;
    uint8_t index;
    uint8_t presync;
    uint8_t cmd;
    uint8_t flags;
    uint16_t pad;
};

struct qaic_attach_slice_entry {
    uint64_t size;
    struct qaic_sem sem0;
    struct qaic_sem sem1;
    struct qaic_sem sem2;
    struct qaic_sem sem3;
    uint64_t dev_addr;
    uint64_t db_addr;
    uint32_t db_data;
    uint32_t db_len;
    uint64_t offset;
};

struct qaic_attach_slice_hdr {
    uint32_t count;
    uint32_t dbc_id;
    uint32_t handle;
    uint32_t dir;
    uint64_t size;
};

struct qaic_attach_slice {
    struct qaic_attach_slice_hdr hdr;
    uint64_t data;
};

struct qaic_execute_entry {
    uint32_t handle;
    uint32_t dir;
};

struct qaic_partial_execute_entry {
    uint32_t handle;
    uint32_t dir;
    uint64_t resize;
};

struct qaic_execute_hdr {
    uint32_t count;
    uint32_t dbc_id;
};

struct qaic_execute {
    struct qaic_execute_hdr hdr;
    uint64_t data;
};

struct qaic_wait {
    uint32_t handle;
    uint32_t timeout;
    uint32_t dbc_id;
    uint32_t pad;
};

struct qaic_perf_stats_hdr {
    uint16_t count;
    uint16_t pad;
    uint32_t dbc_id;
};

struct qaic_perf_stats {
    struct qaic_perf_stats_hdr hdr;
    uint64_t data;
};

struct qaic_perf_stats_entry {
    uint32_t handle;
    uint32_t queue_level_before;
    uint32_t num_queue_element;
    uint32_t submit_latency_us;
    uint32_t device_latency_us;
    uint32_t pad;
};

struct qaic_detach_slice {
    uint32_t handle;
    uint32_t pad;
};
"""


class Trans(enum.IntEnum):
    """``QAIC_TRANS_*``: the ``type`` of one MANAGE transaction."""

    UNDEFINED = 0
    PASSTHROUGH_FROM_USR = 1
    PASSTHROUGH_TO_USR = 2
    PASSTHROUGH_FROM_DEV = 3
    PASSTHROUGH_TO_DEV = 4
    DMA_XFER_FROM_USR = 5
    DMA_XFER_TO_DEV = 6
    ACTIVATE_FROM_USR = 7
    ACTIVATE_FROM_DEV = 8
    ACTIVATE_TO_DEV = 9
    DEACTIVATE_FROM_USR = 10
    DEACTIVATE_FROM_DEV = 11
    STATUS_FROM_USR = 12
    STATUS_TO_USR = 13
    STATUS_FROM_DEV = 14
    STATUS_TO_DEV = 15
    TERMINATE_FROM_DEV = 16
    TERMINATE_TO_DEV = 17
    DMA_XFER_CONT = 18
    VALIDATE_PARTITION_FROM_DEV = 19
    VALIDATE_PARTITION_TO_DEV = 20


class Sem(enum.IntEnum):
    """``QAIC_SEM_*``: semaphore commands of a slice (the two SYNCFENCE values are flags)."""

    NOP = 0
    INIT = 1
    INC = 2
    DEC = 3
    WAIT_EQUAL = 4
    WAIT_GT_EQ = 5
    WAIT_GT_0 = 6


QAIC_SEM_INSYNCFENCE = 2
QAIC_SEM_OUTSYNCFENCE = 1
QAIC_MANAGE_MAX_MSG_LENGTH = 4096  # SZ_4K

_b = HeaderBuilder("qaic", "drm/qaic_accel.h", _CDEF)
_b.constants(Trans, "QAIC_TRANS_")
_b.constants(Sem, "QAIC_SEM_")
_b.constant("QAIC_SEM_INSYNCFENCE", QAIC_SEM_INSYNCFENCE)
_b.constant("QAIC_SEM_OUTSYNCFENCE", QAIC_SEM_OUTSYNCFENCE)
# QAIC_MANAGE_MAX_MSG_LENGTH expands to SZ_4K, which no UAPI header defines: not probed.


def _ioctl(cmd_name: str, cmd: int, direction: Direction, struct: str) -> IoctlSpec:
    # Every qaic ioctl is DRM_IOCTL_QAIC_<CMD> at DRM_COMMAND_BASE + DRM_QAIC_<CMD>.
    return _b.driver_ioctl(
        f"DRM_IOCTL_QAIC_{cmd_name}",
        direction,
        cmd,
        f"struct qaic_{struct}",
        cmd_name=f"DRM_QAIC_{cmd_name}",
    )


_RW = Direction.READWRITE
_W = Direction.WRITE
MANAGE = _ioctl("MANAGE", 0x00, _RW, "manage_msg")
CREATE_BO = _ioctl("CREATE_BO", 0x01, _RW, "create_bo")
MMAP_BO = _ioctl("MMAP_BO", 0x02, _RW, "mmap_bo")
ATTACH_SLICE_BO = _ioctl("ATTACH_SLICE_BO", 0x03, _W, "attach_slice")
EXECUTE_BO = _ioctl("EXECUTE_BO", 0x04, _W, "execute")
PARTIAL_EXECUTE_BO = _ioctl("PARTIAL_EXECUTE_BO", 0x05, _W, "execute")
WAIT_BO = _ioctl("WAIT_BO", 0x06, _W, "wait")
PERF_STATS_BO = _ioctl("PERF_STATS_BO", 0x07, _RW, "perf_stats")
DETACH_SLICE_BO = _ioctl("DETACH_SLICE_BO", 0x08, _W, "detach_slice")

HEADER = _b.build()
