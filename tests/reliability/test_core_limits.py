"""Core-level reliability on virtual time: per-user memory quotas and replacing a lost device."""

from __future__ import annotations

from pathlib import Path

import pytest

from npud.core.context import ContextQuotas
from npud.core.service import CoreLimits
from npud.devices.sim import SimDevice
from npud.errors import DeviceLost, FailedPrecondition, NotFound, QuotaExceeded
from npud.vocab import BufferUsage, DeviceHealth, JobState, Persistence
from tests.core.harness import ALICE, BOB, make_bed

MiB = 1 << 20


def test_user_memory_quota_spans_contexts_and_spares_other_users() -> None:
    """A user's buffers over all its contexts are bounded; another user is unaffected."""
    bed = make_bed(limits=CoreLimits(max_memory_bytes_per_user=3 * MiB))
    core = bed.core
    quotas = ContextQuotas(memory_bytes=2 * MiB)
    a1 = core.create_context(ALICE, quotas=quotas)
    a2 = core.create_context(ALICE, quotas=quotas)
    core.create_buffer(ALICE, a1.id, 2 * MiB, usage=BufferUsage.SCRATCH)
    core.create_buffer(ALICE, a2.id, MiB, usage=BufferUsage.SCRATCH)
    before = core.user_memory(ALICE.uid)
    with pytest.raises(QuotaExceeded, match="limit per user"):
        core.create_buffer(ALICE, a2.id, MiB, usage=BufferUsage.SCRATCH)
    assert core.user_memory(ALICE.uid) == before
    assert len(core.buffers(ALICE, a2.id)) == 1
    b = core.create_context(BOB, quotas=quotas)
    core.create_buffer(BOB, b.id, 2 * MiB, usage=BufferUsage.SCRATCH)
    assert core.user_memory(BOB.uid) >= 2 * MiB


def test_user_memory_quota_counts_attached_persistent_buffers(tmp_path: Path) -> None:
    """Attaching a persistent buffer past the user's limit is refused and takes no reference."""
    bed = make_bed(limits=CoreLimits(max_memory_bytes_per_user=3 * MiB))
    core = bed.core
    owner_ctx = core.create_context(BOB)
    weights = core.create_buffer(
        BOB,
        owner_ctx.id,
        2 * MiB,
        usage=BufferUsage.WEIGHTS,
        persistence=Persistence.PERSISTENT,
        key="w@1",
    )
    core.write_buffer(BOB, owner_ctx.id, weights.id, 0, b"\1" * 16)
    core.seal_buffer(BOB, owner_ctx.id, weights.id)
    a1 = core.create_context(ALICE)
    a2 = core.create_context(ALICE)
    core.create_buffer(ALICE, a1.id, 2 * MiB, usage=BufferUsage.SCRATCH)
    with pytest.raises(QuotaExceeded):
        core.open_persistent(ALICE, a2.id, f"~{BOB.uid}/w@1")
    assert core.buffers(ALICE, a2.id) == []
    assert weights.users == {owner_ctx.id}


def test_lost_device_is_replaced_and_its_contexts_closed() -> None:
    """After a loss, replace_device closes the old contexts and serves a fresh device."""
    bed = make_bed()
    core = bed.core
    ctx = core.create_context(ALICE)
    q = bed.queue(ctx)
    [job] = bed.burn(ctx, q, 0.09)
    with pytest.raises(FailedPrecondition, match="not lost"):
        core.replace_device(SimDevice("rk3588", clock=bed.clock, mode="virtual"))
    bed.clock.advance(0.05)
    bed.device.lose("unplugged")
    bed.run()
    assert job.state is JobState.FAILED
    assert core.device_health("sim0") is DeviceHealth.LOST
    with pytest.raises(DeviceLost):
        bed.burn(ctx, q, 0.1)
    fresh = SimDevice("rk3588", clock=bed.clock, mode="virtual")
    fresh.open()
    entry = core.replace_device(fresh)
    assert entry.device is fresh
    assert core.device_health("sim0") is DeviceHealth.OK
    with pytest.raises(NotFound):
        core.context(ALICE, ctx.id)
    assert core.statistics().contexts == 0
    again = core.create_context(ALICE)
    q2 = core.create_queue(ALICE, again.id)
    [done] = bed.burn(again, q2, 0.01)
    bed.run()
    assert done.state is JobState.COMPLETED
    with pytest.raises(NotFound):
        core.replace_device(SimDevice("rk3588", clock=bed.clock, mode="virtual", name="other"))
