"""etnaviv's UAPI (``include/uapi/drm/etnaviv_drm.h``): Vivante GPU and NPU cores.

One etnaviv DRM device drives every Vivante core of the SoC; each core is a *pipe* (``pipe``
0..``ETNA_MAX_PIPES - 1`` in the ioctls). ``GET_PARAM`` reads one identity value of a pipe:
model, revision, product id, customer id and ECO id (which together name the core, and from
which the kernel's and Mesa's hardware databases tell an NPU core from a GPU core), the
feature words, and the core's limits. ``GEM_NEW``/``GEM_INFO`` allocate a BO and give its mmap
offset; ``GEM_CPU_PREP``/``GEM_CPU_FINI`` bracket CPU access (waiting for the GPU with an
absolute CLOCK_MONOTONIC timeout); ``GEM_SUBMIT`` queues a command stream, copied by the kernel,
with a table of the BOs it references and relocations patching their addresses into the
stream; ``ETNA_SUBMIT_FENCE_FD_OUT`` returns a sync_file of the job's fence, and
``WAIT_FENCE`` waits for a fence number. No priority and no job status in the UAPI.

Timeouts are a ``struct drm_etnaviv_timespec`` (absolute ``CLOCK_MONOTONIC``), not nanoseconds.
"""

from __future__ import annotations

import enum

from npud.abi.header import HeaderBuilder
from npud.abi.ioc import Direction

ETNA_MAX_PIPES = 4
ETNAVIV_PARAM_SOFTPIN_START_ADDR = 0x1B
"""GET_PARAM: the first GPU virtual address userspace may pin BOs at (``~0``: no softpin)."""

_CDEF = """
struct drm_etnaviv_timespec {
    int64_t tv_sec;
    int64_t tv_nsec;
};

struct drm_etnaviv_param {
    uint32_t pipe;
    uint32_t param;
    uint64_t value;
};

struct drm_etnaviv_gem_new {
    uint64_t size;
    uint32_t flags;
    uint32_t handle;
};

struct drm_etnaviv_gem_info {
    uint32_t handle;
    uint32_t pad;
    uint64_t offset;
};

struct drm_etnaviv_gem_cpu_prep {
    uint32_t handle;
    uint32_t op;
    struct drm_etnaviv_timespec timeout;
};

struct drm_etnaviv_gem_cpu_fini {
    uint32_t handle;
    uint32_t flags;
};

struct drm_etnaviv_gem_submit_reloc {
    uint32_t submit_offset;
    uint32_t reloc_idx;
    uint64_t reloc_offset;
    uint32_t flags;
};

struct drm_etnaviv_gem_submit_bo {
    uint32_t flags;
    uint32_t handle;
    uint64_t presumed;
};

struct drm_etnaviv_gem_submit_pmr {
    uint32_t flags;
    uint8_t domain;
    uint8_t pad;
    uint16_t signal;
    uint32_t sequence;
    uint32_t read_offset;
    uint32_t read_idx;
};

struct drm_etnaviv_gem_submit {
    uint32_t fence;
    uint32_t pipe;
    uint32_t exec_state;
    uint32_t nr_bos;
    uint32_t nr_relocs;
    uint32_t stream_size;
    uint64_t bos;
    uint64_t relocs;
    uint64_t stream;
    uint32_t flags;
    int32_t fence_fd;
    uint64_t pmrs;
    uint32_t nr_pmrs;
    uint32_t pad;
};

struct drm_etnaviv_wait_fence {
    uint32_t pipe;
    uint32_t fence;
    uint32_t flags;
    uint32_t pad;
    struct drm_etnaviv_timespec timeout;
};
"""


class Param(enum.IntEnum):
    """``ETNAVIV_PARAM_GPU_*``: what ``GET_PARAM`` reads (the identity and features used here)."""

    MODEL = 0x01
    REVISION = 0x02
    FEATURES_0 = 0x03
    FEATURES_1 = 0x04
    FEATURES_2 = 0x05
    FEATURES_3 = 0x06
    FEATURES_4 = 0x07
    FEATURES_5 = 0x08
    FEATURES_6 = 0x09
    FEATURES_7 = 0x0A
    FEATURES_8 = 0x0B
    FEATURES_9 = 0x0C
    FEATURES_10 = 0x0D
    FEATURES_11 = 0x0E
    FEATURES_12 = 0x0F
    SHADER_CORE_COUNT = 0x14
    PRODUCT_ID = 0x1C
    CUSTOMER_ID = 0x1D
    ECO_ID = 0x1E


FEATURE_PARAMS = tuple(p for p in Param if p.name.startswith("FEATURES_"))
"""The 13 feature words (``features``, ``minor_features0..11``), in order."""


class BoFlag(enum.IntFlag):
    """``ETNA_BO_*``: cache mode of a new BO (exactly one) and mapping flags."""

    CACHED = 0x00010000
    WC = 0x00020000
    UNCACHED = 0x00040000
    FORCE_MMU = 0x00100000


ETNA_BO_CACHE_MASK = 0x000F0000


class Prep(enum.IntFlag):
    """``ETNA_PREP_*``: what ``GEM_CPU_PREP`` waits for."""

    READ = 0x01
    WRITE = 0x02
    NOSYNC = 0x04


class SubmitBo(enum.IntFlag):
    """``ETNA_SUBMIT_BO_*``: how a submitted job uses a BO."""

    READ = 0x0001
    WRITE = 0x0002


class SubmitFlag(enum.IntFlag):
    """``ETNA_SUBMIT_*``: flags of ``GEM_SUBMIT``."""

    NO_IMPLICIT = 0x0001
    FENCE_FD_IN = 0x0002
    FENCE_FD_OUT = 0x0004
    SOFTPIN = 0x0008


ETNA_SUBMIT_FLAGS = 0x000F


class Pipe(enum.IntEnum):
    """``ETNA_PIPE_*``: the initial execution state of a submission."""

    P3D = 0x00
    P2D = 0x01
    VG = 0x02


ETNA_WAIT_NONBLOCK = 0x01


class Cmd(enum.IntEnum):
    """``DRM_ETNAVIV_*``: the driver's command numbers."""

    GET_PARAM = 0x00
    GEM_NEW = 0x02
    GEM_INFO = 0x03
    GEM_CPU_PREP = 0x04
    GEM_CPU_FINI = 0x05
    GEM_SUBMIT = 0x06
    WAIT_FENCE = 0x07


_b = HeaderBuilder("etnaviv", "drm/etnaviv_drm.h", _CDEF)
_b.constant("ETNA_MAX_PIPES", ETNA_MAX_PIPES)
_b.constant("ETNAVIV_PARAM_SOFTPIN_START_ADDR", ETNAVIV_PARAM_SOFTPIN_START_ADDR)
_b.constants(Param, "ETNAVIV_PARAM_GPU_")
_b.constants(BoFlag, "ETNA_BO_")
_b.constant("ETNA_BO_CACHE_MASK", ETNA_BO_CACHE_MASK)
_b.constants(Prep, "ETNA_PREP_")
_b.constants(SubmitBo, "ETNA_SUBMIT_BO_")
_b.constants(SubmitFlag, "ETNA_SUBMIT_")
_b.constant("ETNA_SUBMIT_FLAGS", ETNA_SUBMIT_FLAGS)
_b.constant("ETNA_PIPE_3D", Pipe.P3D)
_b.constant("ETNA_PIPE_2D", Pipe.P2D)
_b.constant("ETNA_PIPE_VG", Pipe.VG)
_b.constant("ETNA_WAIT_NONBLOCK", ETNA_WAIT_NONBLOCK)

_RW = Direction.READWRITE
_W = Direction.WRITE
GET_PARAM = _b.driver_ioctl(
    "DRM_IOCTL_ETNAVIV_GET_PARAM",
    _RW,
    Cmd.GET_PARAM,
    "struct drm_etnaviv_param",
    cmd_name="DRM_ETNAVIV_GET_PARAM",
)
GEM_NEW = _b.driver_ioctl(
    "DRM_IOCTL_ETNAVIV_GEM_NEW",
    _RW,
    Cmd.GEM_NEW,
    "struct drm_etnaviv_gem_new",
    cmd_name="DRM_ETNAVIV_GEM_NEW",
)
GEM_INFO = _b.driver_ioctl(
    "DRM_IOCTL_ETNAVIV_GEM_INFO",
    _RW,
    Cmd.GEM_INFO,
    "struct drm_etnaviv_gem_info",
    cmd_name="DRM_ETNAVIV_GEM_INFO",
)
GEM_CPU_PREP = _b.driver_ioctl(
    "DRM_IOCTL_ETNAVIV_GEM_CPU_PREP",
    _W,
    Cmd.GEM_CPU_PREP,
    "struct drm_etnaviv_gem_cpu_prep",
    cmd_name="DRM_ETNAVIV_GEM_CPU_PREP",
)
GEM_CPU_FINI = _b.driver_ioctl(
    "DRM_IOCTL_ETNAVIV_GEM_CPU_FINI",
    _W,
    Cmd.GEM_CPU_FINI,
    "struct drm_etnaviv_gem_cpu_fini",
    cmd_name="DRM_ETNAVIV_GEM_CPU_FINI",
)
GEM_SUBMIT = _b.driver_ioctl(
    "DRM_IOCTL_ETNAVIV_GEM_SUBMIT",
    _RW,
    Cmd.GEM_SUBMIT,
    "struct drm_etnaviv_gem_submit",
    cmd_name="DRM_ETNAVIV_GEM_SUBMIT",
)
WAIT_FENCE = _b.driver_ioctl(
    "DRM_IOCTL_ETNAVIV_WAIT_FENCE",
    _W,
    Cmd.WAIT_FENCE,
    "struct drm_etnaviv_wait_fence",
    cmd_name="DRM_ETNAVIV_WAIT_FENCE",
)

HEADER = _b.build()
