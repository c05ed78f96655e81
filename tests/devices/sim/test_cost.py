"""The cost model: a pure function of program, operand tiers and board profile."""

from __future__ import annotations

import numpy as np
import pytest

from npud.devices.sim import PROFILES, RK3588, estimate, op_cost
from npud.isa import DType, Program, T
from npud.vocab import MemoryTier
from tests.devices.sim.rig import Rig

SRAM, DRAM = MemoryTier.SRAM, MemoryTier.DRAM


@pytest.mark.parametrize("profile", list(PROFILES.values()), ids=list(PROFILES))
def test_sram_beats_dram_by_the_bandwidth_ratio(profile) -> None:
    """A memory-bound ADD is modelled faster in SRAM than in DRAM by exactly the bandwidth ratio."""
    n = 64 * 1024
    prog = Program().add(T(2, 0, (n,)), T(0, 0, (n,)), T(1, 0, (n,)))
    (ins,) = prog.instructions
    in_dram = op_cost(ins, [DRAM] * 3, profile)
    in_sram = op_cost(ins, [SRAM] * 3, profile)
    assert in_dram.memory_bound
    assert in_sram.memory_bound
    assert in_dram.memory_s == pytest.approx(3 * 4 * n / profile.dram_bandwidth)
    ratio = profile.sram_bandwidth / profile.dram_bandwidth
    assert ratio > 1
    assert in_dram.seconds / in_sram.seconds == pytest.approx(ratio)
    job_dram = estimate(prog, [DRAM] * 3, profile)
    job_sram = estimate(prog, [SRAM] * 3, profile)
    assert job_dram - profile.launch_overhead_s == pytest.approx(in_dram.seconds)
    assert job_sram < job_dram


def test_mixed_tiers_sum_per_operand() -> None:
    """Memory time sums each operand's bytes over its own tier's bandwidth."""
    n = 1000
    (ins,) = Program().add(T(2, 0, (n,)), T(0, 0, (n,)), T(1, 0, (n,))).instructions
    cost = op_cost(ins, [SRAM, DRAM, SRAM], RK3588)
    expected = 4 * n * (2 / RK3588.sram_bandwidth + 1 / RK3588.dram_bandwidth)
    assert cost.memory_s == pytest.approx(expected)


def test_matmul_is_compute_bound_and_int8_is_fastest() -> None:
    """A large square matmul is compute-bound, and its time follows the dtype's peak rate."""
    m = k = n = 512
    times = {}
    for b_dtype in (DType.F32, DType.F16, DType.I8):
        a_dtype = DType.F32 if b_dtype is DType.F32 else DType.F16
        prog = Program().matmul(
            T(2, 0, (m, n)), T(0, 0, (m, k), a_dtype), T(1, 0, (k, n), b_dtype, 0.1)
        )
        (ins,) = prog.instructions
        cost = op_cost(ins, [SRAM] * 3, RK3588)
        assert cost.ops == 2 * m * n * k
        assert not cost.memory_bound
        assert cost.compute_s == pytest.approx(cost.ops / RK3588.peak(b_dtype))
        times[b_dtype] = cost.seconds
    assert times[DType.I8] < times[DType.F16] < times[DType.F32]


def test_attention_counts_only_the_causal_prefix() -> None:
    """ATTENTION's cost grows with start_pos: it reads and scores only visible positions."""

    def cost(start: int):
        prog = Program().attention(
            T(0, 0, (1, 64)),
            T(1, 0, (1, 64)),
            T(2, 0, (2, 256, 32)),
            T(3, 0, (2, 256, 32)),
            n_heads=2,
            n_kv_heads=2,
            head_dim=32,
            start_pos=start,
        )
        return op_cost(prog.instructions[0], [DRAM] * 4, RK3588)

    early, late = cost(10), cost(200)
    assert late.ops == early.ops * 201 // 11
    assert late.memory_s > early.memory_s


def test_burn_takes_exactly_its_seconds() -> None:
    """A BURN-only job is modelled at exactly its burn time; other work adds launch overhead."""
    assert estimate(Program().burn(0.25).burn(0.5), [], RK3588) == 0.75
    n = 16
    prog = Program().burn(0.25).add(T(0, 0, (n,)), T(0, 0, (n,)), T(0, 0, (n,)))
    (_, add) = prog.instructions
    expected = RK3588.launch_overhead_s + 0.25 + op_cost(add, [DRAM], RK3588).seconds
    assert estimate(prog, [DRAM], RK3588) == pytest.approx(expected)


def test_device_reports_the_model() -> None:
    """A job's completion reports the estimate for its operands' actual tiers as modelled_s."""
    rig = Rig()
    n = 4096
    a = rig.input(np.ones(n), DType.F32, tier=SRAM)
    b = rig.input(np.ones(n), DType.F32, tier=DRAM)
    out = rig.output((n,), DType.F32, tier=SRAM)
    prog = Program().add(out, a, b)
    completion = rig.run(prog)
    assert completion.modelled_s == pytest.approx(estimate(prog, [SRAM, DRAM, SRAM], RK3588))
    assert completion.finished_at - completion.started_at == pytest.approx(completion.modelled_s)
    assert completion.bytes_read == 2 * 4 * n
    assert completion.bytes_written == 4 * n
