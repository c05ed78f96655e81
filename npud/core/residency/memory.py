"""The device's memory tiers: budgets, placement, eviction and migration of buffers.

:class:`DeviceMemory` allocates a buffer in the tier its placement policy prefers
(:mod:`npud.core.placement`: hot small buffers in SRAM, the rest in DRAM), makes room by
evicting the buffers :mod:`npud.core.eviction` says are cheapest to lose (never one that is
pinned or bound to a running job), restores contents bit-exact when a buffer comes back, and
moves a prepared job's SRAM candidates from DRAM into free SRAM. Spare command allocations
(:mod:`npud.core.residency.spares`) are given up first under pressure.

Ownership: the residency manager owns this and the buffers; the device memory here is the
device's, counted against the budgets npud gives itself per tier.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence

from npud.clock import Clock
from npud.core.buffers import Buffer, Location
from npud.core.eviction import EvictionAction, GreedyDual, eviction_action
from npud.core.ids import BufferId
from npud.core.placement import sram_rank, wants_sram
from npud.core.registry import Registry
from npud.core.residency.entry import DEVICE_TIERS, Entry, Mapped, held, pages
from npud.core.residency.spares import Spares
from npud.core.residency.statistics import Counters, TierUsage
from npud.devices.base import BoHandle, Device
from npud.errors import DeviceLost, InvalidArgument, NotFound, OutOfDeviceMemory, Unsupported
from npud.vocab import MemoryTier


class DeviceMemory:
    """The SRAM and DRAM of one device as npud budgets them, and the buffers placed there."""

    def __init__(
        self,
        device: Device,
        clock: Clock,
        *,
        budgets: Mapping[MemoryTier, int] | None,
        sram_policy: bool,
        counters: Counters,
        entries: Mapping[BufferId, Entry],
        registry: Callable[[], Registry],
        forget: Callable[[Entry], None],
    ) -> None:
        """Budget ``device``'s tiers and place the buffers of ``entries`` (the manager's).

        ``registry`` returns the state directory's registry (raising Unavailable without one),
        for contents that come back from a backing file; ``forget`` destroys a buffer that
        eviction decided to forget.

        Raises:
            InvalidArgument: a negative budget.
        """
        self._device = device
        self._clock = clock
        caps = device.capabilities
        self.capacity = {t: caps.tier(t).capacity_bytes for t in DEVICE_TIERS}
        self.budget = dict(self.capacity)
        for tier, value in (budgets or {}).items():
            if tier in self.budget:
                if value < 0:
                    raise InvalidArgument(f"budget for {tier} must be >= 0, got {value}")
                self.budget[tier] = min(value, self.capacity[tier])
        self._sram_policy = sram_policy
        self._sram_mappable = True
        self.used = dict.fromkeys(DEVICE_TIERS, 0)
        self.host_bytes = 0  # spilled and staged contents in host memory
        self._n = counters
        self._entries = entries
        self._registry_or_fail = registry
        self._forget = forget
        self._gds = GreedyDual()
        self.spares = self._spares = Spares(device, self.used, counters)

    def tiers(self, counts: Mapping[MemoryTier, int]) -> tuple[TierUsage, ...]:
        """The usage of every tier, given how many buffers each holds."""
        return (
            *(
                TierUsage(t, self.capacity[t], self.budget[t], self.used[t], counts[t])
                for t in DEVICE_TIERS
            ),
            TierUsage(MemoryTier.HOST, 0, 0, self.host_bytes, counts[MemoryTier.HOST]),
        )

    def touch(self, entry: Entry, now: float | None = None) -> None:
        """``entry`` was used at ``now`` (default: the clock's time): refresh its last use and
        its eviction credit."""
        buf = entry.buffer
        buf.last_used = max(buf.last_used, self._clock.now() if now is None else now)
        entry.credit = self._gds.credit(buf, backed=entry.backing is not None)

    def tiers_for(self, buf: Buffer) -> list[MemoryTier]:
        """The tiers ``buf`` may be placed in, preferred first."""
        if self.sram_ok() and wants_sram(
            buf, sram_budget=self.budget[MemoryTier.SRAM], policy=self._sram_policy
        ):
            return [MemoryTier.SRAM, MemoryTier.DRAM]
        return [MemoryTier.DRAM]

    def sram_ok(self) -> bool:
        """Whether SRAM can take buffers at all (budgeted and mappable)."""
        return self._sram_mappable and self.budget[MemoryTier.SRAM] > 0

    def free(self, tier: MemoryTier) -> int:
        """Bytes of ``tier``'s budget not in use (negative when over budget)."""
        return self.budget[tier] - self.used[tier]

    def victims(self, tier: MemoryTier, protect: frozenset[BufferId]) -> list[Entry]:
        """Evictable buffers of ``tier`` outside ``protect``, cheapest to lose first."""
        found = [
            e
            for e in self._entries.values()
            if e.buffer.evictable
            and e.buffer.id not in protect
            and e.buffer.device is not None
            and e.buffer.device.tier is tier
        ]
        found.sort(key=lambda e: (e.credit, e.buffer.last_used))
        return found

    def could_place(self, missing: Sequence[Entry], protect: frozenset[BufferId]) -> bool:
        """Whether evicting every candidate would make room for ``missing`` (DRAM + free SRAM)."""
        need = sum(pages(e.buffer.size) for e in missing)
        sram_free = max(0, self.free(MemoryTier.SRAM)) if self.sram_ok() else 0
        sram_takers = sum(
            pages(e.buffer.size) for e in missing if MemoryTier.SRAM in self.tiers_for(e.buffer)
        )
        need -= min(sram_free, sram_takers)
        if need <= self.free(MemoryTier.DRAM):
            return True  # the common case: no need to look at eviction candidates at all
        room = (
            self.free(MemoryTier.DRAM)
            + self._spares.bytes[MemoryTier.DRAM]
            + sum(held(e) for e in self.victims(MemoryTier.DRAM, protect))
        )
        return need <= room

    def place(self, entry: Entry, protect: frozenset[BufferId], *, evict: bool = True) -> bool:
        """Allocate ``entry`` in its preferred tier and restore its contents; ``False`` if no
        room could be made. SRAM takes only free space; DRAM evicts when ``evict``."""
        buf = entry.buffer
        for tier in self.tiers_for(buf):
            may_evict = evict and tier is MemoryTier.DRAM
            if self._allocate(entry, tier, protect, may_evict=may_evict):
                self._restore(entry)
                return True
        return False

    def _allocate(
        self, entry: Entry, tier: MemoryTier, protect: frozenset[BufferId], *, may_evict: bool
    ) -> bool:
        buf = entry.buffer
        if entry.recycle and self._spares.take(entry, tier):
            return True
        victims: list[Entry] | None = None  # computed only when free space falls short
        while True:
            if self.free(tier) < pages(buf.size) and self._spares.bytes[tier]:
                self._spares.drop_in(tier)  # spares go before anything is evicted
            if self.free(tier) >= pages(buf.size):
                try:
                    dev = self._device.create_buffer(buf.size, tier)
                except OutOfDeviceMemory:
                    pass  # the device is fuller than our budget says (rounding, other users)
                else:
                    if tier is MemoryTier.SRAM and not self._mappable(dev.handle):
                        self._device.free_buffer(dev.handle)
                        self._sram_mappable = False
                        return False
                    buf.device = dev
                    self.used[tier] += dev.size
                    return True
            if victims is None:
                victims = self.victims(tier, protect) if may_evict else []
            if not victims:
                return False
            self.evict(victims.pop(0))

    def _mappable(self, handle: BoHandle) -> bool:
        try:
            view = self._device.map_buffer(handle)
        except Unsupported:
            return False
        view.release()
        self._device.unmap_buffer(handle)
        return True

    def _restore(self, entry: Entry) -> None:
        """Fill a freshly allocated buffer from where its contents were."""
        buf = entry.buffer
        assert buf.device is not None
        tier = buf.device.tier
        if entry.host is not None:
            with Mapped(self._device, buf) as view:
                view[: buf.size] = entry.host
            if buf.location is Location.HOST and buf.valid:
                self._n.restores += 1
                self._n.restored[tier] += buf.size
            self.host_bytes -= buf.size
            entry.host = None
        elif entry.backing is not None and buf.location is Location.BACKED:
            with Mapped(self._device, buf) as view:
                self._registry_or_fail().read_into(entry.backing, view)
            self._n.restores += 1
            self._n.restored[tier] += buf.size
        buf.location = Location.RESIDENT

    def release_device(self, buf: Buffer) -> None:
        """Free ``buf``'s device allocation, if it has one."""
        if buf.device is None:
            return
        dev, buf.device = buf.device, None
        self.used[dev.tier] -= dev.size
        # A lost or reset device may have forgotten the handle already: our books still drop it.
        with contextlib.suppress(NotFound, DeviceLost):
            self._device.free_buffer(dev.handle)

    def evict(self, entry: Entry) -> None:
        """Take a buffer's device memory; its contents go where :mod:`eviction` says."""
        buf = entry.buffer
        assert buf.device is not None
        assert buf.evictable
        tier = buf.device.tier
        action = eviction_action(buf, backed=entry.backing is not None)
        self._n.evictions += 1
        self._gds.evicted(entry.credit)
        if action == EvictionAction.SPILL:
            with Mapped(self._device, buf) as view:
                entry.host = bytearray(view[: buf.size])
            self.host_bytes += buf.size
            self._n.spills += 1
            self._n.spilled[tier] += buf.size
            self.release_device(buf)
            buf.location = Location.HOST
        elif action == EvictionAction.FORGET:
            self._n.forgotten += 1
            self._forget(entry)
        else:
            self._n.drops += 1
            self.release_device(buf)
            if action == EvictionAction.DROP_BACKED:
                buf.location = Location.BACKED
            else:
                buf.valid = False
                buf.location = Location.EMPTY

    def promote(self, entries: Sequence[Entry], protect: frozenset[BufferId]) -> None:
        """Move a prepared job's SRAM candidates from DRAM into free SRAM (placement policy).

        Pinned buffers stay where they are: a pin promises a stable allocation.
        """
        if not self.sram_ok():
            return
        sram_budget = self.budget[MemoryTier.SRAM]
        candidates = [
            e
            for e in entries
            if e.buffer.evictable
            and e.buffer.device is not None
            and e.buffer.device.tier is MemoryTier.DRAM
            and wants_sram(e.buffer, sram_budget=sram_budget, policy=self._sram_policy)
        ]
        for entry in sorted(candidates, key=lambda e: sram_rank(e.buffer)):
            buf = entry.buffer
            need = pages(buf.size)
            if self.free(MemoryTier.SRAM) < need:
                self._reclaim_sram(need, protect)
            if self.free(MemoryTier.SRAM) >= need:
                self._migrate(entry, MemoryTier.SRAM)

    def _reclaim_sram(self, need: int, protect: frozenset[BufferId]) -> None:
        """Demote unused (warm-pool) SRAM residents to DRAM until ``need`` bytes are free."""
        idle = [e for e in self.victims(MemoryTier.SRAM, protect) if not e.buffer.users]
        if self.free(MemoryTier.SRAM) + sum(held(e) for e in idle) < need:
            return
        for entry in idle:
            if self.free(MemoryTier.SRAM) >= need:
                return
            if not self._migrate(entry, MemoryTier.DRAM):
                self.evict(entry)

    def _migrate(self, entry: Entry, tier: MemoryTier) -> bool:
        """Copy a resident buffer into ``tier`` (no eviction); ``False`` if it does not fit."""
        buf = entry.buffer
        old = buf.device
        assert old is not None
        if self.free(tier) < pages(buf.size):
            return False
        try:
            new = self._device.create_buffer(buf.size, tier)
        except OutOfDeviceMemory:
            return False
        if tier is MemoryTier.SRAM and not self._mappable(new.handle):
            self._device.free_buffer(new.handle)
            self._sram_mappable = False
            return False
        src = self._device.map_buffer(old.handle)
        try:
            dst = self._device.map_buffer(new.handle)
            try:
                dst[: buf.size] = src[: buf.size]
            finally:
                dst.release()
                self._device.unmap_buffer(new.handle)
        finally:
            src.release()
            self._device.unmap_buffer(old.handle)
        self.used[tier] += new.size
        self.release_device(buf)
        buf.device = new
        self._n.migrated[tier] += buf.size
        if tier is MemoryTier.SRAM:
            self._n.promotions += 1
        else:
            self._n.demotions += 1
        return True
