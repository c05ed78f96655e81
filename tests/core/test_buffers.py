"""The Buffer identity object and the eviction policy's ordering."""

from __future__ import annotations

from npud.core.buffers import Buffer, Location
from npud.core.eviction import (
    EvictionAction,
    GreedyDual,
    eviction_action,
    reload_cost_s,
)
from npud.core.ids import BufferId, ContextId
from npud.devices.base import BoHandle, DeviceBuffer
from npud.vocab import BufferUsage, MemoryTier, Persistence


def _buf(
    usage: BufferUsage, size: int = 1 << 20, *, valid: bool = True, users: bool = True
) -> Buffer:
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
    a, b = _buf(BufferUsage.STATE), _buf(BufferUsage.STATE)
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
    assert eviction_action(_buf(BufferUsage.SCRATCH), backed=False) == EvictionAction.DROP
    assert (
        eviction_action(_buf(BufferUsage.STATE, valid=False), backed=False) == EvictionAction.DROP
    )
    assert eviction_action(_buf(BufferUsage.WEIGHTS), backed=True) == EvictionAction.DROP_BACKED
    assert eviction_action(_buf(BufferUsage.STATE), backed=False) == EvictionAction.SPILL
    assert (
        eviction_action(_buf(BufferUsage.STATE, users=False), backed=False) == EvictionAction.SPILL
    )
    assert eviction_action(_buf(BufferUsage.WEIGHTS), backed=False) == EvictionAction.SPILL
    unused = _buf(BufferUsage.WEIGHTS, users=False)
    assert eviction_action(unused, backed=False) == EvictionAction.FORGET


def test_greedy_dual_orders_by_cost_then_recency() -> None:
    """At equal age scratch goes before a KV cache (two host copies), which goes before weights
    re-read from a file; a small buffer earns more credit per byte than a large one; credits
    rise as evictions happen."""
    gd = GreedyDual()
    scratch = gd.credit(_buf(BufferUsage.SCRATCH), backed=False)
    weights = gd.credit(_buf(BufferUsage.WEIGHTS), backed=True)
    state = gd.credit(_buf(BufferUsage.STATE), backed=False)
    assert scratch < state < weights
    small = gd.credit(_buf(BufferUsage.STATE, 4096), backed=False)
    assert small > state
    assert reload_cost_s(_buf(BufferUsage.SCRATCH), backed=False) < reload_cost_s(
        _buf(BufferUsage.STATE), backed=False
    )
    gd.evicted(state)
    assert gd.credit(_buf(BufferUsage.SCRATCH), backed=False) > state  # touched later: kept longer
