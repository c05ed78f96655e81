"""vgem's UAPI (``include/uapi/drm/vgem_drm.h``): software fences on GEM buffers.

vgem is the kernel's virtual GEM provider: real shmem-backed GEM buffers on a real DRM device,
without hardware. Its two private ioctls attach a dma-fence to a buffer's reservation object
(``FENCE_ATTACH``; with ``VGEM_FENCE_WRITE`` an exclusive write fence, so a ``poll()`` on the
exported dma-buf is not ready until the fence signals) and signal it (``FENCE_SIGNAL``). npud's
vgem adapter uses them as the completion fences of jobs that the simulated NPU executes: the
kernel sees a buffer busy exactly while a job runs on it. An unsignalled vgem fence is
signalled by the kernel itself after 10 s (a watchdog in the driver).
"""

from __future__ import annotations

import enum
from typing import NewType

from npud.abi.drmfile import DrmFile, GemHandle
from npud.abi.header import HeaderBuilder
from npud.abi.ioc import Direction

_CDEF = """
struct drm_vgem_fence_attach {
    uint32_t handle;
    uint32_t flags;
    uint32_t out_fence;
    uint32_t pad;
};

struct drm_vgem_fence_signal {
    uint32_t fence;
    uint32_t flags;
};
"""


class FenceFlag(enum.IntFlag):
    """``VGEM_FENCE_*``: flags of ``FENCE_ATTACH``."""

    WRITE = 0x1


_b = HeaderBuilder("vgem", "drm/vgem_drm.h", _CDEF)
_b.constants(FenceFlag, "VGEM_FENCE_")
FENCE_ATTACH = _b.driver_ioctl(
    "DRM_IOCTL_VGEM_FENCE_ATTACH",
    Direction.READWRITE,
    0x1,
    "struct drm_vgem_fence_attach",
    cmd_name="DRM_VGEM_FENCE_ATTACH",
)
FENCE_SIGNAL = _b.driver_ioctl(
    "DRM_IOCTL_VGEM_FENCE_SIGNAL",
    Direction.WRITE,
    0x2,
    "struct drm_vgem_fence_signal",
    cmd_name="DRM_VGEM_FENCE_SIGNAL",
)

HEADER = _b.build()

VgemFence = NewType("VgemFence", int)
"""A vgem fence id, valid on the DrmFile that attached it until it is signalled."""


def fence_attach(file: DrmFile, handle: GemHandle, *, write: bool = True) -> VgemFence:
    """Attach an unsignalled fence to a GEM object; with ``write`` an exclusive write fence.

    While a write fence is pending, ``poll()`` on the object's dma-buf is not ready, and a
    second exclusive fence is refused with EBUSY. The caller signals it with
    :func:`fence_signal` (the kernel signals it itself after 10 s).

    Raises:
        IoctlError: ENOENT for an unknown handle; EBUSY for a second exclusive fence.
    """
    flags = FenceFlag.WRITE if write else 0
    return VgemFence(file.call(FENCE_ATTACH, handle=handle, flags=flags).out_fence)


def fence_signal(file: DrmFile, fence: VgemFence) -> None:
    """Signal a fence from :func:`fence_attach`.

    Raises:
        IoctlError: ENOENT for an unknown or already-signalled fence.
    """
    file.call(FENCE_SIGNAL, fence=fence)
