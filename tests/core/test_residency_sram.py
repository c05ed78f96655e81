"""SRAM is a visible tier: hot small buffers go there, big ones do not, and it is never faked."""

from __future__ import annotations

from npud.clock import VirtualClock
from npud.core.residency import ResidencyManager
from npud.vocab import BufferUsage, MemoryTier, Persistence, TierPreference
from tests.core.test_residency import A, B, KiB, MemDevice


def _manager(
    sram: int = 8 * KiB, *, policy: bool = True, mappable: bool = True
) -> tuple[ResidencyManager, MemDevice]:
    dev = MemDevice(64 * KiB, sram, sram_mappable=mappable)
    return ResidencyManager(dev, VirtualClock(), sram_policy=policy), dev


def test_state_goes_to_sram_and_weights_to_dram() -> None:
    """A KV-cache-like STATE buffer lands in SRAM; large weights land in DRAM."""
    res, _ = _manager()
    kv = res.create(A, 2 * KiB, usage=BufferUsage.STATE)
    weights = res.create(A, 16 * KiB, usage=BufferUsage.WEIGHTS)
    assert kv.resident_tier is MemoryTier.SRAM
    assert weights.resident_tier is MemoryTier.DRAM
    sram = res.statistics().tier(MemoryTier.SRAM)
    assert (sram.capacity_bytes, sram.used_bytes, sram.buffers) == (8 * KiB, 2 * KiB, 1)


def test_policy_off_keeps_everything_in_dram_except_explicit_requests() -> None:
    """With the policy off only TierPreference.SRAM buffers use SRAM."""
    res, _ = _manager(policy=False)
    kv = res.create(A, 2 * KiB, usage=BufferUsage.STATE)
    asked = res.create(A, 1 * KiB, usage=BufferUsage.WEIGHTS, tier=TierPreference.SRAM)
    assert kv.resident_tier is MemoryTier.DRAM
    assert asked.resident_tier is MemoryTier.SRAM


def test_small_hot_buffers_are_promoted_on_prepare() -> None:
    """A small buffer bound by a second job is promoted from DRAM into free SRAM, contents kept."""
    res, _ = _manager()
    small = res.create(A, 512, usage=BufferUsage.WEIGHTS)
    res.write(small, 0, b"\x5a" * 512)
    assert small.resident_tier is MemoryTier.DRAM
    assert res.prepare([small])
    assert small.resident_tier is MemoryTier.DRAM  # one bind is not "hot" yet
    assert res.prepare([small])
    assert small.resident_tier is MemoryTier.SRAM
    assert res.read(small, 0, 512) == b"\x5a" * 512
    stats = res.statistics()
    assert stats.promotions == 1
    assert stats.migrated_bytes[MemoryTier.SRAM] == 512


def test_dram_preference_and_oversized_buffers_stay_out() -> None:
    """TierPreference.DRAM and buffers over half of SRAM never go to SRAM under the policy."""
    res, _ = _manager()
    pinned_dram = res.create(A, 1 * KiB, usage=BufferUsage.STATE, tier=TierPreference.DRAM)
    huge_state = res.create(A, 5 * KiB, usage=BufferUsage.STATE)
    assert pinned_dram.resident_tier is MemoryTier.DRAM
    assert huge_state.resident_tier is MemoryTier.DRAM


def test_sram_is_first_come_and_reclaimed_from_the_warm_pool() -> None:
    """A busy tenant's SRAM buffer is not bounced; an unused warm-pool one is demoted to DRAM."""
    res, _ = _manager(sram=8 * KiB)
    first = res.create(A, 3 * KiB, usage=BufferUsage.STATE)
    filler = res.create(A, 3 * KiB, usage=BufferUsage.STATE)
    second = res.create(B, 3 * KiB, usage=BufferUsage.STATE)
    assert first.resident_tier is MemoryTier.SRAM
    assert filler.resident_tier is MemoryTier.SRAM
    assert second.resident_tier is MemoryTier.DRAM
    assert res.prepare([second])
    assert second.resident_tier is MemoryTier.DRAM
    shared = res.create(
        A, 3 * KiB, usage=BufferUsage.STATE, persistence=Persistence.PERSISTENT, key="k"
    )
    res.release(A, first)
    assert shared.resident_tier is MemoryTier.DRAM
    assert res.prepare([shared])
    assert shared.resident_tier is MemoryTier.SRAM
    res.release(A, shared)  # now in the warm pool, holding SRAM
    res.write(second, 0, b"kv")
    assert res.prepare([second])
    assert second.resident_tier is MemoryTier.SRAM
    assert shared.resident_tier is MemoryTier.DRAM
    assert res.read(second, 0, 2) == b"kv"
    assert res.statistics().demotions == 1


def test_unmappable_sram_falls_back_to_dram() -> None:
    """A device whose SRAM the CPU cannot map gets DRAM placements and SRAM stays empty."""
    res, dev = _manager(mappable=False)
    kv = res.create(A, 2 * KiB, usage=BufferUsage.STATE)
    assert kv.resident_tier is MemoryTier.DRAM
    assert dev.used(MemoryTier.SRAM) == 0
    res.write(kv, 0, b"ok")
    assert res.read(kv, 0, 2) == b"ok"
