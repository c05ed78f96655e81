"""An open DRM or accel node, and typed calls for the DRM core ioctls.

:class:`DrmFile` owns one file descriptor on ``/dev/dri/cardN``, ``/dev/dri/renderD*`` or
``/dev/accel/accelN``. Every call goes through the choke point :func:`npud.abi.ioctl.ioctl`
with the kernel's ioctl name, so failures are :class:`~npud.abi.ioctl.IoctlError` (an
``OSError``) naming the call. After :meth:`DrmFile.close` the descriptor is gone and every call
fails with EBADF: a use-after-close never reaches another file that reused the number.

Kernel handles are per file: a GEM handle means nothing on another fd. It is typed
(:data:`GemHandle`) so it is not confused with npud's ids; the devices layer wraps it in its own
``BoHandle``. Driver-specific calls (syncobjs, submits) go through :meth:`DrmFile.call` with the
declared ioctl, in the adapter that needs them.

Ownership: the caller owns every handle a call returns until it closes or destroys it, and
every fd a call returns (dma-buf, sync_file) until it ``os.close``-es it. Closing the DrmFile
releases every handle of that file in the kernel (the kernel's own cleanup), but not the fds.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NewType

from npud.abi import drm
from npud.abi.header import IoctlSpec, Struct, lookup
from npud.abi.ioctl import ioctl

GemHandle = NewType("GemHandle", int)
"""A GEM buffer-object handle, valid on the DrmFile that created or imported it."""

_ffi = drm.ffi


@dataclass(frozen=True, slots=True)
class DrmVersion:
    """What ``DRM_IOCTL_VERSION`` reports: the driver's name, version and description."""

    major: int
    minor: int
    patchlevel: int
    name: str
    date: str
    description: str


@dataclass(frozen=True, slots=True)
class DumbBuffer:
    """A dumb buffer: its handle, row pitch and total size in bytes."""

    handle: GemHandle
    pitch: int
    size: int


@dataclass(frozen=True, slots=True)
class DrmFileStatistics:
    """A snapshot of one DrmFile's use."""

    path: str
    open: bool
    ioctls: int
    failures: int


class DrmFile:
    """One open DRM/accel file descriptor (an identity object) and the DRM core calls on it."""

    __slots__ = ("_failures", "_fd", "_ioctls", "path")

    def __init__(self, fd: int, path: str = "") -> None:
        """Take ownership of ``fd`` (an open DRM/accel node); ``path`` is for messages."""
        self._fd = fd
        self.path = path
        self._ioctls = 0
        self._failures = 0

    @classmethod
    def open(cls, path: str, *, flags: int = os.O_RDWR | os.O_CLOEXEC) -> DrmFile:
        """Open the node at ``path``; the returned DrmFile owns the descriptor.

        Raises:
            OSError: the open failed (ENOENT: no such node; EACCES: not in the node's group).
        """
        return cls(os.open(path, flags), path)

    # -- lifetime --------------------------------------------------------------------------

    def fileno(self) -> int:
        """The descriptor (``-1`` once closed). The DrmFile keeps owning it."""
        return self._fd

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._fd < 0

    def close(self) -> None:
        """Close the descriptor (idempotent); the kernel releases this file's handles."""
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)

    def __enter__(self) -> DrmFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def statistics(self) -> DrmFileStatistics:
        """A frozen snapshot of this file's ioctl counters."""
        return DrmFileStatistics(self.path, not self.closed, self._ioctls, self._failures)

    # -- the generic call --------------------------------------------------------------------

    def ioctl(self, spec: IoctlSpec, arg: Struct | None) -> int:
        """Issue ``spec`` with ``arg`` (a cffi struct of ``spec.struct``, updated in place).

        Raises:
            IoctlError: the kernel refused (``errno`` and ``ioctl`` tell which and why).
        """
        self._ioctls += 1
        try:
            return ioctl(self._fd, spec.request, arg, name=spec.name)
        except OSError:
            self._failures += 1
            raise

    def call(self, spec: IoctlSpec, **fields: Any) -> Struct:
        """Build ``spec.struct`` from ``fields``, issue ``spec``, and return the struct.

        Works for the ioctls of every declared header (the struct comes from the header that
        declares ``spec``), so driver adapters need no cffi of their own. Returns ``None`` for
        an argument-less ioctl.

        Raises:
            IoctlError: the kernel refused.
        """
        if spec.struct is None:
            self.ioctl(spec, None)
            return None
        arg = lookup(spec.header).new(spec.struct, **fields)
        self.ioctl(spec, arg)
        return arg

    # -- identity ----------------------------------------------------------------------------

    def version(self) -> DrmVersion:
        """The driver's name, version and description (``DRM_IOCTL_VERSION``).

        The kernel's two-step protocol: a first call reports the string lengths, a second
        fills buffers of those lengths.

        Raises:
            IoctlError: the kernel refused.
        """
        arg: Struct = _ffi.new("struct drm_version *")
        self.ioctl(drm.VERSION, arg)
        name = _ffi.new("char[]", arg.name_len + 1)
        date = _ffi.new("char[]", arg.date_len + 1)
        desc = _ffi.new("char[]", arg.desc_len + 1)
        arg.name, arg.date, arg.desc = name, date, desc
        self.ioctl(drm.VERSION, arg)

        def text(buf: Any, length: int) -> str:
            return bytes(_ffi.buffer(buf, length)).decode("utf-8", "replace")

        return DrmVersion(
            major=arg.version_major,
            minor=arg.version_minor,
            patchlevel=arg.version_patchlevel,
            name=text(name, arg.name_len),
            date=text(date, arg.date_len),
            description=text(desc, arg.desc_len),
        )

    def get_cap(self, cap: int) -> int:
        """The value of capability ``cap`` (a :class:`npud.abi.drm.Cap`).

        Raises:
            IoctlError: EINVAL for a capability the kernel does not know; EOPNOTSUPP where the
                driver lacks the feature the capability describes (e.g. DUMB_BUFFER on vgem).
        """
        return int(self.call(drm.GET_CAP, capability=cap).value)

    # -- GEM and PRIME -------------------------------------------------------------------------

    def gem_close(self, handle: GemHandle) -> None:
        """Drop this file's reference to a GEM object.

        Raises:
            IoctlError: EINVAL for a handle that this file does not hold.
        """
        self.call(drm.GEM_CLOSE, handle=handle)

    def prime_handle_to_fd(self, handle: GemHandle, *, writable: bool = True) -> int:
        """Export a GEM object as a dma-buf fd (close-on-exec), which the caller owns.

        Raises:
            IoctlError: ENOENT for an unknown handle; EOPNOTSUPP where the driver cannot export.
        """
        flags = drm.DRM_CLOEXEC | (drm.DRM_RDWR if writable else 0)
        return int(self.call(drm.PRIME_HANDLE_TO_FD, handle=handle, flags=flags).fd)

    def prime_fd_to_handle(self, dmabuf_fd: int) -> GemHandle:
        """Import a dma-buf as a GEM handle of this file (the same handle on re-import).

        The caller keeps owning ``dmabuf_fd``; the handle is the caller's to close.

        Raises:
            IoctlError: EBADF for a bad fd; EOPNOTSUPP where the driver cannot import.
        """
        return GemHandle(self.call(drm.PRIME_FD_TO_HANDLE, fd=dmabuf_fd).handle)

    # -- dumb buffers --------------------------------------------------------------------------

    def create_dumb(self, width: int, height: int, bpp: int) -> DumbBuffer:
        """Allocate a dumb buffer of ``height`` rows of ``width`` pixels of ``bpp`` bits.

        Raises:
            IoctlError: EACCES on a render node (dumb buffers are not render-allowed); ENOMEM.
        """
        arg = self.call(drm.MODE_CREATE_DUMB, width=width, height=height, bpp=bpp)
        return DumbBuffer(GemHandle(arg.handle), int(arg.pitch), int(arg.size))

    def map_dumb(self, handle: GemHandle) -> int:
        """The fake mmap offset of a dumb buffer on this file, for :meth:`mmap`.

        Raises:
            IoctlError: ENOENT for an unknown handle.
        """
        return int(self.call(drm.MODE_MAP_DUMB, handle=handle).offset)

    def mmap(self, offset: int, size: int) -> mmap.mmap:
        """Map ``size`` bytes of a GEM object at its fake ``offset`` (shared, read-write).

        The caller owns the mapping and closes it; it stays valid after the handle is closed
        (the mapping holds its own reference to the object).

        Raises:
            OSError: the kernel refused the mapping (EBADF once the file is closed).
        """
        return mmap.mmap(
            self._fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE, offset=offset
        )
