"""The one choke point through which npud calls every ioctl.

Every DRM and accel ioctl that npud issues goes through :func:`ioctl`, so that three rules hold
everywhere without being repeated:

- **Retry on EINTR and EAGAIN**, as libdrm's ``drmIoctl()`` does. A signal arriving while the
  kernel waits (a syncobj wait, a BO wait) interrupts the call with EINTR; the kernel's DRM
  ioctls are restartable, so the right answer is to issue them again with the same argument.
  EAGAIN is retried as well (libdrm does so without limit; we stop after
  :data:`MAX_EAGAIN_RETRIES` consecutive ones so that a wedged driver cannot spin the daemon).
- **Errors are OSError carrying the ioctl's name**: :class:`IoctlError` is an ``OSError`` whose
  ``errno`` is the kernel's and whose ``ioctl`` is the kernel macro name
  (``DRM_IOCTL_PRIME_HANDLE_TO_FD``). The abi layer classifies nothing; adapters translate
  errnos into npud errors through one table (:mod:`npud.devices.errno_map`).
- **In-place argument updates**: the argument is a cffi struct; its memory is handed to the
  kernel as a writable buffer (``fcntl.ioctl(fd, request, ffi.buffer(arg), True)``), so what the
  kernel writes back (an out handle, a size, an fd) is in the same struct afterwards.

The GIL is released during the system call (``fcntl.ioctl`` does so), so a blocking wait on one
thread does not stall the event loop's thread.
"""

from __future__ import annotations

import errno
import fcntl
import os
import threading
from dataclasses import dataclass

import cffi

from npud.abi.header import IoctlSpec, Struct

MAX_EAGAIN_RETRIES = 1000
"""Consecutive EAGAIN answers after which the call fails with EAGAIN."""

_ffi = cffi.FFI()


class IoctlError(OSError):
    """An ioctl failed: ``errno`` is the kernel's answer, ``ioctl`` the call's kernel name."""

    def __init__(self, err: int, ioctl: str) -> None:
        super().__init__(err, f"{ioctl}: {os.strerror(err)}")
        self.ioctl = ioctl

    def __reduce__(self) -> tuple[type[IoctlError], tuple[int, str]]:
        """Pickle by (errno, name), so the error crosses process boundaries intact."""
        return (type(self), (self.errno or 0, self.ioctl))


@dataclass(frozen=True, slots=True)
class IoctlStatistics:
    """How the choke point has been used since the process started."""

    calls: int
    failures: int
    eintr_retries: int
    eagain_retries: int


class _Counters:
    """Process-wide counters of the choke point (updated under a lock: callers may be threads)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls = 0
        self.failures = 0
        self.eintr = 0
        self.eagain = 0


_counters = _Counters()


def statistics() -> IoctlStatistics:
    """A frozen snapshot of the process-wide ioctl counters."""
    with _counters.lock:
        return IoctlStatistics(
            calls=_counters.calls,
            failures=_counters.failures,
            eintr_retries=_counters.eintr,
            eagain_retries=_counters.eagain,
        )


def ioctl(fd: int, request: int | IoctlSpec, arg: Struct | None, *, name: str | None = None) -> int:
    """Issue ioctl ``request`` (named ``name``) on ``fd`` with the cffi struct ``arg``.

    ``request`` is a request number with its kernel ``name``, or an :class:`IoctlSpec` (which
    carries both). ``arg`` is a cffi pointer to a struct (``ffi.new("struct x *")``), updated
    in place with what the kernel writes back, or ``None`` for an argument-less ioctl. The
    caller keeps ownership of ``arg`` and of ``fd``. Blocks as long as the kernel does (with
    the GIL released).

    Returns:
        The ioctl's non-negative return value (0 for almost every DRM ioctl).

    Raises:
        TypeError: a bare request number without a ``name``.
        IoctlError: the kernel refused the call (after EINTR/EAGAIN retries); also for a closed
            (negative) fd, as EBADF, so that a use-after-close reads like any other failure.
    """
    if isinstance(request, IoctlSpec):
        name = name if name is not None else request.name
        request = request.request
    elif name is None:
        raise TypeError("ioctl() needs the ioctl's kernel name with a bare request number")
    if fd < 0:
        _count_failure()
        raise IoctlError(errno.EBADF, name)
    buf = None if arg is None else _ffi.buffer(arg)
    eagain = 0
    while True:
        try:
            if buf is None:
                result = fcntl.ioctl(fd, request, 0)
            else:
                result = fcntl.ioctl(fd, request, buf, True)
        except OSError as exc:
            err = exc.errno if exc.errno is not None else errno.EIO
            if err == errno.EINTR:
                with _counters.lock:
                    _counters.eintr += 1
                continue
            if err == errno.EAGAIN and eagain < MAX_EAGAIN_RETRIES:
                eagain += 1
                with _counters.lock:
                    _counters.eagain += 1
                continue
            _count_failure()
            raise IoctlError(err, name) from None
        with _counters.lock:
            _counters.calls += 1
        return int(result)


def _count_failure() -> None:
    with _counters.lock:
        _counters.calls += 1
        _counters.failures += 1
