"""The kernel file an accel adapter talks to, and the helpers every ioctl needs.

:class:`KernelFile` is the injectable set of file-descriptor operations (``ioctl``, ``mmap``,
``fileno``, ``close``). In the daemon it is an opened ``/dev/accel/accel*`` node whose ioctls go
through the one choke point of :mod:`npud.abi` (:func:`open_node`); in tests it is a fake kernel
that validates every request the way the driver does (``tests/devices/fakekernel``).
:func:`translate` turns a failed ioctl into an npud error through the one errno table.
"""

from __future__ import annotations

import mmap
import time
from collections.abc import Callable
from typing import Any, NewType, Protocol

from npud.abi.header import IoctlSpec, Struct
from npud.devices.errno_map import error_for
from npud.errors import DeviceLost, NpudError

KernelHandle = NewType("KernelHandle", int)
"""A kernel object id other than a BO: an ivpu cmdq id, an amdxdna hwctx or syncobj handle."""


class KernelFile(Protocol):
    """The file-descriptor operations an adapter needs; injectable so tests use a fake kernel.

    ``ioctl`` passes ``arg`` (a cffi struct from :mod:`npud.abi`, updated in place) to the
    request of ``spec`` and raises ``OSError`` carrying the errno, with ``spec.name`` in the
    message, exactly as the :mod:`npud.abi` choke point does (retrying EINTR/EAGAIN first).
    """

    def ioctl(self, spec: IoctlSpec, arg: Struct | None) -> int | None:
        """Run one ioctl. Raises OSError(errno)."""
        ...

    def mmap(self, offset: int, length: int) -> mmap.mmap | memoryview:
        """Map ``length`` bytes at the fake offset ``offset`` (shared, read-write)."""
        ...

    def fileno(self) -> int:
        """The file descriptor."""
        ...

    def close(self) -> None:
        """Close the file; idempotent."""
        ...


def open_node(path: str) -> KernelFile:
    """Open a real accel node (``/dev/accel/accelN``) as a :class:`KernelFile`.

    Its ioctls go through :mod:`npud.abi`'s one choke point (EINTR/EAGAIN retry, errno kept).

    Raises:
        DeviceLost: the node does not exist or cannot be opened.
    """
    from npud.abi.drmfile import DrmFile

    try:
        return DrmFile.open(path)
    except OSError as exc:
        raise DeviceLost(f"cannot open {path}: {exc.strerror}") from exc


def opener_for(target: Callable[[], KernelFile] | str) -> Callable[[], KernelFile]:
    """An opener from a node path or an opener (tests pass a fake kernel's ``open``)."""
    if isinstance(target, str):
        path = target
        return lambda: open_node(path)
    return target


def translate(
    exc: OSError, spec: IoctlSpec, overrides: dict[int, type[NpudError]] | None = None
) -> NpudError:
    """The npud error for a failed ioctl, through the one errno table (driver overrides first)."""
    return error_for(exc, ioctl=spec.name, overrides=overrides)


def absolute_timeout_ns(seconds: float) -> int:
    """An absolute CLOCK_MONOTONIC deadline in ns, as ``drm_timeout_abs_to_jiffies`` expects."""
    return time.monotonic_ns() + int(seconds * 1e9)


def pointer(ffi: Any, cdata: Any) -> int:
    """The address of a cffi array as the ``__u64`` the UAPI wants (0 for ``None``)."""
    return 0 if cdata is None else int(ffi.cast("uintptr_t", cdata))
