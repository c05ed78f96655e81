"""Device memory of the simulated NPU: tiers with capacities, and the bytes behind each buffer.

A tier is an accounting pool (SRAM and DRAM, with the board's capacities) that refuses an
allocation it cannot hold, like a kernel returning ENOMEM. The bytes themselves are real:
anonymous memory (a ``bytearray``) when the device runs in-process, or a ``memfd`` mapped
into both the daemon and the device process when it runs in a child, so that the "firmware"
computes on the very pages the daemon maps for its clients. The memfds allow seals, so the
daemon can hand one to a client with its size (and, for sealed contents, its writes) locked
(:mod:`npud.core.memfd`). A client's own write-sealed memfd can also become a buffer's memory
as it is (:meth:`BufferMemory.adopt`): the upload then copies nothing.
"""

from __future__ import annotations

import contextlib
import itertools
import mmap
import os
from collections.abc import Callable
from dataclasses import dataclass

from npud.devices.base import BoHandle, DeviceBuffer
from npud.errors import InvalidArgument, NotFound, OutOfDeviceMemory
from npud.vocab import MemoryTier

PAGE = 4096
"""Allocation granularity: sizes round up to whole pages, as GEM objects do."""


def round_up(size: int) -> int:
    """``size`` rounded up to the allocation granularity."""
    return (size + PAGE - 1) // PAGE * PAGE


@dataclass(slots=True, eq=False)
class TierPool:
    """One memory tier's capacity and current use (bytes)."""

    tier: MemoryTier
    capacity: int
    bandwidth: float
    used: int = 0
    fail_next: int = 0  # injected: refuse this many further allocations

    @property
    def free(self) -> int:
        """Bytes still available."""
        return self.capacity - self.used


class BufferMemory:
    """The bytes of one buffer: anonymous, or a memfd shared with the device process.

    The owner calls :meth:`close` when the buffer is freed; views handed out earlier keep
    the pages alive until they are released (the mapping is then dropped by the GC).
    """

    __slots__ = ("_data", "_fd", "readonly", "size")

    def __init__(self, size: int, *, shared: bool, name: str = "npud-sim") -> None:
        self.size = size
        self.readonly = False
        self._fd = -1
        self._data: bytearray | mmap.mmap
        if shared:
            self._fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
            try:
                os.ftruncate(self._fd, size)
                self._data = mmap.mmap(self._fd, size)
            except BaseException:
                os.close(self._fd)
                raise
        else:
            self._data = bytearray(size)

    @classmethod
    def adopt(cls, fd: int, size: int) -> BufferMemory:
        """Read-only memory over a write-sealed memfd of at least ``size`` bytes; the new
        object owns a duplicate of ``fd`` (the caller keeps and closes its own).

        Raises:
            OSError: ``fd`` cannot be duplicated or mapped.
        """
        self = cls.__new__(cls)
        self.size = size
        self.readonly = True
        self._fd = os.dup(fd)
        try:
            self._data = mmap.mmap(self._fd, size, access=mmap.ACCESS_READ)
        except BaseException:
            os.close(self._fd)
            raise
        return self

    @property
    def fd(self) -> int:
        """The memfd behind a shared buffer (-1 for anonymous memory); owned by this object."""
        return self._fd

    @property
    def data(self) -> bytearray | mmap.mmap:
        """The writable bytes."""
        return self._data

    def view(self) -> memoryview:
        """A view of the whole buffer (writable unless adopted); the caller releases it."""
        return memoryview(self._data)

    def close(self) -> None:
        """Release the memory (idempotent). Outstanding views keep a mapping alive."""
        if isinstance(self._data, mmap.mmap):
            # A client may still hold a view: the mapping then goes when the view does.
            with contextlib.suppress(BufferError):
                self._data.close()
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass(slots=True, eq=False)
class SimBuffer:
    """One allocated buffer of the simulated device (an identity object)."""

    handle: BoHandle
    size: int
    tier: MemoryTier
    address: int
    memory: BufferMemory
    maps: int = 0


class BufferTable:
    """The simulated device's memory as its driver sees it: the tier pools and the live
    buffers by handle.

    Handles count up from 1 and are never reused while the device lives; each tier hands out
    addresses upward from its base, as a device's address space would (the addresses are for
    listings and diagnostics: nothing computes with them).
    """

    def __init__(
        self, device: str, pools: dict[MemoryTier, TierPool], base: dict[MemoryTier, int]
    ) -> None:
        self.device = device
        self.pools = pools
        self.buffers: dict[BoHandle, SimBuffer] = {}
        self._handles = itertools.count(1)
        self._addresses = dict(base)

    def pool(self, tier: MemoryTier) -> TierPool:
        """The pool of ``tier``.

        Raises:
            InvalidArgument: the device has no such tier (or it holds no bytes).
        """
        pool = self.pools.get(tier)
        if pool is None or pool.capacity == 0:
            raise InvalidArgument(f"{self.device} has no {tier.value} tier")
        return pool

    @staticmethod
    def check_room(pool: TierPool, rounded: int) -> None:
        """Refuse an allocation ``pool`` cannot hold now.

        Raises:
            OutOfDeviceMemory: fewer than ``rounded`` bytes are free.
        """
        if rounded > pool.free:
            raise OutOfDeviceMemory(
                f"{pool.tier.value} has {pool.free} of {pool.capacity} bytes free, "
                f"{rounded} requested"
            )

    def next_handle(self) -> BoHandle:
        """A handle no buffer of this device has had."""
        return BoHandle(next(self._handles))

    def add(
        self,
        handle: BoHandle,
        tier: MemoryTier,
        memory: BufferMemory,
        on_host: Callable[[SimBuffer], None] | None,
    ) -> DeviceBuffer:
        """Enter a buffer of ``memory`` (its whole size) in ``tier``; ``on_host`` maps it in the
        device process first. The table owns ``memory`` afterwards; if ``on_host`` raises, the
        memory is closed and nothing is entered."""
        size = memory.size
        address = self._addresses[tier]
        buf = SimBuffer(handle, size, tier, address, memory)
        if on_host is not None:
            try:
                on_host(buf)
            except BaseException:
                memory.close()
                raise
        self._addresses[tier] += size
        self.pools[tier].used += size
        self.buffers[handle] = buf
        return DeviceBuffer(handle, size, tier, address)

    def get(self, handle: BoHandle) -> SimBuffer:
        """The buffer of ``handle``.

        Raises:
            NotFound: no live buffer has it.
        """
        try:
            return self.buffers[handle]
        except KeyError:
            raise NotFound(f"{self.device} has no buffer with handle {handle}") from None

    def remove(self, buf: SimBuffer) -> None:
        """Take ``buf`` out of the table and its pool (the caller closes its memory)."""
        del self.buffers[buf.handle]
        self.pools[buf.tier].used -= buf.size
