"""What a residency manager reports: tier occupancy and its counters, as frozen snapshots."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from npud.core.ids import ContextId
from npud.vocab import BufferUsage, MemoryTier


@dataclass(frozen=True, slots=True)
class TierUsage:
    """One memory tier's budget and occupancy (HOST: spilled and staged bytes)."""

    tier: MemoryTier
    capacity_bytes: int  # what the device reports (0: the device has no such tier)
    budget_bytes: int  # what npud lets itself use (default: the capacity)
    used_bytes: int
    buffers: int


@dataclass(frozen=True, slots=True)
class ResidencyStatistics:
    """A snapshot of one residency manager's counters.

    ``hits``/``misses`` count buffers of successfully prepared jobs that were / were not
    resident already. ``uploaded_bytes`` are client writes by the tier they landed in (HOST when
    staged while not resident); ``spilled_bytes`` and ``restored_bytes`` are keyed by the device
    tier the bytes left or entered; ``migrated_bytes`` by the destination tier.
    ``uploaded_by_usage`` is the same client writes by the usage of the buffer written (a
    process that opens persistent WEIGHTS by key adds nothing to ``BufferUsage.WEIGHTS``).
    """

    device: str
    tiers: tuple[TierUsage, ...]
    buffers: int
    persistent: int
    warm_pool_buffers: int
    warm_pool_bytes: int  # resident bytes held by persistent buffers that nobody uses
    dormant_registrations: int  # keys on disk not opened since the daemon started
    hits: int
    misses: int
    holds: int  # prepare() calls that returned False
    evictions: int
    drops: int
    spills: int
    restores: int
    forgotten: int
    promotions: int
    demotions: int
    attaches: int
    dedups: int  # seals that found the same contents already registered
    quota_refusals: int
    registry_errors: int
    uploaded_bytes: Mapping[MemoryTier, int]
    spilled_bytes: Mapping[MemoryTier, int]
    restored_bytes: Mapping[MemoryTier, int]
    migrated_bytes: Mapping[MemoryTier, int]
    context_bytes: Mapping[ContextId, int]
    recycled: int = 0  # buffers that took a spare allocation instead of allocating
    spare_buffers: int = 0  # device allocations parked for reuse (included in used_bytes)
    spare_bytes: int = 0
    uploaded_by_usage: Mapping[BufferUsage, int] = field(default_factory=dict)  # client writes

    def tier(self, tier: MemoryTier) -> TierUsage:
        """The usage of one tier."""
        for usage in self.tiers:
            if usage.tier is tier:
                return usage
        raise KeyError(tier)


@dataclass(slots=True)
class Counters:
    """The running counters of one residency manager (see :class:`ResidencyStatistics`)."""

    hits: int = 0
    misses: int = 0
    holds: int = 0
    evictions: int = 0
    drops: int = 0
    spills: int = 0
    restores: int = 0
    forgotten: int = 0
    promotions: int = 0
    demotions: int = 0
    attaches: int = 0
    dedups: int = 0
    quota_refusals: int = 0
    registry_errors: int = 0
    recycled: int = 0
    uploaded: dict[MemoryTier, int] = field(default_factory=lambda: dict.fromkeys(MemoryTier, 0))
    spilled: dict[MemoryTier, int] = field(default_factory=lambda: dict.fromkeys(MemoryTier, 0))
    restored: dict[MemoryTier, int] = field(default_factory=lambda: dict.fromkeys(MemoryTier, 0))
    migrated: dict[MemoryTier, int] = field(default_factory=lambda: dict.fromkeys(MemoryTier, 0))
    uploaded_usage: dict[BufferUsage, int] = field(
        default_factory=lambda: dict.fromkeys(BufferUsage, 0)
    )
