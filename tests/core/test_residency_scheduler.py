"""Residency under the real scheduler: many tenants, a DRAM budget below their working set.

The Core facade and its scheduler run the jobs (prepare before dispatch, hold when memory is
busy, begin/end around execution) on the simulated NPU with a virtual clock; results are
checked against numpy.
"""

from __future__ import annotations

import numpy as np

from npud.clock import VirtualClock
from npud.core.owner import Owner
from npud.core.service import Core, JobSpec
from npud.devices.base import BufferUse
from npud.devices.sim.device import SimDevice
from npud.isa import Program, T
from npud.vocab import BufferUsage, JobState, MemoryTier, Persistence

KiB = 1024
N = 64
STEPS = 4


def test_scheduled_jobs_stay_correct_while_residency_evicts_and_restores() -> None:
    """Three tenants queue all their steps at once; the engines would run more jobs than fit in
    the budget, so the scheduler holds some, residency spills and restores state between them,
    and every accumulator still equals its numpy reference."""
    clock = VirtualClock()
    dev = SimDevice("rk3588", clock=clock, sram_capacity=0)
    dev.open()
    core = Core(clock)
    entry = core.add_device(dev, budgets={MemoryTier.DRAM: 64 * KiB})
    res = entry.residency
    rng = np.random.default_rng(7)
    prog = (
        Program()
        .matmul(T(2, 0, (1, N)), T(0, 0, (1, N)), T(1, 0, (N, N)))
        .add(T(3, 0, (1, N)), T(3, 0, (1, N)), T(2, 0, (1, N)))
        .encode()
    )
    tenants = []
    for i in range(3):
        owner = Owner(uid=1000 + i, gid=1000, pid=100 + i, name=f"user{i}")
        ctx = core.create_context(owner)
        queue = core.create_queue(owner, ctx.id)
        w = rng.integers(-2, 3, size=(N, N)).astype(np.float32)
        weights = core.create_buffer(
            owner, ctx.id, w.nbytes, usage=BufferUsage.WEIGHTS, persistence=Persistence.PERSISTENT
        )
        core.write_buffer(owner, ctx.id, weights.id, 0, w.tobytes())
        weights = core.seal_buffer(owner, ctx.id, weights.id)
        cmd = core.create_buffer(owner, ctx.id, len(prog), usage=BufferUsage.COMMAND)
        core.write_buffer(owner, ctx.id, cmd.id, 0, prog)
        tmp = core.create_buffer(owner, ctx.id, N * 4, usage=BufferUsage.SCRATCH)
        acc = core.create_buffer(owner, ctx.id, N * 4, usage=BufferUsage.STATE)
        ref = np.zeros(N, dtype=np.float32)
        specs = []
        for _ in range(STEPS):
            x = rng.integers(-2, 3, size=(1, N)).astype(np.float32)
            xb = core.create_buffer(owner, ctx.id, N * 4, usage=BufferUsage.STATE)  # a client input
            core.write_buffer(owner, ctx.id, xb.id, 0, x.tobytes())
            ref = ref + (x @ w)[0]
            bindings = (
                (xb.id, BufferUse.READ),
                (weights.id, BufferUse.READ),
                (tmp.id, BufferUse.WRITE),
                (acc.id, BufferUse.READWRITE),
            )
            specs.append(JobSpec(queue.id, cmd.id, bindings=bindings, kind="acc"))
        tenants.append((owner, ctx, acc, ref, specs))
    page = 4 * KiB  # the sim's allocation granule
    working_set = sum(-(-b.size // page) * page for b in res.buffers())
    assert working_set > 2 * 64 * KiB

    jobs = [job for owner, ctx, _, _, specs in tenants for job in core.submit(owner, ctx.id, specs)]
    clock.run_until_idle(limit=10.0)

    assert [job.state for job in jobs] == [JobState.COMPLETED] * len(jobs)
    for owner, ctx, acc, ref, _ in tenants:
        got = np.frombuffer(core.read_buffer(owner, ctx.id, acc.id, 0, N * 4), dtype=np.float32)
        np.testing.assert_array_equal(got, ref)
    stats = res.statistics()
    assert stats.evictions > 0
    assert stats.spills > 0
    assert stats.restores > 0
    assert stats.tier(MemoryTier.DRAM).used_bytes <= 64 * KiB
    for owner, ctx, *_ in tenants:
        core.destroy_context(owner, ctx.id)
    clock.run_until_idle(limit=20.0)
    after = res.statistics()
    assert after.context_bytes == {}
    assert after.buffers == after.warm_pool_buffers  # only the sealed weights remain, warm
    res.drain_warm_pool()
    assert [t.used_bytes for t in res.statistics().tiers] == [0, 0, 0]
