"""The one table that turns a kernel errno into an npud error.

The abi layer raises ``OSError`` only (an :class:`npud.abi.ioctl.IoctlError` naming the ioctl);
every adapter translates through :func:`error_for`, so the same errno means the same npud error
on every device, and every translated error keeps the kernel's ``errno`` and the ioctl's name
(``NpudError.errno`` / ``NpudError.ioctl``) for the log line and the operator.

Why one table with per-driver overrides
---------------------------------------
Most errnos mean one thing across DRM drivers (ENOENT from a handle lookup: the handle is
unknown; ENOMEM/ENOSPC: the memory is full; ENODEV: ``drm_dev_enter`` failed because the
device was unplugged). A few are driver dialect: ivpu answers EBADFD once an MMU fault has
killed the context. An adapter passes such meanings as ``overrides``; the table stays the
default, so no adapter grows its own.

EINTR and EAGAIN never reach this table: the abi choke point retries them.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Mapping

from npud.errors import (
    AlreadyExists,
    Cancelled,
    DeviceError,
    DeviceLost,
    FailedPrecondition,
    InvalidArgument,
    JobTimedOut,
    NotFound,
    NpudError,
    OutOfDeviceMemory,
    PermissionDenied,
    Unavailable,
    Unsupported,
)

ERRNO_TABLE: Mapping[int, type[NpudError]] = {
    errno.ENOENT: NotFound,  # unknown GEM/syncobj/fence handle, unknown object id
    errno.ESRCH: NotFound,
    errno.EINVAL: InvalidArgument,  # malformed argument (GEM_CLOSE of an unknown handle, too)
    errno.E2BIG: InvalidArgument,
    errno.ERANGE: InvalidArgument,
    errno.EOVERFLOW: InvalidArgument,
    errno.EFAULT: InvalidArgument,  # a pointer in the argument that the kernel cannot read
    errno.ENOMEM: OutOfDeviceMemory,
    errno.ENOSPC: OutOfDeviceMemory,
    errno.EOPNOTSUPP: Unsupported,  # == ENOTSUP on Linux
    errno.ENOTTY: Unsupported,  # the driver has no such ioctl
    errno.ENOSYS: Unsupported,
    errno.EACCES: PermissionDenied,  # e.g. a KMS-only ioctl on a render node
    errno.EPERM: PermissionDenied,
    errno.ENODEV: DeviceLost,  # drm_dev_enter() failed: unplugged or unbound
    errno.ENXIO: DeviceLost,
    errno.ESHUTDOWN: DeviceLost,
    errno.EBUSY: Unavailable,  # e.g. a second exclusive vgem fence; may work later
    errno.EAGAIN: Unavailable,  # only after the choke point gave up retrying
    errno.EEXIST: AlreadyExists,
    errno.ETIME: JobTimedOut,  # a syncobj/BO wait ran past its deadline
    errno.ETIMEDOUT: JobTimedOut,
    errno.ECANCELED: Cancelled,
    errno.EBADFD: FailedPrecondition,  # the file's context is unusable (ivpu after a fault)
    errno.EBADF: DeviceError,  # a closed fd inside npud: a bug, never the client's fault
    errno.EIO: DeviceError,
}
"""errno -> npud error class; anything not listed becomes :class:`~npud.errors.DeviceError`."""


def error_class(
    err: int, overrides: Mapping[int, type[NpudError]] | None = None
) -> type[NpudError]:
    """The npud error class for ``err`` (``overrides`` first, then the table, then DeviceError)."""
    if overrides is not None and err in overrides:
        return overrides[err]
    return ERRNO_TABLE.get(err, DeviceError)


def error_for(
    exc: OSError,
    *,
    ioctl: str | None = None,
    what: str = "",
    overrides: Mapping[int, type[NpudError]] | None = None,
) -> NpudError:
    """The npud error for a failed kernel call, carrying its errno and ioctl name.

    ``ioctl`` defaults to the name an :class:`~npud.abi.ioctl.IoctlError` carries (or "" for a
    plain ``OSError`` such as a failed ``mmap``); ``what`` says, for a person, what npud was
    doing ("free buffer 7 on vgem0"). Callers ``raise error_for(exc, ...) from exc``.
    """
    code = exc.errno if exc.errno is not None else errno.EIO
    name = ioctl if ioctl is not None else str(getattr(exc, "ioctl", ""))
    cls = error_class(code, overrides)
    symbol = errno.errorcode.get(code, str(code))
    call = name or "the kernel call"
    message = f"{call} failed: {os.strerror(code)} ({symbol})"
    if what:
        message = f"{what}: {message}"
    if cls is DeviceError:
        return DeviceError(message, errno=code, ioctl=name)
    error = cls(message)
    error.errno = code
    error.ioctl = name
    return error
