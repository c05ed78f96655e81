"""Residency with real jobs on the simulated NPU (virtual clock).

Jobs are driven the way the scheduler drives them (prepare -> begin_run -> device.submit ->
end_run), directly on the device, so that these tests pin down residency's own behaviour;
results are checked against numpy references of the same arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from npud.clock import VirtualClock
from npud.core.buffers import Buffer, Location
from npud.core.ids import ContextId
from npud.core.residency import ResidencyManager
from npud.devices.base import BufferUse, Completion, CompletionStatus, Submission
from npud.devices.sim.cost import estimate, op_cost
from npud.devices.sim.device import SimDevice
from npud.devices.sim.profiles import get_profile
from npud.isa import Program, T
from npud.vocab import BufferUsage, MemoryTier, Persistence

KiB = 1024
R, W, RW = BufferUse.READ, BufferUse.WRITE, BufferUse.READWRITE
F32 = npt.NDArray[np.float32]


def _sim(clock: VirtualClock, *, sram: int = 0, dram: int = 64 * 1024 * KiB) -> SimDevice:
    dev = SimDevice("rk3588", clock=clock, sram_capacity=sram, dram_capacity=dram)
    dev.open()
    return dev


def _run(
    res: ResidencyManager,
    dev: SimDevice,
    clock: VirtualClock,
    command: Buffer,
    program: Program,
    bindings: Sequence[tuple[Buffer, BufferUse]],
) -> Completion:
    """One job as the scheduler runs it: stream into its command buffer, prepare, run, end."""
    blob = program.encode()
    res.write(command, 0, blob)
    job = [command, *(b for b, _ in bindings)]
    assert res.prepare(job)
    res.begin_run(job)
    done: list[Completion] = []
    submission = Submission(
        command=res.binding(command, R).handle,
        command_offset=0,
        command_size=len(blob),
        bindings=tuple(res.binding(b, u) for b, u in bindings),
        engine=0,
    )
    dev.submit(submission, done.append)
    clock.run_until_idle()
    res.end_run(job, written=[b for b, u in bindings if BufferUse.WRITE in u])
    assert len(done) == 1
    assert done[0].status is CompletionStatus.OK, done[0].error
    return done[0]


def _f32(res: ResidencyManager, buf: Buffer, n: int) -> F32:
    return np.frombuffer(res.read(buf, 0, n * 4), dtype=np.float32).copy()


def test_shared_weights_one_allocation_and_a_later_attach_uploads_nothing() -> None:
    """Two contexts run jobs on one shared weights allocation (counted once); after both close
    it stays resident, and a third context's job runs on it with 0 bytes uploaded."""
    clock = VirtualClock()
    dev = _sim(clock)
    res = ResidencyManager(dev, clock)
    rng = np.random.default_rng(1)
    w = rng.integers(-3, 4, size=(64, 64)).astype(np.float32)
    ctxs = [ContextId(f"ctx-{i}") for i in range(3)]
    weights = res.create(
        ctxs[0], w.nbytes, usage=BufferUsage.WEIGHTS, persistence=Persistence.PERSISTENT
    )
    res.write(weights, 0, w.tobytes())
    weights = res.seal(ctxs[0], weights)
    assert weights.key is not None
    uploads_of_weights = sum(res.statistics().uploaded_bytes.values())

    def step(ctx: ContextId, shared: Buffer) -> None:
        x = rng.integers(-3, 4, size=(1, 64)).astype(np.float32)
        cmd = res.create(ctx, 4 * KiB, usage=BufferUsage.COMMAND)
        xb = res.create(ctx, x.nbytes, usage=BufferUsage.SCRATCH)
        out = res.create(ctx, x.nbytes, usage=BufferUsage.SCRATCH)
        res.write(xb, 0, x.tobytes())
        prog = Program().matmul(T(2, 0, (1, 64)), T(0, 0, (1, 64)), T(1, 0, (64, 64)))
        _run(res, dev, clock, cmd, prog, [(xb, R), (shared, R), (out, W)])
        np.testing.assert_array_equal(_f32(res, out, 64), (x @ w)[0])
        for b in (cmd, xb, out):
            res.release(ctx, b)

    step(ctxs[0], weights)
    other = res.open_persistent(ctxs[1], weights.key)
    assert other is weights
    step(ctxs[1], other)
    assert (
        res.statistics().tier(MemoryTier.DRAM).used_bytes
        == dev.statistics().used_bytes[MemoryTier.DRAM]
    )
    weight_allocations = [b for b in res.buffers() if b.usage is BufferUsage.WEIGHTS]
    assert len(weight_allocations) == 1
    res.release_context(ctxs[0])
    res.release_context(ctxs[1])
    stats = res.statistics()
    assert stats.warm_pool_buffers == 1
    assert weights.device is not None
    assert stats.warm_pool_bytes == weights.device.size

    before = sum(stats.uploaded_bytes.values())
    third = res.open_persistent(ctxs[2], weights.key)
    assert third is weights
    assert third.device is not None
    assert res.prepare([third])
    assert sum(res.statistics().uploaded_bytes.values()) - before == 0
    step(ctxs[2], third)
    assert uploads_of_weights == w.nbytes


def test_jobs_complete_correctly_under_a_budget_smaller_than_the_working_set(
    tmp_path: Path,
) -> None:
    """Three contexts whose buffers together exceed the DRAM budget run interleaved jobs:
    results match numpy, buffers are evicted and restored, and each state buffer's bytes
    survive every eviction bit-exact."""
    clock = VirtualClock()
    dev = _sim(clock)
    res = ResidencyManager(dev, clock, budgets={MemoryTier.DRAM: 48 * KiB}, state_dir=tmp_path)
    rng = np.random.default_rng(2)
    n = 64
    tenants = []
    for i in range(3):
        ctx = ContextId(f"ctx-{i}")
        w = rng.integers(-2, 3, size=(n, n)).astype(np.float32)
        wb = res.create(
            ctx, w.nbytes, usage=BufferUsage.WEIGHTS, persistence=Persistence.PERSISTENT
        )
        res.write(wb, 0, w.tobytes())
        tenants.append(
            _Tenant(
                w=w,
                weights=res.seal(ctx, wb),
                cmd=res.create(ctx, 4 * KiB, usage=BufferUsage.COMMAND),
                x=res.create(ctx, n * 4, usage=BufferUsage.SCRATCH),
                tmp=res.create(ctx, n * 4, usage=BufferUsage.SCRATCH),
                state=res.create(ctx, n * 4, usage=BufferUsage.STATE),
                ref=np.zeros(n, dtype=np.float32),
                last=bytes(n * 4),
            )
        )
    prog = (
        Program()
        .matmul(T(2, 0, (1, n)), T(0, 0, (1, n)), T(1, 0, (n, n)))
        .add(T(3, 0, (1, n)), T(3, 0, (1, n)), T(2, 0, (1, n)))
    )
    for _ in range(4):
        for t in tenants:
            x = rng.integers(-2, 3, size=(1, n)).astype(np.float32)
            res.write(t.x, 0, x.tobytes())
            assert res.read(t.state, 0, n * 4) == t.last  # survived, wherever it was
            bindings = [(t.x, R), (t.weights, R), (t.tmp, W), (t.state, RW)]
            _run(res, dev, clock, t.cmd, prog, bindings)
            t.ref = t.ref + (x @ t.w)[0]
            t.last = res.read(t.state, 0, n * 4)
            np.testing.assert_array_equal(np.frombuffer(t.last, dtype=np.float32), t.ref)
    stats = res.statistics()
    assert stats.evictions > 0
    assert stats.spills > 0  # state buffers went to host memory ...
    assert stats.restores > 0  # ... and came back
    assert stats.drops > 0  # sealed weights with a backing file were dropped, not copied
    assert stats.restored_bytes[MemoryTier.DRAM] > 0
    assert stats.tier(MemoryTier.DRAM).used_bytes <= 48 * KiB
    assert stats.misses > 0
    assert stats.hits > 0
    assert any(t.state.location is Location.HOST for t in tenants)


@dataclass(slots=True)
class _Tenant:
    """One context's buffers and its numpy reference."""

    w: F32
    weights: Buffer
    cmd: Buffer
    x: Buffer
    tmp: Buffer
    state: Buffer
    ref: F32
    last: bytes


POSITIONS = (0, 1, 2, 62, 63)  # early steps, then a nearly full cache


def _decode_step(pos: int) -> tuple[Program, int, int, int]:
    """A memory-bound decode-like step: q = x @ Wq, append k/v, attend over the KV cache."""
    heads, head_dim, seq = 8, 32, 64
    d = heads * head_dim
    cache = heads * seq * head_dim * 4
    prog = (
        Program()
        .matmul(T(3, 0, (1, d)), T(0, 0, (1, d)), T(1, 0, (d, d)))
        .kv_write(T(2, 0, (heads, seq, head_dim)), T(3, 0, (1, d)), start_pos=pos)
        .kv_write(T(2, cache, (heads, seq, head_dim)), T(3, 0, (1, d)), start_pos=pos)
        .attention(
            T(3, d * 4, (1, d)),
            T(3, 0, (1, d)),
            T(2, 0, (heads, seq, head_dim)),
            T(2, cache, (heads, seq, head_dim)),
            n_heads=heads,
            n_kv_heads=heads,
            head_dim=head_dim,
            start_pos=pos,
        )
    )
    return prog, d, cache, seq


def test_sram_placement_speeds_up_decode_by_what_the_cost_model_predicts() -> None:
    """With SRAM placement on, a decode-like step's modelled duration drops against DRAM-only,
    by exactly the cost model's prediction for the two placements; results are identical."""
    profile = get_profile("rk3588")
    runs: dict[bool, tuple[list[float], list[list[MemoryTier]], bytes]] = {}
    for policy in (False, True):
        clock = VirtualClock()
        dev = _sim(clock, sram=profile.sram_capacity)
        res = ResidencyManager(dev, clock, sram_policy=policy)
        ctx = ContextId("ctx-decode")
        rng = np.random.default_rng(3)
        prog, d, cache, _ = _decode_step(0)
        x = (rng.standard_normal((1, d)) / 4).astype(np.float32)
        w = (rng.standard_normal((d, d)) / 16).astype(np.float32)
        xb = res.create(ctx, x.nbytes, usage=BufferUsage.SCRATCH)
        wb = res.create(ctx, w.nbytes, usage=BufferUsage.WEIGHTS)
        kv = res.create(ctx, 2 * cache, usage=BufferUsage.STATE)
        act = res.create(ctx, 2 * d * 4, usage=BufferUsage.SCRATCH)
        cmd = res.create(ctx, 4 * KiB, usage=BufferUsage.COMMAND)
        res.write(xb, 0, x.tobytes())
        res.write(wb, 0, w.tobytes())
        modelled: list[float] = []
        placements: list[list[MemoryTier]] = []
        for pos in POSITIONS:
            prog, *_ = _decode_step(pos)
            done = _run(res, dev, clock, cmd, prog, [(xb, R), (wb, R), (kv, RW), (act, RW)])
            tiers = [b.device.tier for b in (xb, wb, kv, act) if b.device is not None]
            assert len(tiers) == 4
            placements.append(tiers)
            modelled.append(done.modelled_s)
            assert done.modelled_s == pytest.approx(estimate(prog, tiers, profile), rel=1e-12)
        runs[policy] = (modelled, placements, res.read(kv, 0, 2 * cache))

    dram_only, on = runs[False], runs[True]
    assert all(t is MemoryTier.DRAM for tiers in dram_only[1] for t in tiers)
    assert on[1][-1] == [MemoryTier.SRAM, MemoryTier.DRAM, MemoryTier.SRAM, MemoryTier.SRAM]
    assert on[2] == dram_only[2]  # placement changes time, never results
    prog, *_ = _decode_step(POSITIONS[-1])
    dram_tiers = [MemoryTier.DRAM] * 4
    assert sum(op_cost(i, dram_tiers, profile).memory_s for i in prog.instructions) > sum(
        op_cost(i, dram_tiers, profile).compute_s for i in prog.instructions
    )
    predicted = estimate(prog, dram_tiers, profile) - estimate(prog, on[1][-1], profile)
    saved = dram_only[0][-1] - on[0][-1]
    print(
        f"decode step modelled: DRAM-only {dram_only[0][-1] * 1e6:.2f} us, "
        f"SRAM placement {on[0][-1] * 1e6:.2f} us, predicted saving {predicted * 1e6:.2f} us"
    )
    assert predicted > 0
    assert saved == pytest.approx(predicted, rel=1e-9)
