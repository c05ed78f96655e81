"""The device contract suite, run against every adapter in ``contract.ADAPTERS``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from npud.devices.base import Binding, BufferUse, Device, Submission, SubmitToken
from npud.errors import InvalidArgument, NotFound, Unsupported
from npud.vocab import DeviceHealth, MemoryTier
from tests.devices.contract import (
    ADAPTERS,
    AdapterFactory,
    DeviceUnderTest,
    add_job,
    bad_job,
    burn_job,
    check_add,
    download,
    upload,
)


@pytest.fixture(params=ADAPTERS)
def dut(request: pytest.FixtureRequest) -> Iterator[DeviceUnderTest]:
    factory: AdapterFactory = request.param
    with factory() as under_test:
        yield under_test


def test_is_a_device(dut: DeviceUnderTest) -> None:
    """The adapter satisfies the runtime-checkable Device protocol."""
    assert isinstance(dut.device, Device)
    assert dut.device.name


def test_capabilities_are_coherent(dut: DeviceUnderTest) -> None:
    """Engines are indexed 0..n-1, tiers are distinct with non-negative capacity."""
    caps = dut.device.capabilities
    assert [e.index for e in caps.engines] == list(range(len(caps.engines)))
    assert len(caps.engines) >= 1
    assert len({t.tier for t in caps.tiers}) == len(caps.tiers)
    assert all(t.capacity_bytes >= 0 for t in caps.tiers)
    assert caps.tier(MemoryTier.DRAM).capacity_bytes > 0
    assert caps.native_priorities >= 1
    assert dut.device.health() is DeviceHealth.OK


def test_buffer_roundtrip(dut: DeviceUnderTest) -> None:
    """Bytes written through a mapping read back identically; size is rounded up, not down."""
    data = bytes(range(256)) * 3
    buf = upload(dut.device, data)
    assert buf.size >= len(data)
    assert buf.tier is MemoryTier.DRAM
    assert download(dut.device, buf, len(data)) == data
    dut.device.free_buffer(buf.handle)


def test_freed_buffer_is_not_found(dut: DeviceUnderTest) -> None:
    """A freed handle is unknown to map and free."""
    buf = dut.device.create_buffer(100, MemoryTier.DRAM)
    dut.device.free_buffer(buf.handle)
    with pytest.raises(NotFound):
        dut.device.map_buffer(buf.handle)
    with pytest.raises(NotFound):
        dut.device.free_buffer(buf.handle)


def test_zero_size_buffer_is_invalid(dut: DeviceUnderTest) -> None:
    """A zero-byte allocation is refused as invalid."""
    with pytest.raises(InvalidArgument):
        dut.device.create_buffer(0, MemoryTier.DRAM)


def test_export_gives_fd_or_unsupported(dut: DeviceUnderTest) -> None:
    """export_buffer returns an fd, or raises Unsupported when the device cannot export."""
    buf = dut.device.create_buffer(4096, MemoryTier.DRAM)
    if dut.device.capabilities.can_export:
        fd = dut.device.export_buffer(buf.handle)
        assert fd >= 0
        import os

        os.close(fd)
    else:
        with pytest.raises(Unsupported):
            dut.device.export_buffer(buf.handle)


def test_add_job_computes(dut: DeviceUnderTest) -> None:
    """A tiny ADD job completes OK, once, with the right result."""
    job = add_job(dut.device)
    completion = dut.run(job.submission)
    check_add(dut, job, completion)
    assert completion.finished_at >= completion.started_at
    assert len(dut.completions) == 1


def test_burn_job_takes_its_time(dut: DeviceUnderTest) -> None:
    """A BURN job completes OK and lasts at least its burn time on the device's clock."""
    completion = dut.run(burn_job(dut.device, 0.02))
    assert completion.status == "ok"
    assert completion.finished_at - completion.started_at >= 0.02 - 1e-3
    if dut.simulated_time:
        assert completion.finished_at - completion.started_at == pytest.approx(0.02)


def test_malformed_job_fails_alone(dut: DeviceUnderTest) -> None:
    """A malformed stream fails only its job, naming op and field; the device keeps serving."""
    completion = dut.run(bad_job(dut.device))
    assert completion.status == "error"
    assert completion.error is not None
    assert "op 1 (ADD)" in completion.error
    assert "field b" in completion.error
    job = add_job(dut.device, seed=1)
    check_add(dut, job, dut.run(job.submission))
    assert dut.device.health() is DeviceHealth.OK


def test_bad_submissions_are_refused(dut: DeviceUnderTest) -> None:
    """An engine out of range or an unknown handle is refused at submit, not queued."""
    job = add_job(dut.device)
    engines = len(dut.device.capabilities.engines)
    s = job.submission
    bad_engine = Submission(s.command, 0, s.command_size, s.bindings, engine=engines)
    with pytest.raises(InvalidArgument):
        dut.device.submit(bad_engine, lambda c: None)
    ghost = Submission(s.command, 0, s.command_size, (Binding(99999, BufferUse.READ),), 0)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        dut.device.submit(ghost, lambda c: None)
    assert dut.device.statistics().submitted == 0


def test_engines_keep_fifo_order(dut: DeviceUnderTest) -> None:
    """Jobs on one engine run in submission order."""
    _, first = dut.submit(burn_job(dut.device, 0.02))
    job = add_job(dut.device)
    _, second = dut.submit(job.submission)
    dut.run_until(lambda: bool(first and second), 30.0)
    assert second[0].started_at >= first[0].finished_at - 1e-9
    check_add(dut, job, second[0])


def test_wait_for_orders_across_engines(dut: DeviceUnderTest) -> None:
    """A job waiting on another engine's job starts only after it completes."""
    if len(dut.device.capabilities.engines) < 2:
        pytest.skip("needs two engines")
    token, first = dut.submit(burn_job(dut.device, 0.02, engine=0))
    _, second = dut.submit(burn_job(dut.device, 0.0, engine=1, wait_for=(token,)))
    dut.run_until(lambda: bool(first and second), 30.0)
    assert second[0].started_at >= first[0].finished_at - 1e-9


def test_abort_queued_and_running(dut: DeviceUnderTest) -> None:
    """Aborting a queued and a running job completes both ABORTED; later aborts say False."""
    running_token, running = dut.submit(burn_job(dut.device, 30.0))
    queued_token, queued = dut.submit(burn_job(dut.device, 0.01))
    assert dut.device.abort(queued_token)
    if dut.device.capabilities.can_abort:
        assert dut.device.abort(running_token)
        dut.run_until(lambda: bool(running and queued), 10.0)
        assert running[0].status == "aborted"
    dut.run_until(lambda: bool(queued), 10.0)
    assert queued[0].status == "aborted"
    assert not dut.device.abort(queued_token)
    assert not dut.device.abort(SubmitToken(10**9))


def test_statistics_count_jobs(dut: DeviceUnderTest) -> None:
    """Statistics count submitted, completed and failed jobs and report no job in flight."""
    job = add_job(dut.device)
    dut.run(job.submission)
    dut.run(bad_job(dut.device))
    stats = dut.device.statistics()
    assert (stats.submitted, stats.completed, stats.failed, stats.in_flight) == (2, 1, 1, 0)
    assert stats.health is DeviceHealth.OK
    assert len(stats.busy_s_per_engine) == len(dut.device.capabilities.engines)
    assert stats.buffers >= 4


def test_close_aborts_in_flight(dut: DeviceUnderTest) -> None:
    """Closing the device completes an in-flight job as ABORTED; close is idempotent."""
    _, box = dut.submit(burn_job(dut.device, 30.0))
    dut.device.close()
    dut.device.close()
    dut.run_until(lambda: bool(box), 10.0)
    assert box[0].status == "aborted"
