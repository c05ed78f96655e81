"""Recycled command allocations: the decode fast path's inline streams reuse device memory.

A ``recycle=True`` COMMAND buffer parks its device allocation for its context when destroyed;
the context's next one of the same size takes it. These tests pin down what must not change
for anyone else: ids, quotas, zeroed contents, per-context ownership, bounded spares, memory
pressure and context release.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from npud.clock import VirtualClock
from npud.core.buffers import Buffer
from npud.core.ids import ContextId
from npud.core.residency import RECYCLE_PER_CONTEXT, ResidencyManager
from npud.devices.base import BufferUse
from npud.devices.sim.device import SimDevice
from npud.vocab import BufferUsage, MemoryTier, Persistence

KiB = 1024
A, B = ContextId("ctx-a"), ContextId("ctx-b")


def _setup(dram: int = 1024 * KiB) -> tuple[ResidencyManager, SimDevice]:
    clock = VirtualClock()
    dev = SimDevice("rk3588", clock=clock, sram_capacity=0, dram_capacity=dram)
    dev.open()
    return ResidencyManager(dev, clock), dev


def _cmd(res: ResidencyManager, ctx: ContextId, size: int = 100) -> Buffer:
    return res.create(ctx, size, usage=BufferUsage.COMMAND, recycle=True)


def _handle(buf: Buffer) -> int:
    assert buf.device is not None
    return buf.device.handle


def test_next_command_buffer_of_the_context_reuses_the_allocation() -> None:
    """Release then create: a new buffer id on the same device allocation, no device call."""
    res, dev = _setup()
    first = _cmd(res, A)
    res.write(first, 0, b"\x7f" * 100)
    handle = _handle(first)
    res.release(A, first)
    assert dev.statistics().buffers == 1  # parked, not freed
    second = _cmd(res, A)
    assert second.id != first.id
    assert _handle(second) == handle
    assert res.read(second, 0, 100) == bytes(100)  # zeroed when parked: reads like a fresh one
    stats = res.statistics()
    assert (stats.recycled, stats.spare_buffers, stats.buffers) == (1, 0, 1)
    assert dev.statistics().buffers == 1


def test_spares_are_never_shared_across_contexts() -> None:
    """Another context's command buffer gets its own allocation, not the parked one."""
    res, dev = _setup()
    res.release(A, _cmd(res, A))
    other = _cmd(res, B)
    assert res.statistics().recycled == 0
    assert dev.statistics().buffers == 2
    res.release(B, other)
    mine = _cmd(res, A)
    assert res.statistics().recycled == 1
    assert mine.owner == A


def test_only_the_same_page_rounded_size_is_reused() -> None:
    """A bigger stream does not take a smaller spare (nor a page more than it needs)."""
    res, _ = _setup()
    res.release(A, _cmd(res, A, 100))
    big = _cmd(res, A, 5000)
    assert res.statistics().recycled == 0
    assert big.device is not None
    assert big.device.size == 8 * KiB


def test_spares_are_bounded_per_context() -> None:
    """At most RECYCLE_PER_CONTEXT allocations are kept; the rest are freed."""
    res, dev = _setup()
    live = [_cmd(res, A) for _ in range(RECYCLE_PER_CONTEXT + 3)]
    for buf in live:
        res.release(A, buf)
    stats = res.statistics()
    assert stats.spare_buffers == RECYCLE_PER_CONTEXT
    assert stats.spare_bytes == RECYCLE_PER_CONTEXT * 4 * KiB
    assert dev.statistics().buffers == RECYCLE_PER_CONTEXT
    # the spares are device memory the device holds: they are in the tier's usage
    assert stats.tier(MemoryTier.DRAM).used_bytes == dev.statistics().used_bytes[MemoryTier.DRAM]


def test_releasing_the_context_frees_its_spares() -> None:
    """Nothing of a released context remains on the device, spares included."""
    res, dev = _setup()
    for _ in range(3):
        res.release(A, _cmd(res, A))
    res.release(B, _cmd(res, B))
    res.release_context(A)
    assert dev.statistics().buffers == 1  # only B's spare
    res.release_context(B)
    stats = res.statistics()
    assert (stats.spare_buffers, stats.spare_bytes, dev.statistics().buffers) == (0, 0, 0)
    assert [t.used_bytes for t in stats.tiers] == [0, 0, 0]


def test_a_job_that_outlives_its_context_frees_the_allocation() -> None:
    """A command buffer released while running, whose context closes first, is freed at the end."""
    res, dev = _setup()
    cmd = _cmd(res, A)
    assert res.prepare([cmd])
    res.begin_run([cmd])
    res.release_context(A)
    assert dev.statistics().buffers == 1  # still bound to the running job
    res.end_run([cmd], [])
    assert dev.statistics().buffers == 0
    assert res.statistics().spare_buffers == 0


def test_spares_go_before_anything_is_evicted() -> None:
    """Under memory pressure the spares are freed first; no live buffer is evicted for room."""
    res, dev = _setup(dram=64 * KiB)
    keep = res.create(A, 32 * KiB, usage=BufferUsage.STATE)
    res.write(keep, 0, b"\1" * 16)
    cmds = [_cmd(res, A) for _ in range(RECYCLE_PER_CONTEXT)]
    for buf in cmds:
        res.release(A, buf)
    assert res.statistics().spare_bytes == 16 * KiB
    big = res.create(B, 32 * KiB, usage=BufferUsage.SCRATCH)  # needs 32 KiB: 16 free + 16 spare
    stats = res.statistics()
    assert big.device is not None
    assert keep.device is not None
    assert (stats.evictions, stats.spare_buffers) == (0, 0)
    assert (
        stats.tier(MemoryTier.DRAM).used_bytes
        == 64 * KiB
        == dev.statistics().used_bytes[MemoryTier.DRAM]
    )


def test_prepare_counts_spares_as_room() -> None:
    """A job whose buffer only fits once the spares go is placed, not held."""
    res, _ = _setup(dram=64 * KiB)
    filler = res.create(A, 48 * KiB, usage=BufferUsage.STATE)
    res.pin(filler)  # nothing to evict
    state = res.create(B, 16 * KiB, usage=BufferUsage.STATE)
    res.write(state, 0, b"\2" * 8)
    assert res.evict(state)  # spilled to host memory
    cmds = [_cmd(res, A) for _ in range(RECYCLE_PER_CONTEXT)]
    for buf in cmds:
        res.release(A, buf)
    assert res.statistics().tier(MemoryTier.DRAM).used_bytes == 64 * KiB  # 48 + 16 of spares
    assert res.prepare([state])
    assert state.device is not None
    assert res.read(state, 0, 8) == b"\2" * 8
    assert res.statistics().spare_buffers == 0


def test_undo_leaves_the_device_as_it_was() -> None:
    """A failed request's buffer: a fresh allocation is freed, a recycled one goes back."""
    res, dev = _setup()
    fresh = _cmd(res, A)
    res.release(A, fresh, undo=True)
    assert (dev.statistics().buffers, res.statistics().spare_buffers) == (0, 0)
    res.release(A, _cmd(res, A))
    before = (dev.statistics().buffers, res.statistics().spare_buffers)
    assert before == (1, 1)
    again = _cmd(res, A)  # takes the spare
    res.release(A, again, undo=True)
    assert (dev.statistics().buffers, res.statistics().spare_buffers) == before


def test_only_ephemeral_command_buffers_are_recycled() -> None:
    """recycle=True on other usages or on persistent buffers frees their memory as before."""
    res, dev = _setup()
    res.release(A, res.create(A, 100, usage=BufferUsage.SCRATCH, recycle=True))
    res.release(
        A,
        res.create(
            A, 100, usage=BufferUsage.COMMAND, persistence=Persistence.PERSISTENT, recycle=True
        ),
    )
    res.release(A, res.create(A, 100, usage=BufferUsage.COMMAND))  # not asked to recycle
    assert dev.statistics().buffers == 0
    assert res.statistics().spare_buffers == 0


def test_quota_charges_the_buffer_not_the_spares() -> None:
    """A context's memory quota counts its live buffers; parked spares are not charged."""
    res, _ = _setup()
    res.set_quota(A, 150)
    res.release(A, _cmd(res, A, 100))
    assert res.context_usage(A) == 0
    buf = _cmd(res, A, 100)  # fits the quota again although the spare exists
    assert res.context_usage(A) == 100
    res.release(A, buf)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([A, B]), st.booleans(), st.sampled_from([50, 4096, 5000])),
        max_size=30,
    )
)
def test_books_match_the_device_whatever_the_order(ops: list[tuple[ContextId, bool, int]]) -> None:
    """Any create/release sequence: our usage equals the device's, spares stay bounded and
    closing both contexts leaves the device empty."""
    res, dev = _setup()
    live: dict[ContextId, list[Buffer]] = {A: [], B: []}
    for ctx, create, size in ops:
        if create or not live[ctx]:
            buf = _cmd(res, ctx, size)
            assert res.prepare([buf])
            res.begin_run([buf])
            res.end_run([buf], [buf])
            live[ctx].append(buf)
        else:
            res.release(ctx, live[ctx].pop(0))
        stats = res.statistics()
        assert (
            stats.tier(MemoryTier.DRAM).used_bytes == dev.statistics().used_bytes[MemoryTier.DRAM]
        )
        assert stats.spare_buffers <= 2 * RECYCLE_PER_CONTEXT
        assert dev.statistics().buffers == stats.buffers + stats.spare_buffers
        for bufs in live.values():
            for buf in bufs:
                assert res.binding(buf, BufferUse.READ).handle == _handle(buf)
    handles = [_handle(b) for bufs in live.values() for b in bufs]
    assert len(handles) == len(set(handles))  # no allocation is handed to two live buffers
    res.release_context(A)
    res.release_context(B)
    assert dev.statistics().buffers == 0
    assert [t.used_bytes for t in res.statistics().tiers] == [0, 0, 0]
