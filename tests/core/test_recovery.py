"""Fault handling: watchdog, job errors, device loss; the loop never dies."""

from __future__ import annotations

import pytest

from npud.errors import DeviceLost, JobFailed, JobTimedOut
from npud.vocab import JobState, SchedulingClass
from tests.core.harness import make_bed


def test_a_hung_job_times_out_the_engine_is_reset_and_later_jobs_run() -> None:
    """inject_hang: TIMED_OUT within its timeout, engine reset, queued and later jobs run."""
    bed = make_bed()
    ctx = bed.context()
    queue = bed.queue(ctx, SchedulingClass.THROUGHPUT, in_order=False)
    bed.device.inject_hang(0)
    [hung] = bed.burn(ctx, queue, 0.002, engine=0, timeout_s=0.05)
    behind = bed.burn(ctx, queue, 0.002, engine=0, n=3)
    bed.run()
    assert hung.state is JobState.TIMED_OUT
    assert hung.error is not None
    assert hung.error.type is JobTimedOut
    assert "engine 0" in hung.error.message
    assert hung.finished_at == pytest.approx(0.05)  # exactly its timeout after it started
    assert bed.device.statistics().resets == 1
    assert bed.scheduler.statistics().watchdog_resets == 1
    assert all(j.state is JobState.COMPLETED for j in behind)
    later = bed.burn(ctx, queue, 0.002, engine=0, n=2)
    bed.run()
    assert all(j.state is JobState.COMPLETED for j in later)


def test_the_class_default_timeout_applies_when_the_job_sets_none() -> None:
    """A hung LATENCY job without its own timeout ends at the class default."""
    bed = make_bed()
    ctx = bed.context()
    queue = bed.queue(ctx, SchedulingClass.LATENCY)
    bed.device.inject_hang(0)
    [hung] = bed.burn(ctx, queue, 0.001, engine=0)
    bed.run()
    assert hung.state is JobState.TIMED_OUT
    default = bed.scheduler.policy.timeout_for(SchedulingClass.LATENCY)
    assert hung.run_s == pytest.approx(default)


def test_a_device_job_error_fails_only_that_job() -> None:
    """A completion with an error fails its job; the others complete."""
    bed = make_bed()
    ctx = bed.context()
    queue = bed.queue(ctx, SchedulingClass.THROUGHPUT, in_order=False)
    bed.device.inject_job_error(1, "illegal instruction")
    jobs = bed.burn(ctx, queue, 0.002, n=6)
    bed.run()
    failed = [j for j in jobs if j.state is JobState.FAILED]
    assert len(failed) == 1
    assert failed[0].error is not None
    assert failed[0].error.type is JobFailed
    assert "illegal instruction" in failed[0].error.message
    assert sum(j.state is JobState.COMPLETED for j in jobs) == 5


def test_device_loss_fails_running_and_queued_jobs_and_refuses_new_ones() -> None:
    """After loss every live job is FAILED with DeviceLost and submit raises DeviceLost."""
    bed = make_bed()
    ctx = bed.context()
    queue = bed.queue(ctx, SchedulingClass.THROUGHPUT)
    jobs = bed.burn(ctx, queue, 0.01, n=5)
    bed.clock.advance(0.015)
    bed.device.lose("unplugged")
    bed.run()
    assert jobs[0].state is JobState.COMPLETED
    for job in jobs[1:]:
        assert job.state is JobState.FAILED
        assert job.error is not None
        assert job.error.type is DeviceLost
        assert "unplugged" in job.error.message
    with pytest.raises(DeviceLost, match="unplugged"):
        bed.burn(ctx, queue, 0.01)
    stats = bed.scheduler.statistics()
    assert stats.lost_reason is not None
    assert "unplugged" in stats.lost_reason
    assert sum(c.running + c.ready + c.queued for c in stats.classes) == 0
