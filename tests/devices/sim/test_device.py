"""SimDevice on a VirtualClock: engines, ordering, memory tiers and fault injection."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npud.clock import VirtualClock
from npud.devices.base import Binding, BufferUse, Completion, Submission
from npud.devices.sim import PROFILES, SimDevice
from npud.errors import DeviceLost, InvalidArgument, OutOfDeviceMemory
from npud.isa import DType, Op, Program, T
from npud.isa.layout import HEADER, RECORD_HEADER, TENSOR
from npud.vocab import DeviceHealth, MemoryTier
from tests.devices.contract import add_job, burn_job, check_add, sim_virtual, upload
from tests.devices.sim.rig import Rig


def device(**kwargs: object) -> tuple[SimDevice, VirtualClock]:
    clock = VirtualClock()
    dev = SimDevice(clock=clock, **kwargs)  # type: ignore[arg-type]
    dev.open()
    return dev, clock


def test_two_engines_burn_concurrently() -> None:
    """Two BURN(d) jobs on two engines both complete at t = d, not 2d."""
    dev, clock = device()
    done: list[Completion] = []
    dev.submit(burn_job(dev, 0.5, engine=0), done.append)
    dev.submit(burn_job(dev, 0.5, engine=1), done.append)
    clock.run_until_idle()
    assert [c.finished_at for c in done] == [0.5, 0.5]
    assert clock.now() == 0.5


def test_one_engine_serialises() -> None:
    """Two BURN(d) jobs on one engine complete at d and 2d, in order."""
    dev, clock = device()
    done: list[Completion] = []
    first = dev.submit(burn_job(dev, 0.5), done.append)
    second = dev.submit(burn_job(dev, 0.5), done.append)
    clock.run_until_idle()
    assert [(c.token, c.started_at, c.finished_at) for c in done] == [
        (first, 0.0, 0.5),
        (second, 0.5, 1.0),
    ]
    assert dev.statistics().busy_s_per_engine[0] == 1.0


def test_wait_for_delays_the_start() -> None:
    """A job waiting on a token starts when that job completes, even on an idle engine."""
    dev, clock = device()
    done: list[Completion] = []
    token = dev.submit(burn_job(dev, 0.3, engine=0), done.append)
    dev.submit(burn_job(dev, 0.2, engine=1, wait_for=(token,)), done.append)
    clock.run_until_idle()
    assert [(c.started_at, c.finished_at) for c in done] == [(0.0, 0.3), (0.3, 0.5)]


def test_unknown_wait_token_is_refused() -> None:
    """wait_for naming a token never issued is an invalid submission."""
    dev, _ = device()
    with pytest.raises(InvalidArgument):
        dev.submit(burn_job(dev, 0.1, wait_for=(42,)), lambda c: None)  # type: ignore[arg-type]


def test_tiers_have_capacities_and_refuse_with_enomem() -> None:
    """SRAM fills up: the next allocation raises OutOfDeviceMemory; freeing makes room."""
    dev, _ = device()
    sram = dev.capabilities.tier(MemoryTier.SRAM)
    assert sram.capacity_bytes == PROFILES["rk3588"].sram_capacity
    big = dev.create_buffer(sram.capacity_bytes - 4096, MemoryTier.SRAM)
    dev.create_buffer(1, MemoryTier.SRAM)
    with pytest.raises(OutOfDeviceMemory, match="sram has 0 of"):
        dev.create_buffer(1, MemoryTier.SRAM)
    dev.free_buffer(big.handle)
    dev.create_buffer(8192, MemoryTier.SRAM)
    assert dev.statistics().used_bytes[MemoryTier.SRAM] == 4096 + 8192
    with pytest.raises(InvalidArgument, match="can never fit"):
        dev.create_buffer(sram.capacity_bytes + 1, MemoryTier.SRAM)
    with pytest.raises(InvalidArgument):
        dev.create_buffer(16, MemoryTier.HOST)


def test_injected_oom() -> None:
    """inject_oom makes the next allocation in that tier fail, then allocation works again."""
    dev, _ = device()
    dev.inject_oom(MemoryTier.DRAM)
    with pytest.raises(OutOfDeviceMemory, match="injected"):
        dev.create_buffer(16, MemoryTier.DRAM)
    dev.create_buffer(16, MemoryTier.SRAM)
    dev.create_buffer(16, MemoryTier.DRAM)


def test_hang_until_reset() -> None:
    """A hung job never completes; reset_engine aborts it with the reason and the engine serves."""
    dev, clock = device()
    dev.inject_hang(0)
    hung: list[Completion] = []
    behind: list[Completion] = []
    dev.submit(burn_job(dev, 0.1), hung.append)
    job = add_job(dev)
    dev.submit(job.submission, behind.append)
    clock.advance(100.0)
    assert (hung, behind) == ([], [])
    assert dev.statistics().in_flight == 2
    dev.reset_engine(0, "watchdog: job exceeded 0.5 s")
    assert hung == []  # delivered from the clock, not inside reset_engine
    clock.run_until_idle()
    assert hung[0].status == "aborted"
    assert hung[0].error == "watchdog: job exceeded 0.5 s"
    assert behind[0].status == "ok"
    stats = dev.statistics()
    assert (stats.resets, stats.aborted, stats.in_flight) == (1, 1, 0)


def test_injected_job_error() -> None:
    """inject_job_error fails the next job on that engine only."""
    dev, clock = device()
    dev.inject_job_error(1, "ECC error in NPU SRAM")
    done: list[Completion] = []
    dev.submit(burn_job(dev, 0.1, engine=0), done.append)
    dev.submit(burn_job(dev, 0.1, engine=1), done.append)
    dev.submit(burn_job(dev, 0.1, engine=1), done.append)
    clock.run_until_idle()
    assert [(c.status, c.error) for c in sorted(done, key=lambda c: c.token)] == [
        ("ok", None),
        ("error", "ECC error in NPU SRAM"),
        ("ok", None),
    ]


def test_device_loss() -> None:
    """lose(): in-flight jobs complete DEVICE_LOST, listeners hear why, later calls raise."""
    dev, clock = device()
    heard: list[str] = []
    dev.add_loss_listener(heard.append)
    done: list[Completion] = []
    dev.submit(burn_job(dev, 1.0, engine=0), done.append)
    dev.submit(burn_job(dev, 1.0, engine=0), done.append)
    buf = dev.create_buffer(64, MemoryTier.DRAM)
    submission = burn_job(dev, 1.0)
    clock.advance(0.5)
    dev.lose("unplugged")
    clock.run_until_idle()
    assert [c.status for c in done] == ["device_lost", "device_lost"]
    assert heard == ["unplugged"]
    assert dev.health() is DeviceHealth.LOST
    with pytest.raises(DeviceLost, match="unplugged"):
        dev.create_buffer(64, MemoryTier.DRAM)
    with pytest.raises(DeviceLost):
        dev.submit(submission, lambda c: None)
    dev.free_buffer(buf.handle)  # owners can still clean up


def test_abort_running_job_writes_nothing() -> None:
    """An aborted running job's outputs are never written (the sim executes at completion)."""
    dev, clock = device()
    job = add_job(dev)
    done: list[Completion] = []
    token = dev.submit(job.submission, done.append)
    assert dev.abort(token)
    clock.run_until_idle()
    assert done[0].status == "aborted"
    view = dev.map_buffer(job.out.handle)
    assert not any(view[: job.expected.nbytes])
    view.release()


def test_writing_a_read_only_binding_fails() -> None:
    """An op that writes a slot bound READ fails the job naming the op and field."""
    rig = Rig()
    x = rig.input(np.ones(4), DType.F32)
    completion = rig.run_blob(Program().silu(x, x).encode())
    assert completion.status == "error"
    assert completion.error == (
        "op 0 (SILU): field out: writes slot 0, which the job bound read-only"
    )


@pytest.mark.parametrize("name", list(PROFILES))
def test_profiles_shape_capabilities(name: str) -> None:
    """Every profile yields a device whose engines and tiers match the profile."""
    profile = PROFILES[name]
    dev = SimDevice(name, clock=VirtualClock())
    caps = dev.capabilities
    assert caps.board == name
    assert caps.simulated
    assert len(caps.engines) == profile.engines
    assert caps.tier(MemoryTier.SRAM).bandwidth_bytes_per_s == profile.sram_bandwidth
    assert caps.tier(MemoryTier.DRAM).capacity_bytes == profile.dram_capacity
    assert caps.tier(MemoryTier.HOST).capacity_bytes == 0


def test_unknown_profile() -> None:
    """An unknown profile name is refused with the list of known ones."""
    with pytest.raises(InvalidArgument, match="rk3588"):
        SimDevice("tpu-v9")


# ---- malformed command streams fail only their job (hypothesis) --------------------------


def _good_blob() -> bytes:
    prog = Program()
    prog.burn(0.0)
    prog.add(T(0, 0, (8,)), T(0, 0, (8,)), T(0, 32, (8,)))
    prog.argmax(T(1, 0, (2,), DType.I32), T(0, 0, (2, 4)))
    return prog.encode()


def _mutations() -> st.SearchStrategy[tuple[str, bytes]]:
    good = _good_blob()
    rec1 = HEADER.size + RECORD_HEADER.size + 8  # op 1 starts after op 0 (BURN: 8-byte params)
    t_b = rec1 + RECORD_HEADER.size + 2 * TENSOR.size  # op 1's operand b
    unknown = st.integers(15, 0xFFFF).map(
        lambda code: good[:rec1] + code.to_bytes(2, "little") + good[rec1 + 2 :]
    )
    truncated = st.integers(0, len(good) - 1).map(lambda cut: good[:cut])
    out_of_bounds = st.integers(4096 - 31, 1 << 40).map(
        lambda off: good[: t_b + 8] + off.to_bytes(8, "little") + good[t_b + 16 :]
    )
    shape_mismatch = st.integers(1, 7).map(
        lambda d: good[: t_b + 16] + d.to_bytes(4, "little") + good[t_b + 20 :]
    )
    wrong_dtype = st.sampled_from([DType.I32, DType.I8]).map(
        lambda d: good[: t_b + 2] + bytes([int(d)]) + good[t_b + 3 :]
    )
    return st.one_of(
        unknown.map(lambda b: ("opcode", b)),
        truncated.map(lambda b: ("", b)),
        out_of_bounds.map(lambda b: ("b", b)),
        shape_mismatch.map(lambda b: ("b", b)),
        wrong_dtype.map(lambda b: ("b", b)),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=_mutations())
def test_malformed_stream_fails_only_its_job(case: tuple[str, bytes]) -> None:
    """Truncated/unknown-opcode/out-of-bounds/mismatched/wrong-dtype streams fail alone."""
    field, blob = case
    with sim_virtual() as dut:
        dev = dut.device
        data = dev.create_buffer(4096, MemoryTier.DRAM)
        out = dev.create_buffer(4096, MemoryTier.DRAM)
        cmd = upload(dev, blob)
        bindings = (Binding(data.handle, BufferUse.READWRITE), Binding(out.handle, BufferUse.WRITE))
        bad = dut.run(Submission(cmd.handle, 0, max(1, len(blob)), bindings, engine=0))
        assert bad.status == "error"
        assert bad.error is not None
        assert bad.error.startswith(("op ", "header: field "))
        assert "field " in bad.error
        if field:
            assert bad.error.startswith("op 1 (")
            assert f"field {field}" in bad.error
        job = add_job(dev, seed=3)
        check_add(dut, job, dut.run(job.submission))
        assert dev.health() is DeviceHealth.OK


def test_opcode_enum_is_dense() -> None:
    """Opcodes are 1..14, so 15 and above are unknown (what the mutation strategy assumes)."""
    assert sorted(int(op) for op in Op) == list(range(1, 15))
