"""Recycled command allocations: device memory that outlives the command buffers it held.

The decode fast path sends each step's command stream inline; the API layer turns it into an
EPHEMERAL COMMAND buffer that lives exactly as long as its job. Creating and freeing a device
allocation per step is the most expensive thing on that path (a memfd, two mappings and two
messages to the sim's device process; a GEM create/close on a kernel driver), so a buffer
created with ``recycle=True`` hands its *device allocation* back to a small per-context spare
list when it is destroyed, and the next recyclable buffer of the same context and page-rounded
size takes it instead of allocating. Buffer ids, listings, quotas and "a released buffer is
gone" are unchanged: only the device memory outlives the buffer. The spares are

* sized: at most :data:`RECYCLE_PER_CONTEXT` per context, each at most :data:`RECYCLE_MAX_BYTES`;
* zeroed when parked, so a recycled allocation reads as zeros like a fresh one;
* never shared: a spare is only ever reused by the context whose buffer held it;
* counted in the tier's ``used_bytes`` (the device really holds them) and given up first under
  memory pressure, before any buffer is evicted;
* freed when their context is released.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

from npud.core.buffers import Buffer
from npud.core.ids import ContextId
from npud.core.residency.entry import DEVICE_TIERS, Entry, Mapped, pages
from npud.core.residency.statistics import Counters
from npud.devices.base import Device, DeviceBuffer
from npud.errors import DeviceLost, NotFound, NpudError
from npud.vocab import MemoryTier

RECYCLE_PER_CONTEXT = 4
"""Spare command allocations kept per context (a decode loop has one or two jobs in flight)."""
RECYCLE_MAX_BYTES = 64 * 1024
"""Largest buffer whose allocation is recycled (decode steps are a few hundred bytes)."""
_ZEROS = bytes(RECYCLE_MAX_BYTES)


class Spares:
    """The spare command allocations of one device, per context (see the module docstring)."""

    def __init__(self, device: Device, used: dict[MemoryTier, int], counters: Counters) -> None:
        """``used`` is the device tiers' occupancy, which spares are part of."""
        self._device = device
        self._used = used
        self._n = counters
        # per context, (requested pages, allocation)
        self._by_context: dict[ContextId, list[tuple[int, DeviceBuffer]]] = {}
        self.bytes = dict.fromkeys(DEVICE_TIERS, 0)
        self._recycling: set[ContextId] = set()  # contexts that may park spares (not released)

    def allow(self, ctx: ContextId) -> None:
        """``ctx`` created a recyclable buffer: its allocations may be parked."""
        self._recycling.add(ctx)

    def forbid(self, ctx: ContextId) -> None:
        """``ctx`` is being released: park nothing more for it."""
        self._recycling.discard(ctx)

    def take(self, entry: Entry, tier: MemoryTier) -> bool:
        """Give ``entry`` a spare allocation of its context in ``tier``; ``False`` if none fits."""
        buf = entry.buffer
        spares = self._by_context.get(buf.owner) if buf.owner is not None else None
        if not spares:
            return False
        size = pages(buf.size)
        for i, (spare_pages, dev) in enumerate(spares):
            if spare_pages == size and dev.tier is tier:
                del spares[i]
                self.bytes[tier] -= dev.size
                buf.device = dev  # already counted in used: it never left the device
                entry.recycled = True
                self._n.recycled += 1
                return True
        return False

    def park(self, buf: Buffer) -> bool:
        """Keep a destroyed recyclable buffer's allocation for its context; ``False`` when
        it should be freed instead (no room on the list, not resident, device gone)."""
        dev, ctx = buf.device, buf.owner
        if dev is None or ctx is None or ctx not in self._recycling:
            return False  # its context was released (a job bound to it ran until now)
        spares = self._by_context.setdefault(ctx, [])
        if len(spares) >= RECYCLE_PER_CONTEXT:
            return False
        try:
            with Mapped(self._device, buf) as view:
                view[: dev.size] = _ZEROS[: dev.size]
        except NpudError:
            return False  # lost or reset device: the caller drops it from the books
        spares.append((pages(buf.size), dev))
        self.bytes[dev.tier] += dev.size
        buf.device = None
        return True

    def release(self, ctx: ContextId) -> None:
        """Free every spare of ``ctx``."""
        self._drop(self._by_context.pop(ctx, []))

    def drop_in(self, tier: MemoryTier) -> None:
        """Free every spare allocation in ``tier`` (memory pressure)."""
        for spares in self._by_context.values():
            keep = [s for s in spares if s[1].tier is not tier]
            self._drop(s for s in spares if s[1].tier is tier)
            spares[:] = keep

    def _drop(self, spares: Iterable[tuple[int, DeviceBuffer]]) -> None:
        for _, dev in spares:
            self.bytes[dev.tier] -= dev.size
            self._used[dev.tier] -= dev.size
            with contextlib.suppress(NotFound, DeviceLost):
                self._device.free_buffer(dev.handle)

    def count(self) -> int:
        """Spare allocations held, over every context."""
        return sum(len(spares) for spares in self._by_context.values())
