"""DRM core ioctls through npud.abi on a real kernel's vgem (runs inside the QEMU guest)."""

from __future__ import annotations

import errno
import mmap
import os
import select

import pytest

from npud.abi import drm, vgem
from npud.abi.drmfile import DrmFile, GemHandle
from npud.abi.ioctl import IoctlError
from npud.devices.errno_map import error_for
from npud.errors import (
    DeviceError,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unavailable,
    Unsupported,
)

pytestmark = pytest.mark.kernel


def test_version_names_vgem_on_both_nodes(card: DrmFile, render: DrmFile) -> None:
    """DRM_IOCTL_VERSION's two-step protocol returns vgem's name and description."""
    for node in (card, render):
        version = node.version()
        assert version.name == "vgem"
        assert version.description == "Virtual GEM provider"
        assert version.major >= 1


def test_get_cap_reports_prime_and_refuses_unknown_caps(card: DrmFile) -> None:
    """GET_CAP(PRIME) offers import and export; an unknown capability is refused by name."""
    prime = card.get_cap(drm.Cap.PRIME)
    assert prime & drm.PrimeCap.IMPORT
    assert prime & drm.PrimeCap.EXPORT
    with pytest.raises(IoctlError) as info:
        card.get_cap(0xFFFF)
    # A driver without modesetting answers EOPNOTSUPP for every non-core cap (vgem does);
    # a KMS driver answers EINVAL for an unknown one.
    assert info.value.errno in (errno.EOPNOTSUPP, errno.EINVAL)
    assert info.value.ioctl == "DRM_IOCTL_GET_CAP"


def test_dumb_buffer_create_mmap_write_read_close(card: DrmFile) -> None:
    """A dumb GEM buffer maps, keeps written bytes, and its handle closes exactly once."""
    buf = card.create_dumb(64, 64, 32)
    assert (buf.pitch, buf.size) == (256, 16384)
    offset = card.map_dumb(buf.handle)
    assert offset > 0
    view = card.mmap(offset, buf.size)
    pattern = bytes(range(256)) * 64
    view[:] = pattern
    again = card.mmap(card.map_dumb(buf.handle), buf.size)
    assert again[:] == pattern
    again.close()
    view.close()
    card.gem_close(buf.handle)
    with pytest.raises(IoctlError) as info:
        card.gem_close(buf.handle)
    err = error_for(info.value)
    assert isinstance(err, InvalidArgument)
    assert (err.errno, err.ioctl) == (errno.EINVAL, "DRM_IOCTL_GEM_CLOSE")


def test_dumb_buffers_are_not_render_allowed(render: DrmFile) -> None:
    """MODE_CREATE_DUMB on the render node is EACCES, which npud reports as PermissionDenied."""
    with pytest.raises(IoctlError) as info:
        render.create_dumb(16, 16, 32)
    assert isinstance(error_for(info.value), PermissionDenied)


def test_prime_export_and_import_share_the_bytes(card: DrmFile, render: DrmFile) -> None:
    """A buffer exported as dma-buf imports into another file; both see the same memory."""
    buf = card.create_dumb(1024, 1, 32)
    dmabuf = card.prime_handle_to_fd(buf.handle)
    try:
        assert os.readlink(f"/proc/self/fd/{dmabuf}").startswith("/dmabuf:")
        imported = render.prime_fd_to_handle(dmabuf)
        assert render.prime_fd_to_handle(dmabuf) == imported  # same object, same handle
        assert card.prime_fd_to_handle(dmabuf) == buf.handle  # self-import: the original
        src = card.mmap(card.map_dumb(buf.handle), buf.size)
        src[:5] = b"hello"
        # The dma-buf fd itself maps the same pages.
        shared = mmap.mmap(dmabuf, buf.size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        assert shared[:5] == b"hello"
        shared[5:10] = b"world"
        assert src[:10] == b"helloworld"
        shared.close()
        src.close()
        render.gem_close(imported)
    finally:
        os.close(dmabuf)
        card.gem_close(buf.handle)


def _ready(fd: int) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def test_a_vgem_fence_keeps_the_dmabuf_busy_until_signalled(card: DrmFile) -> None:
    """A write fence: poll on the dma-buf is not ready until FENCE_SIGNAL; errors are mapped."""
    buf = card.create_dumb(256, 1, 32)
    dmabuf = card.prime_handle_to_fd(buf.handle)
    try:
        assert _ready(dmabuf)
        fence = vgem.fence_attach(card, buf.handle, write=True)
        assert not _ready(dmabuf)
        with pytest.raises(IoctlError) as busy:
            vgem.fence_attach(card, buf.handle, write=True)
        assert isinstance(error_for(busy.value), Unavailable)  # EBUSY: a second writer
        vgem.fence_signal(card, fence)
        assert _ready(dmabuf)
        with pytest.raises(IoctlError) as twice:
            vgem.fence_signal(card, fence)
        gone = error_for(twice.value)
        assert isinstance(gone, NotFound)
        assert (gone.errno, gone.ioctl) == (errno.ENOENT, "DRM_IOCTL_VGEM_FENCE_SIGNAL")
    finally:
        os.close(dmabuf)
        card.gem_close(buf.handle)


def test_vgem_offers_no_syncobj_and_npud_reports_it_unsupported(card: DrmFile) -> None:
    """vgem's SYNCOBJ cap is 0: SYNCOBJ_CREATE is refused and maps to Unsupported."""
    assert card.get_cap(drm.Cap.SYNCOBJ) == 0
    assert card.get_cap(drm.Cap.SYNCOBJ_TIMELINE) == 0
    with pytest.raises(IoctlError) as info:
        card.call(drm.SYNCOBJ_CREATE, flags=0)
    err = error_for(info.value)
    assert isinstance(err, Unsupported)
    assert err.ioctl == "DRM_IOCTL_SYNCOBJ_CREATE"


def test_an_unknown_handle_is_not_found_with_errno_and_name(card: DrmFile) -> None:
    """PRIME export of a handle the file never had: ENOENT -> NotFound naming the ioctl."""
    with pytest.raises(IoctlError) as info:
        card.prime_handle_to_fd(GemHandle(0x7FFF))
    err = error_for(info.value, what="export buffer 32767")
    assert isinstance(err, NotFound)
    assert (err.errno, err.ioctl) == (errno.ENOENT, "DRM_IOCTL_PRIME_HANDLE_TO_FD")
    assert "export buffer 32767" in str(err)


def test_an_ioctl_on_a_closed_file_is_a_device_error_with_errno_and_name() -> None:
    """After close(), VERSION fails as EBADF -> DeviceError carrying errno and ioctl name."""
    node = DrmFile.open("/dev/dri/card0")
    node.close()
    node.close()  # idempotent
    with pytest.raises(IoctlError) as info:
        node.version()
    err = error_for(info.value)
    assert type(err) is DeviceError
    assert (err.errno, err.ioctl) == (errno.EBADF, "DRM_IOCTL_VERSION")
    assert node.statistics().failures == 1
