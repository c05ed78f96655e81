"""The Buffer identity object and the eviction policy's ordering."""

from __future__ import annotations

from npud.core.buffers import Buffer, Location, Persistence, Usage
from npud.core.eviction import (
    EvictionAction,
    GreedyDual,
    eviction_action,
    reload_cost_s,
)
from npud.core.ids import BufferId, ContextId
from npud.devices.base import BoHandle, DeviceBuffer, MemoryTier


def _buf(usage: Usage, size: int = 1 << 20, *, valid: bool = True, users: bool = True) -> Buffer:
    return Buffer(
        id=BufferId(f"buf-{usage}-{size}"),
        size=size,
        usage=usage,
        persistence=Persistence.PERSISTENT,
        users={ContextId("ctx-a")} if users else set(),
        valid=valid,
    )


def test_buffers_are_identities_and_evictable_only_when_idle() -> None:
    """Two buffers never compare equal by value; pins and running jobs make one unevictable."""
    a, b = _buf(Usage.STATE), _buf(Usage.STATE)
    assert a != b
    assert a.location is Location.EMPTY
    assert not a.evictable  # not resident
    a.device = DeviceBuffer(BoHandle(1), a.size, MemoryTier.DRAM, 0x1000)
    assert a.resident_tier is MemoryTier.DRAM
    assert a.evictable
    a.pins = 1
    assert not a.evictable
    a.pins, a.in_use = 0, 1
    assert not a.evictable


def test_eviction_actions_follow_usage_and_backing() -> None:
    """Scratch and unwritten buffers drop; backed ones drop to their file; state spills; unused
    unbacked weights are forgotten."""
    assert eviction_action(_buf(Usage.SCRATCH), backed=False) == EvictionAction.DROP
    assert eviction_action(_buf(Usage.STATE, valid=False), backed=False) == EvictionAction.DROP
    assert eviction_action(_buf(Usage.WEIGHTS), backed=True) == EvictionAction.DROP_BACKED
    assert eviction_action(_buf(Usage.STATE), backed=False) == EvictionAction.SPILL
    assert eviction_action(_buf(Usage.STATE, users=False), backed=False) == EvictionAction.SPILL
    assert eviction_action(_buf(Usage.WEIGHTS), backed=False) == EvictionAction.SPILL
    unused = _buf(Usage.WEIGHTS, users=False)
    assert eviction_action(unused, backed=False) == EvictionAction.FORGET


def test_greedy_dual_orders_by_cost_then_recency() -> None:
    """At equal age scratch goes before a KV cache (two host copies), which goes before weights
    re-read from a file; a small buffer earns more credit per byte than a large one; credits
    rise as evictions happen."""
    gd = GreedyDual()
    scratch = gd.credit(_buf(Usage.SCRATCH), backed=False)
    weights = gd.credit(_buf(Usage.WEIGHTS), backed=True)
    state = gd.credit(_buf(Usage.STATE), backed=False)
    assert scratch < state < weights
    small = gd.credit(_buf(Usage.STATE, 4096), backed=False)
    assert small > state
    assert reload_cost_s(_buf(Usage.SCRATCH), backed=False) < reload_cost_s(
        _buf(Usage.STATE), backed=False
    )
    gd.evicted(state)
    assert gd.credit(_buf(Usage.SCRATCH), backed=False) > state  # touched later: kept longer
