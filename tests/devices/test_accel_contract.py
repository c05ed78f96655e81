"""The device contract suite, run against every accel and NPU render-node adapter on fake kernels.

The suite's tests are imported from ``test_contract`` and collected here with this module's
``dut`` fixture, so every generic test runs against every accel adapter. Two tests depend on a
job failing *with a reason*: real kernels report at most a status code (ivpu's firmware job
status, amdxdna's ERT state, rknpu's SUBMIT outcome), and rocket, ethosu, qaic and etnaviv
report nothing at all. Those two are
restated below with the assertions each UAPI can support.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from npud.vocab import DeviceHealth
from tests.devices.accel_harness import ACCEL_DRIVERS, REPORTS_JOB_ERRORS, factory
from tests.devices.contract import (
    AdapterFactory,
    DeviceUnderTest,
    add_job,
    bad_job,
    check_add,
)
from tests.devices.fakekernel.etnaviv import GC7000, VIPNANO_QI
from tests.devices.test_contract import (
    test_abort_queued_and_running,
    test_add_job_computes,
    test_bad_submissions_are_refused,
    test_buffer_roundtrip,
    test_burn_job_takes_its_time,
    test_capabilities_are_coherent,
    test_close_aborts_in_flight,
    test_engines_keep_fifo_order,
    test_export_gives_fd_or_unsupported,
    test_freed_buffer_is_not_found,
    test_is_a_device,
    test_wait_for_orders_across_engines,
    test_zero_size_buffer_is_invalid,
)

ACCEL = [pytest.param(factory(d), id=d) for d in ACCEL_DRIVERS]
# etnaviv with two NPU cores beside the GPU: two engines, so the multi-engine tests run too.
ACCEL.append(
    pytest.param(
        factory("etnaviv", cores=(VIPNANO_QI, GC7000, VIPNANO_QI)), id="etnaviv-two-npu-cores"
    )
)

__all__ = [
    "test_abort_queued_and_running",
    "test_add_job_computes",
    "test_bad_submissions_are_refused",
    "test_buffer_roundtrip",
    "test_burn_job_takes_its_time",
    "test_capabilities_are_coherent",
    "test_close_aborts_in_flight",
    "test_engines_keep_fifo_order",
    "test_export_gives_fd_or_unsupported",
    "test_freed_buffer_is_not_found",
    "test_is_a_device",
    "test_wait_for_orders_across_engines",
    "test_zero_size_buffer_is_invalid",
]


@pytest.fixture(params=ACCEL)
def dut(request: pytest.FixtureRequest) -> Iterator[DeviceUnderTest]:
    """An accel adapter opened on its fake kernel with the stand-in firmware."""
    make: AdapterFactory = request.param
    with make() as under_test:
        yield under_test


def test_failed_job_fails_alone(dut: DeviceUnderTest) -> None:
    """A job the firmware fails completes ERROR where the UAPI reports it; the device serves on."""
    completion = dut.run(bad_job(dut.device))
    if dut.device.capabilities.driver in REPORTS_JOB_ERRORS:
        assert completion.status == "error"
        assert completion.error  # the driver's status code, named
    else:
        assert completion.status == "ok"  # no job status in this UAPI: npud cannot know
    job = add_job(dut.device, seed=1)
    check_add(dut, job, dut.run(job.submission))
    assert dut.device.health() is DeviceHealth.OK


def test_statistics_count_jobs(dut: DeviceUnderTest) -> None:
    """Statistics count submitted, completed and failed jobs as the UAPI reports them."""
    dut.run(add_job(dut.device).submission)
    dut.run(bad_job(dut.device))
    stats = dut.device.statistics()
    failed = 1 if dut.device.capabilities.driver in REPORTS_JOB_ERRORS else 0
    assert (stats.submitted, stats.completed, stats.failed, stats.in_flight) == (
        2,
        2 - failed,
        failed,
        0,
    )
    assert len(stats.busy_s_per_engine) == len(dut.device.capabilities.engines)
    assert stats.buffers >= 4
