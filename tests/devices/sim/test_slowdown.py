"""A slowed-down board: the same profile N times slower, in both device modes."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from npud.devices.base import Completion, submit_and_wait
from npud.devices.sim import PROFILES, RK3588, SimDevice, estimate
from npud.devices.sim.profiles import slowed
from npud.errors import InvalidArgument
from npud.isa import DType, Program, T
from npud.vocab import MemoryTier
from tests.devices.contract import add_job, check_add, sim_virtual

SRAM, DRAM = MemoryTier.SRAM, MemoryTier.DRAM


def _mixed_program() -> Program:
    """A compute-bound matmul, a memory-bound add and a launch: every term of the model."""
    prog = Program()
    prog.matmul(T(2, 0, (64, 64)), T(0, 0, (64, 64)), T(1, 0, (64, 64), DType.I8, 0.1))
    prog.add(T(2, 0, (64, 64)), T(2, 0, (64, 64)), T(0, 0, (64, 64)))
    return prog


@pytest.mark.parametrize("profile", list(PROFILES.values()), ids=list(PROFILES))
@pytest.mark.parametrize("factor", [0.5, 3.0, 300.0])
def test_every_modelled_duration_scales_by_the_factor(profile, factor: float) -> None:
    """A slowed profile models every job exactly ``factor`` times longer, in any tiers."""
    prog = _mixed_program()
    for tiers in ([SRAM] * 3, [DRAM] * 3, [SRAM, DRAM, SRAM]):
        base = estimate(prog, tiers, profile)
        assert estimate(prog, tiers, slowed(profile, factor)) == pytest.approx(base * factor)


def test_slowing_keeps_ratios_and_capacities() -> None:
    """SRAM over DRAM and int8 over f32 stay as they were; capacities and engines do not move."""
    slow = slowed(RK3588, 40.0)
    assert slow.sram_bandwidth / slow.dram_bandwidth == pytest.approx(
        RK3588.sram_bandwidth / RK3588.dram_bandwidth
    )
    assert slow.peak(DType.I8) / slow.peak(DType.F32) == pytest.approx(
        RK3588.peak(DType.I8) / RK3588.peak(DType.F32)
    )
    assert (slow.dram_capacity, slow.sram_capacity, slow.engines) == (
        RK3588.dram_capacity,
        RK3588.sram_capacity,
        RK3588.engines,
    )
    assert slow.name == RK3588.name
    assert "slowed down x40" in slow.description
    assert slowed(RK3588, 1.0) is RK3588


@pytest.mark.parametrize("factor", [0.0, -2.0, math.nan, math.inf])
def test_a_slowdown_that_is_not_a_positive_number_is_refused(factor: float) -> None:
    """0, negatives, NaN and infinity are refused by the profile and by SimDevice, by name."""
    with pytest.raises(InvalidArgument, match="slowdown"):
        slowed(RK3588, factor)
    with pytest.raises(InvalidArgument, match="slowdown"):
        SimDevice(slowdown=factor)


def test_virtual_mode_completes_at_the_slowed_modelled_time() -> None:
    """On a virtual clock a slowed device ends a job at start + factor x the base model, and
    still computes the right result."""
    with sim_virtual() as base_dut:
        job = add_job(base_dut.device, n=4096)
        base = base_dut.run(job.submission)
        check_add(base_dut, job, base)
    slow_dev = SimDevice("rk3588", slowdown=25.0)
    slow_dev.open()
    try:
        job = add_job(slow_dev, n=4096)
        box: list[Completion] = []
        slow_dev.submit(job.submission, box.append)
        slow_dev.clock.run_until_idle()  # type: ignore[attr-defined]
        (done,) = box
        assert done.status == "ok", done.error
        assert done.modelled_s == pytest.approx(25.0 * base.modelled_s)
        assert done.finished_at - done.started_at == pytest.approx(done.modelled_s)
        out = np.frombuffer(slow_dev.map_buffer(job.out.handle)[: 4 * 4096], np.float32)
        np.testing.assert_array_equal(out, job.expected)
    finally:
        slow_dev.close()


@pytest.mark.slow
def test_process_mode_holds_the_engine_for_the_slowed_time() -> None:
    """In process mode the device process models the same slowed board (its reported modelled
    time is the factor times the base), and the job holds its engine at least that long."""
    prog = Program().add(T(2, 0, (4096,)), T(0, 0, (4096,)), T(1, 0, (4096,)))
    base = estimate(prog, [DRAM] * 3, RK3588)

    async def scenario() -> Completion:
        dev = SimDevice("rk3588", mode="process", slowdown=400.0)
        dev.open()
        try:
            job = add_job(dev, n=4096)
            done = await submit_and_wait(dev, job.submission)
            out = np.frombuffer(dev.map_buffer(job.out.handle)[: 4 * 4096], np.float32)
            np.testing.assert_array_equal(out, job.expected)
            return done
        finally:
            dev.close()

    done = asyncio.run(scenario())
    assert done.status == "ok", done.error
    assert done.modelled_s == pytest.approx(400.0 * base)
    # the engine is released at max(start + modelled, reply): never before the modelled time
    assert done.finished_at - done.started_at >= done.modelled_s
