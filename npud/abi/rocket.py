"""Rocket's UAPI (``include/uapi/drm/rocket_accel.h``): the Rockchip RK3588 NPU.

Rocket allocates buffers with ``CREATE_BO`` (which returns the NPU's DMA address and the mmap
offset at once), brackets CPU access with ``PREP_BO`` (wait for the NPU, with a timeout) and
``FINI_BO``, and submits jobs made of register-command tasks with ``SUBMIT``. A job lists its
input and output BOs; the kernel orders jobs through implicit fences on them. There is no
priority or context in the UAPI: every file gets the same scheduler entity priority, so npud
does all ordering itself. The ``*_struct_size`` fields let the kernel accept older/newer
userspace structs; npud fills them with the cffi ``sizeof`` of its declarations.
"""

from __future__ import annotations

from npud.abi.header import HeaderBuilder
from npud.abi.ioc import Direction

_CDEF = """
struct drm_rocket_create_bo {
    uint32_t size;
    uint32_t handle;
    uint64_t dma_address;
    uint64_t offset;
};

struct drm_rocket_prep_bo {
    uint32_t handle;
    uint32_t reserved;
    int64_t timeout_ns;
};

struct drm_rocket_fini_bo {
    uint32_t handle;
    uint32_t reserved;
};

struct drm_rocket_task {
    uint32_t regcmd;
    uint32_t regcmd_count;
};

struct drm_rocket_job {
    uint64_t tasks;
    uint64_t in_bo_handles;
    uint64_t out_bo_handles;
    uint32_t task_count;
    uint32_t task_struct_size;
    uint32_t in_bo_handle_count;
    uint32_t out_bo_handle_count;
};

struct drm_rocket_submit {
    uint64_t jobs;
    uint32_t job_count;
    uint32_t job_struct_size;
    uint64_t reserved;
};
"""

_b = HeaderBuilder("rocket", "drm/rocket_accel.h", _CDEF)
_RW = Direction.READWRITE
_W = Direction.WRITE
CREATE_BO = _b.driver_ioctl(
    "DRM_IOCTL_ROCKET_CREATE_BO",
    _RW,
    0x00,
    "struct drm_rocket_create_bo",
    cmd_name="DRM_ROCKET_CREATE_BO",
)
SUBMIT = _b.driver_ioctl(
    "DRM_IOCTL_ROCKET_SUBMIT",
    _W,
    0x01,
    "struct drm_rocket_submit",
    cmd_name="DRM_ROCKET_SUBMIT",
)
PREP_BO = _b.driver_ioctl(
    "DRM_IOCTL_ROCKET_PREP_BO",
    _W,
    0x02,
    "struct drm_rocket_prep_bo",
    cmd_name="DRM_ROCKET_PREP_BO",
)
FINI_BO = _b.driver_ioctl(
    "DRM_IOCTL_ROCKET_FINI_BO",
    _W,
    0x03,
    "struct drm_rocket_fini_bo",
    cmd_name="DRM_ROCKET_FINI_BO",
)

HEADER = _b.build()
