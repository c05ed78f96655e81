"""The DRM core UAPI (``include/uapi/drm/drm.h`` and the dumb-buffer part of ``drm_mode.h``).

What npud uses of the DRM core, on any DRM or accel node:

- identity: ``VERSION`` (driver name, version, description), ``GET_CAP``, ``SET_CLIENT_CAP``;
- GEM handles: ``GEM_CLOSE``, and dma-buf sharing with ``PRIME_HANDLE_TO_FD`` /
  ``PRIME_FD_TO_HANDLE``;
- synchronisation objects: ``SYNCOBJ_CREATE`` / ``DESTROY`` / ``WAIT`` / ``TIMELINE_WAIT`` /
  ``RESET`` / ``SIGNAL`` / ``TIMELINE_SIGNAL`` / ``QUERY`` / ``TRANSFER`` / ``EVENTFD`` and the
  fd conversions (``HANDLE_TO_FD`` with ``EXPORT_SYNC_FILE`` gives a sync_file that the event
  loop can poll: the completion path without a thread per job);
- dumb buffers: ``MODE_CREATE_DUMB`` / ``MAP_DUMB`` / ``DESTROY_DUMB``, the generic way to get
  CPU-mappable GEM memory from a driver without a private allocation ioctl (vgem).

Every struct member has the kernel's width and signedness: ``__u32`` is ``uint32_t``,
``__s64`` is ``int64_t``, ``__kernel_size_t`` is ``size_t``. Pointers that the kernel declares
as ``__u64`` (e.g. ``drm_syncobj_wait.handles``) stay ``uint64_t`` here: callers store
``int(ffi.cast("uintptr_t", array))``.
"""

from __future__ import annotations

import enum
import os

from npud.abi.header import DRM_COMMAND_BASE, DRM_COMMAND_END, DRM_IOCTL_TYPE, HeaderBuilder
from npud.abi.ioc import Direction

_CDEF = """
struct drm_version {
    int version_major;
    int version_minor;
    int version_patchlevel;
    size_t name_len;
    char *name;
    size_t date_len;
    char *date;
    size_t desc_len;
    char *desc;
};

struct drm_gem_close {
    uint32_t handle;
    uint32_t pad;
};

struct drm_gem_flink {
    uint32_t handle;
    uint32_t name;
};

struct drm_gem_open {
    uint32_t name;
    uint32_t handle;
    uint64_t size;
};

struct drm_get_cap {
    uint64_t capability;
    uint64_t value;
};

struct drm_set_client_cap {
    uint64_t capability;
    uint64_t value;
};

struct drm_prime_handle {
    uint32_t handle;
    uint32_t flags;
    int32_t fd;
};

struct drm_syncobj_create {
    uint32_t handle;
    uint32_t flags;
};

struct drm_syncobj_destroy {
    uint32_t handle;
    uint32_t pad;
};

struct drm_syncobj_handle {
    uint32_t handle;
    uint32_t flags;
    int32_t fd;
    uint32_t pad;
    uint64_t point;
};

struct drm_syncobj_transfer {
    uint32_t src_handle;
    uint32_t dst_handle;
    uint64_t src_point;
    uint64_t dst_point;
    uint32_t flags;
    uint32_t pad;
};

struct drm_syncobj_wait {
    uint64_t handles;
    int64_t timeout_nsec;
    uint32_t count_handles;
    uint32_t flags;
    uint32_t first_signaled;
    uint32_t pad;
    uint64_t deadline_nsec;
};

struct drm_syncobj_timeline_wait {
    uint64_t handles;
    uint64_t points;
    int64_t timeout_nsec;
    uint32_t count_handles;
    uint32_t flags;
    uint32_t first_signaled;
    uint32_t pad;
    uint64_t deadline_nsec;
};

struct drm_syncobj_eventfd {
    uint32_t handle;
    uint32_t flags;
    uint64_t point;
    int32_t fd;
    uint32_t pad;
};

struct drm_syncobj_array {
    uint64_t handles;
    uint32_t count_handles;
    uint32_t pad;
};

struct drm_syncobj_timeline_array {
    uint64_t handles;
    uint64_t points;
    uint32_t count_handles;
    uint32_t flags;
};

struct drm_mode_create_dumb {
    uint32_t height;
    uint32_t width;
    uint32_t bpp;
    uint32_t flags;
    uint32_t handle;
    uint32_t pitch;
    uint64_t size;
};

struct drm_mode_map_dumb {
    uint32_t handle;
    uint32_t pad;
    uint64_t offset;
};

struct drm_mode_destroy_dumb {
    uint32_t handle;
};
"""


class Cap(enum.IntEnum):
    """``DRM_CAP_*``: what ``GET_CAP`` can be asked."""

    DUMB_BUFFER = 0x1
    VBLANK_HIGH_CRTC = 0x2
    DUMB_PREFERRED_DEPTH = 0x3
    DUMB_PREFER_SHADOW = 0x4
    PRIME = 0x5
    TIMESTAMP_MONOTONIC = 0x6
    ASYNC_PAGE_FLIP = 0x7
    CURSOR_WIDTH = 0x8
    CURSOR_HEIGHT = 0x9
    ADDFB2_MODIFIERS = 0x10
    PAGE_FLIP_TARGET = 0x11
    CRTC_IN_VBLANK_EVENT = 0x12
    SYNCOBJ = 0x13
    SYNCOBJ_TIMELINE = 0x14
    ATOMIC_ASYNC_PAGE_FLIP = 0x15


class PrimeCap(enum.IntFlag):
    """``DRM_PRIME_CAP_*``: the bits of the ``DRM_CAP_PRIME`` value."""

    IMPORT = 0x1
    EXPORT = 0x2


class ClientCap(enum.IntEnum):
    """``DRM_CLIENT_CAP_*``: what ``SET_CLIENT_CAP`` can enable."""

    STEREO_3D = 1
    UNIVERSAL_PLANES = 2
    ATOMIC = 3
    ASPECT_RATIO = 4
    WRITEBACK_CONNECTORS = 5
    CURSOR_PLANE_HOTSPOT = 6
    PLANE_COLOR_PIPELINE = 7


class SyncobjCreateFlag(enum.IntFlag):
    """``DRM_SYNCOBJ_CREATE_*``."""

    SIGNALED = 1 << 0


class SyncobjFdToHandleFlag(enum.IntFlag):
    """``DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_*``."""

    IMPORT_SYNC_FILE = 1 << 0
    TIMELINE = 1 << 1


class SyncobjHandleToFdFlag(enum.IntFlag):
    """``DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_*``: ``EXPORT_SYNC_FILE`` gives a pollable sync_file."""

    EXPORT_SYNC_FILE = 1 << 0
    TIMELINE = 1 << 1


class SyncobjWaitFlag(enum.IntFlag):
    """``DRM_SYNCOBJ_WAIT_FLAGS_*``."""

    WAIT_ALL = 1 << 0
    WAIT_FOR_SUBMIT = 1 << 1
    WAIT_AVAILABLE = 1 << 2
    WAIT_DEADLINE = 1 << 3


class SyncobjQueryFlag(enum.IntFlag):
    """``DRM_SYNCOBJ_QUERY_FLAGS_*``."""

    LAST_SUBMITTED = 1 << 0


DRM_RDWR = os.O_RDWR
"""``DRM_RDWR``: the flag asking PRIME for a writable dma-buf mapping."""

DRM_CLOEXEC = os.O_CLOEXEC
"""``DRM_CLOEXEC``: the flag making an exported dma-buf fd close-on-exec."""

_b = HeaderBuilder("drm", "drm/drm.h", _CDEF)
_b.constants(Cap, "DRM_CAP_")
_b.constants(PrimeCap, "DRM_PRIME_CAP_")
_b.constants(ClientCap, "DRM_CLIENT_CAP_")
_b.constants(SyncobjCreateFlag, "DRM_SYNCOBJ_CREATE_")
_b.constants(SyncobjFdToHandleFlag, "DRM_SYNCOBJ_FD_TO_HANDLE_FLAGS_")
_b.constants(SyncobjHandleToFdFlag, "DRM_SYNCOBJ_HANDLE_TO_FD_FLAGS_")
_b.constants(SyncobjWaitFlag, "DRM_SYNCOBJ_WAIT_FLAGS_")
_b.constants(SyncobjQueryFlag, "DRM_SYNCOBJ_QUERY_FLAGS_")
_b.constant("DRM_IOCTL_BASE", DRM_IOCTL_TYPE)
_b.constant("DRM_COMMAND_BASE", DRM_COMMAND_BASE)
_b.constant("DRM_COMMAND_END", DRM_COMMAND_END)
_b.constant("DRM_RDWR", DRM_RDWR)
_b.constant("DRM_CLOEXEC", DRM_CLOEXEC)

_RW = Direction.READWRITE
_W = Direction.WRITE
VERSION = _b.ioctl("DRM_IOCTL_VERSION", _RW, 0x00, "struct drm_version")
GEM_CLOSE = _b.ioctl("DRM_IOCTL_GEM_CLOSE", _W, 0x09, "struct drm_gem_close")
GEM_FLINK = _b.ioctl("DRM_IOCTL_GEM_FLINK", _RW, 0x0A, "struct drm_gem_flink")
GEM_OPEN = _b.ioctl("DRM_IOCTL_GEM_OPEN", _RW, 0x0B, "struct drm_gem_open")
GET_CAP = _b.ioctl("DRM_IOCTL_GET_CAP", _RW, 0x0C, "struct drm_get_cap")
SET_CLIENT_CAP = _b.ioctl("DRM_IOCTL_SET_CLIENT_CAP", _W, 0x0D, "struct drm_set_client_cap")
PRIME_HANDLE_TO_FD = _b.ioctl("DRM_IOCTL_PRIME_HANDLE_TO_FD", _RW, 0x2D, "struct drm_prime_handle")
PRIME_FD_TO_HANDLE = _b.ioctl("DRM_IOCTL_PRIME_FD_TO_HANDLE", _RW, 0x2E, "struct drm_prime_handle")
MODE_CREATE_DUMB = _b.ioctl("DRM_IOCTL_MODE_CREATE_DUMB", _RW, 0xB2, "struct drm_mode_create_dumb")
MODE_MAP_DUMB = _b.ioctl("DRM_IOCTL_MODE_MAP_DUMB", _RW, 0xB3, "struct drm_mode_map_dumb")
MODE_DESTROY_DUMB = _b.ioctl(
    "DRM_IOCTL_MODE_DESTROY_DUMB", _RW, 0xB4, "struct drm_mode_destroy_dumb"
)
SYNCOBJ_CREATE = _b.ioctl("DRM_IOCTL_SYNCOBJ_CREATE", _RW, 0xBF, "struct drm_syncobj_create")
SYNCOBJ_DESTROY = _b.ioctl("DRM_IOCTL_SYNCOBJ_DESTROY", _RW, 0xC0, "struct drm_syncobj_destroy")
SYNCOBJ_HANDLE_TO_FD = _b.ioctl(
    "DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD", _RW, 0xC1, "struct drm_syncobj_handle"
)
SYNCOBJ_FD_TO_HANDLE = _b.ioctl(
    "DRM_IOCTL_SYNCOBJ_FD_TO_HANDLE", _RW, 0xC2, "struct drm_syncobj_handle"
)
SYNCOBJ_WAIT = _b.ioctl("DRM_IOCTL_SYNCOBJ_WAIT", _RW, 0xC3, "struct drm_syncobj_wait")
SYNCOBJ_RESET = _b.ioctl("DRM_IOCTL_SYNCOBJ_RESET", _RW, 0xC4, "struct drm_syncobj_array")
SYNCOBJ_SIGNAL = _b.ioctl("DRM_IOCTL_SYNCOBJ_SIGNAL", _RW, 0xC5, "struct drm_syncobj_array")
SYNCOBJ_TIMELINE_WAIT = _b.ioctl(
    "DRM_IOCTL_SYNCOBJ_TIMELINE_WAIT", _RW, 0xCA, "struct drm_syncobj_timeline_wait"
)
SYNCOBJ_QUERY = _b.ioctl("DRM_IOCTL_SYNCOBJ_QUERY", _RW, 0xCB, "struct drm_syncobj_timeline_array")
SYNCOBJ_TRANSFER = _b.ioctl("DRM_IOCTL_SYNCOBJ_TRANSFER", _RW, 0xCC, "struct drm_syncobj_transfer")
SYNCOBJ_TIMELINE_SIGNAL = _b.ioctl(
    "DRM_IOCTL_SYNCOBJ_TIMELINE_SIGNAL", _RW, 0xCD, "struct drm_syncobj_timeline_array"
)
SYNCOBJ_EVENTFD = _b.ioctl("DRM_IOCTL_SYNCOBJ_EVENTFD", _RW, 0xCF, "struct drm_syncobj_eventfd")

HEADER = _b.build()
ffi = HEADER.ffi
