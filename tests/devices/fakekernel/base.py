"""The DRM core of the fake kernels: request decoding, GEM objects, fences, user memory.

A :class:`FakeDevice` is the "hardware plus driver" (jobs, engines, fault injection); each
:meth:`FakeDevice.open` returns a :class:`FakeFile`, one DRM file (``drm_file``) with its own GEM
handle table, which implements npud's ``KernelFile`` protocol. ``ioctl`` decodes the request
number like ``drm_ioctl()``: an unknown command is ``EINVAL``; the size and direction encoded in
the request must match the kernel's struct exactly, or the fake raises :class:`AbiMismatch` (a
test failure, not an errno: the real ``drm_ioctl`` would silently zero-fill or truncate, which is
the corruption these tests exist to catch).

Pointers inside structs are followed into this process's memory with ``ctypes``, the way
``copy_from_user``/``copy_to_user`` read the caller's address space.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import itertools
import os
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import cffi

_FFI = cffi.FFI()

DRM_CLOEXEC = os.O_CLOEXEC
DRM_RDWR = os.O_RDWR
PAGE = 4096

DIR_NONE, DIR_WRITE, DIR_READ = 0, 1, 2
DIR_RW = DIR_WRITE | DIR_READ


class AbiMismatch(AssertionError):
    """The request's encoded size or direction differs from the kernel's struct."""


def page_align(size: int) -> int:
    """Round ``size`` up to the page size (``PAGE_ALIGN``)."""
    return (size + PAGE - 1) // PAGE * PAGE


def fail(code: int) -> OSError:
    """The OSError a failed ioctl raises in userspace."""
    return OSError(code, os.strerror(code))


def read_user(addr: int, length: int) -> bytes:
    """copy_from_user: EFAULT for a NULL pointer with a non-zero length."""
    if length == 0:
        return b""
    if addr == 0:
        raise fail(errno.EFAULT)
    return ctypes.string_at(addr, length)


def write_user(addr: int, data: bytes) -> None:
    """copy_to_user: EFAULT for a NULL pointer."""
    if not data:
        return
    if addr == 0:
        raise fail(errno.EFAULT)
    ctypes.memmove(addr, data, len(data))


def read_u32s(addr: int, count: int) -> list[int]:
    """An array of ``count`` u32 from user memory."""
    return list(struct.unpack(f"<{count}I", read_user(addr, 4 * count)))


@dataclass(frozen=True, slots=True)
class Layout:
    """One kernel struct: a little-endian ``struct`` format and its field names."""

    fmt: str
    fields: tuple[str, ...]

    @property
    def size(self) -> int:
        """sizeof(struct)."""
        return struct.calcsize(self.fmt)

    def unpack(self, buf: memoryview | bytes) -> dict[str, Any]:
        """The struct's fields by name."""
        return dict(zip(self.fields, struct.unpack(self.fmt, bytes(buf)), strict=True))

    def pack_into(self, buf: memoryview, values: dict[str, Any]) -> None:
        """Write every field back (the ioctl's copy_to_user of the argument)."""
        buf[:] = struct.pack(self.fmt, *(values[f] for f in self.fields))


def layout(fmt: str, *fields: str) -> Layout:
    """A :class:`Layout`; ``fmt`` must be little-endian with explicit padding."""
    lay = Layout("<" + fmt, fields)
    struct.calcsize(lay.fmt)
    return lay


# -- fences ---------------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class FakeFence:
    """A dma_fence: signalled once, with an optional error; waiters wake, fds become readable."""

    device: FakeDevice
    signaled: bool = False
    error: int = 0
    callbacks: list[Callable[[], None]] = field(default_factory=list)

    def signal(self, error: int = 0) -> None:
        """Signal (idempotent); runs callbacks and wakes blocking waits."""
        with self.device.cond:
            if self.signaled:
                return
            self.signaled = True
            self.error = error
            callbacks, self.callbacks = self.callbacks, []
            self.device.cond.notify_all()
        for callback in callbacks:
            callback()


def fence_fd(fences: list[FakeFence]) -> int:
    """A pollable fd that turns readable once every fence in ``fences`` has signalled.

    Models a sync_file, and a dma-buf polled for EPOLLIN (its write fences). The caller owns it.
    """
    read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
    pending = [f for f in fences if not f.signaled]
    remaining = [len(pending)]
    lock = threading.Lock()

    def _one_done() -> None:
        with lock:
            remaining[0] -= 1
            done = remaining[0] == 0
        if done:
            with contextlib.suppress(OSError):  # the reader closed its fd: nobody listens
                os.write(write_end, b"\x01")
            os.close(write_end)

    if not pending:
        os.write(write_end, b"\x01")
        os.close(write_end)
        return read_end
    for fence in pending:
        with fence.device.cond:
            if fence.signaled:
                fire_now = True
            else:
                fence.callbacks.append(_one_done)
                fire_now = False
        if fire_now:
            _one_done()
    return read_end


# -- GEM ------------------------------------------------------------------------------------------


@dataclass(slots=True, eq=False)
class FakeBo:
    """A GEM object: its bytes, its fake mmap offset, the fences of jobs using it."""

    size: int
    data: bytearray
    mmap_offset: int
    device_address: int
    kind: str = "bo"
    write_fences: list[FakeFence] = field(default_factory=list)
    read_fences: list[FakeFence] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    closed: bool = False

    def busy_fences(self, *, include_reads: bool) -> list[FakeFence]:
        """Fences not yet signalled (writers, and readers when asked)."""
        fences = self.write_fences + (self.read_fences if include_reads else [])
        return [f for f in fences if not f.signaled]


@dataclass(frozen=True, slots=True)
class IoctlEntry:
    """One entry of a driver's ioctl table (``drm_ioctl_desc``)."""

    name: str
    direction: int
    layout: Layout | None
    handler: Callable[[FakeFile, dict[str, Any]], None]


_DRM_VERSION = layout(
    "iii4xQQQQQQ",
    "major",
    "minor",
    "patch",
    "name_len",
    "name",
    "date_len",
    "date",
    "desc_len",
    "desc",
)
_GEM_CLOSE = layout("II", "handle", "pad")
_GET_CAP = layout("QQ", "capability", "value")
_PRIME_HANDLE = layout("IIi", "handle", "flags", "fd")
_SYNCOBJ_DESTROY = layout("II", "handle", "pad")
_SYNCOBJ_HANDLE = layout("IIiIQ", "handle", "flags", "fd", "pad", "point")

DRM_CAP_PRIME = 0x5
DRM_CAP_SYNCOBJ = 0x13
DRM_CAP_SYNCOBJ_TIMELINE = 0x14
EXPORT_SYNC_FILE = 1 << 0
HANDLE_TO_FD_TIMELINE = 1 << 1


@dataclass(slots=True, eq=False)
class FakeSyncobj:
    """A (timeline) syncobj: points -> fences."""

    points: dict[int, FakeFence] = field(default_factory=dict)


class FakeDevice:
    """The device and its driver: identity, ioctl table, jobs, fault injection.

    Subclasses (one per driver) add their ioctls in :meth:`driver_ioctls` and their job model.
    ``auto_complete``: jobs finish as soon as they are submitted (the "null hardware" mode of
    ivpu's test modes); otherwise a test finishes them with :meth:`complete`.
    ``executor``: optional stand-in firmware, called with (command bytes, buffer views in the
    job's binding order) when a job completes; a returned string fails the job with that reason.
    """

    driver_name = ""
    driver_desc = ""
    driver_version = (0, 0, 0)
    caps: ClassVar[dict[int, int]] = {DRM_CAP_PRIME: 3}

    def __init__(self, *, auto_complete: bool = True) -> None:
        self.cond = threading.Condition()
        self.auto_complete = auto_complete
        self.executor: Callable[[bytes, list[memoryview]], str | None] | None = None
        self.firmware: Any = None  # an IsaFirmware running accepted jobs, if installed
        self.files: list[FakeFile] = []
        self.jobs: list[FakeJob] = []
        self.calls: list[str] = []
        self._offsets = itertools.count(0x100000, 0x100000)
        self._addresses = itertools.count(0x1000_0000, 0x100_0000)
        self.unplugged = False

    # -- the driver's table ---------------------------------------------------------------------

    def core_ioctls(self) -> dict[int, IoctlEntry]:
        """The DRM core ioctls every fake answers (nr -> entry)."""
        return {
            0x00: IoctlEntry("DRM_IOCTL_VERSION", DIR_RW, _DRM_VERSION, _version),
            0x09: IoctlEntry("DRM_IOCTL_GEM_CLOSE", DIR_WRITE, _GEM_CLOSE, _gem_close),
            0x0C: IoctlEntry("DRM_IOCTL_GET_CAP", DIR_RW, _GET_CAP, _get_cap),
            0x2D: IoctlEntry("DRM_IOCTL_PRIME_HANDLE_TO_FD", DIR_RW, _PRIME_HANDLE, _prime_export),
            0xC0: IoctlEntry(
                "DRM_IOCTL_SYNCOBJ_DESTROY", DIR_RW, _SYNCOBJ_DESTROY, _syncobj_destroy
            ),
            0xC1: IoctlEntry(
                "DRM_IOCTL_SYNCOBJ_HANDLE_TO_FD", DIR_RW, _SYNCOBJ_HANDLE, _syncobj_to_fd
            ),
        }

    def driver_ioctls(self) -> dict[int, IoctlEntry]:
        """The driver's private ioctls (nr relative to DRM_COMMAND_BASE)."""
        return {}

    def open(self) -> FakeFile:
        """open(2) on the node: a new DRM file."""
        if self.unplugged:
            raise fail(errno.ENODEV)
        file = FakeFile(self)
        self.files.append(file)
        self.on_open(file)
        return file

    def on_open(self, file: FakeFile) -> None:
        """Driver per-file setup (ivpu: a context id)."""

    def on_close(self, file: FakeFile) -> None:
        """Driver per-file teardown: the file's pending jobs are killed (drm_sched entity fini)."""
        for job in self.pending():
            if job.file is file:
                self.finish_raw(job, status=self.error_status())

    def new_bo(self, size: int, *, kind: str = "bo") -> FakeBo:
        """A zero-filled GEM object with fresh offsets."""
        return FakeBo(
            size=size,
            data=bytearray(size),
            mmap_offset=next(self._offsets),
            device_address=next(self._addresses),
            kind=kind,
        )

    # -- jobs -----------------------------------------------------------------------------------

    def queue_job(self, job: FakeJob) -> None:
        """Accept a job: attach its fences, then finish it now in auto mode."""
        with self.cond:
            self.jobs.append(job)
        for bo in job.writes:
            bo.write_fences.append(job.fence)
        for bo in job.reads:
            bo.read_fences.append(job.fence)
        if self.firmware is not None:
            self.firmware.accept(job)
        elif self.auto_complete:
            self.finish(job)

    def pending(self) -> list[FakeJob]:
        """Jobs not yet finished, in submission order."""
        with self.cond:
            return [j for j in self.jobs if not j.fence.signaled]

    def complete(self, count: int | None = None, *, status: int = 0) -> int:
        """Finish the oldest ``count`` pending jobs (all by default); returns how many."""
        jobs = self.pending()
        if count is not None:
            jobs = jobs[:count]
        for job in jobs:
            self.finish(job, status=status)
        return len(jobs)

    def finish(self, job: FakeJob, *, status: int = 0, error: int = 0) -> None:
        """Run the stand-in firmware (if any) and signal the job's fence."""
        if job.fence.signaled:
            return
        if status == 0 and self.executor is not None and job.command is not None:
            reason = self.executor(job.command, [memoryview(b.data) for b in job.bindings])
            if reason is not None:
                job.failure = reason
                status = self.error_status()
        self.finish_raw(job, status=status, error=error)

    def finish_raw(self, job: FakeJob, *, status: int = 0, error: int = 0) -> None:
        """Write the job's status where userspace reads it and signal its fence."""
        with self.cond:
            if job.fence.signaled:
                return
        job.status = status
        self.on_finish(job)
        job.fence.signal(error)

    def error_status(self) -> int:
        """The driver's status code for a failed job."""
        return 1

    def on_finish(self, job: FakeJob) -> None:
        """Driver hook: write the job's status where userspace reads it."""


@dataclass(slots=True, eq=False)
class FakeJob:
    """One job the fake driver accepted."""

    file: FakeFile
    engine: int
    fence: FakeFence
    reads: list[FakeBo]
    writes: list[FakeBo]
    bindings: list[FakeBo]
    command: bytes | None = None
    priority: int = 0
    queue: int = 0
    status: int = 0
    failure: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class FakeFile:
    """One open DRM file: a GEM handle table and the ioctl entry point (``KernelFile``)."""

    def __init__(self, device: FakeDevice) -> None:
        self.device = device
        self.bos: dict[int, FakeBo] = {}
        self.syncobjs: dict[int, FakeSyncobj] = {}
        self._handles = itertools.count(1)
        self.closed = False
        self.state: dict[str, Any] = {}
        self.table = dict(device.core_ioctls())
        self.table.update({0x40 + nr: e for nr, e in device.driver_ioctls().items()})

    # -- KernelFile -----------------------------------------------------------------------------

    def ioctl(self, spec: Any, arg: Any) -> None:
        """Decode the request like drm_ioctl() and run the driver's handler."""
        if self.closed:
            raise fail(errno.EBADF)
        request = int(spec.request)
        direction, size = request >> 30, (request >> 16) & 0x3FFF
        type_, nr = (request >> 8) & 0xFF, request & 0xFF
        if type_ != ord("d"):
            raise fail(errno.ENOTTY)
        entry = self.table.get(nr)
        if entry is None:
            raise fail(errno.EINVAL)  # drm_ioctl: nr outside the driver's table
        self.device.calls.append(entry.name)
        if spec.name != entry.name:
            raise AbiMismatch(f"request {request:#x} is {entry.name}, not {spec.name}")
        expected = entry.layout.size if entry.layout is not None else 0
        if size != expected or direction != entry.direction:
            raise AbiMismatch(
                f"{entry.name}: request encodes size {size} dir {direction}, the kernel's struct "
                f"is {expected} bytes dir {entry.direction}"
            )
        if self.device.unplugged:
            raise fail(errno.ENODEV)  # drm_dev_enter() fails once the device is unplugged
        if entry.layout is None:
            entry.handler(self, {})
            return
        buf = memoryview(_FFI.buffer(arg))
        if len(buf) != expected:
            raise AbiMismatch(f"{entry.name}: argument is {len(buf)} bytes, expected {expected}")
        values = entry.layout.unpack(buf)
        entry.handler(self, values)
        if direction & DIR_READ:
            entry.layout.pack_into(buf, values)

    def mmap(self, offset: int, length: int) -> memoryview:
        """mmap of a fake offset: the BO's bytes (EINVAL for an unknown offset or overrun)."""
        for bo in self.bos.values():
            if bo.mmap_offset == offset:
                if length > bo.size:
                    raise fail(errno.EINVAL)
                if bo.extra.get("no_mmap"):
                    raise fail(errno.EINVAL)
                return memoryview(bo.data)[:length]
        raise fail(errno.EINVAL)

    def fileno(self) -> int:
        """A stand-in descriptor number."""
        return 1000 + self.device.files.index(self)

    def close(self) -> None:
        """close(2): the driver's postclose, then every handle is dropped."""
        if self.closed:
            return
        self.device.on_close(self)
        self.closed = True
        self.bos.clear()

    # -- helpers for driver handlers -------------------------------------------------------------

    def add_bo(self, bo: FakeBo) -> int:
        """drm_gem_handle_create: a fresh non-zero handle."""
        handle = next(self._handles)
        self.bos[handle] = bo
        return handle

    def lookup(self, handle: int, *, missing: int = errno.ENOENT) -> FakeBo:
        """drm_gem_object_lookup, failing with ``missing``."""
        bo = self.bos.get(handle)
        if bo is None:
            raise fail(missing)
        return bo

    def add_syncobj(self) -> int:
        """drm_syncobj_create + handle."""
        handle = next(self._handles)
        self.syncobjs[handle] = FakeSyncobj()
        return handle


# -- core handlers (drivers/gpu/drm/drm_ioctl.c, drm_gem.c, drm_prime.c, drm_syncobj.c) ---------


def _copy_field(values: dict[str, Any], key: str, text: str) -> None:
    """drm_copy_field: copy min(len, actual) bytes when a buffer is given; len = actual."""
    data = text.encode()
    if values[key] and values[f"{key}_len"]:
        write_user(values[key], data[: values[f"{key}_len"]])
    values[f"{key}_len"] = len(data)


def _version(file: FakeFile, v: dict[str, Any]) -> None:
    dev = file.device
    v["major"], v["minor"], v["patch"] = dev.driver_version
    _copy_field(v, "name", dev.driver_name)
    _copy_field(v, "date", "0")
    _copy_field(v, "desc", dev.driver_desc)


def _gem_close(file: FakeFile, v: dict[str, Any]) -> None:
    # drm_gem_close_ioctl: pad must be 0; drm_gem_handle_delete: unknown handle -> -EINVAL
    if v["pad"]:
        raise fail(errno.EINVAL)
    bo = file.bos.pop(v["handle"], None)
    if bo is None:
        raise fail(errno.EINVAL)
    bo.closed = True


def _get_cap(file: FakeFile, v: dict[str, Any]) -> None:
    # drm_getcap: unknown capability -> -EINVAL
    caps = file.device.caps
    if v["capability"] not in caps:
        raise fail(errno.EINVAL)
    v["value"] = caps[v["capability"]]


def _prime_export(file: FakeFile, v: dict[str, Any]) -> None:
    # drm_prime_handle_to_fd_ioctl: flags other than DRM_CLOEXEC|DRM_RDWR -> -EINVAL;
    # unknown handle -> -ENOENT. The fd polls readable when the BO's write fences signal.
    if v["flags"] & ~(DRM_CLOEXEC | DRM_RDWR):
        raise fail(errno.EINVAL)
    bo = file.lookup(v["handle"])
    v["fd"] = fence_fd(bo.busy_fences(include_reads=False))


def _syncobj_destroy(file: FakeFile, v: dict[str, Any]) -> None:
    if v["pad"]:
        raise fail(errno.EINVAL)
    if file.syncobjs.pop(v["handle"], None) is None:
        raise fail(errno.EINVAL)


def _syncobj_to_fd(file: FakeFile, v: dict[str, Any]) -> None:
    # drm_syncobj_handle_to_fd_ioctl: pad must be 0; TIMELINE needs EXPORT_SYNC_FILE;
    # drm_syncobj_export_sync_file -> drm_syncobj_find_fence: unknown handle -> -ENOENT,
    # a point without a fence yet -> -EINVAL.
    if v["pad"]:
        raise fail(errno.EINVAL)
    if v["flags"] not in (EXPORT_SYNC_FILE, EXPORT_SYNC_FILE | HANDLE_TO_FD_TIMELINE):
        raise fail(errno.EINVAL)
    syncobj = file.syncobjs.get(v["handle"])
    if syncobj is None:
        raise fail(errno.ENOENT)
    point = v["point"] if v["flags"] & HANDLE_TO_FD_TIMELINE else max(syncobj.points, default=0)
    fence = syncobj.points.get(point)
    if fence is None:
        raise fail(errno.EINVAL)
    v["fd"] = fence_fd([fence])


def wait_fences(device: FakeDevice, fences: list[FakeFence], timeout_s: float | None) -> bool:
    """Block until every fence signalled or the timeout passed; True when all signalled."""
    with device.cond:
        return device.cond.wait_for(lambda: all(f.signaled for f in fences), timeout=timeout_s)


def abs_timeout_s(timeout_ns: int) -> float:
    """drm_timeout_abs_to_jiffies: an absolute CLOCK_MONOTONIC ns deadline -> seconds from now."""
    import time

    return max(0.0, (timeout_ns - time.monotonic_ns()) / 1e9)
