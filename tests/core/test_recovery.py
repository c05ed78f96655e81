"""Fault handling: watchdog, job errors, device loss; the loop never dies."""

from __future__ import annotations

import pytest

from npud.core.service import JobSpec
from npud.errors import DeviceLost, JobFailed, JobTimedOut
from npud.isa import Program
from npud.vocab import BufferUsage, JobState, SchedulingClass
from tests.core.harness import ALICE, make_bed


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


def test_submits_on_a_lost_device_leave_no_command_buffer_behind() -> None:
    """Twenty submits on a lost device, each with a fresh COMMAND buffer as an inline stream
    gets: every one is DeviceLost, and the context's, the residency manager's and the device's
    buffer counts are back where they were before the loss."""
    bed = make_bed()
    core = bed.core
    ctx = bed.context()
    queue = bed.queue(ctx, SchedulingClass.LATENCY)
    [done] = bed.burn(ctx, queue, 0.001)
    bed.run()
    assert done.state is JobState.COMPLETED
    residency = core.device().residency
    before = (len(core.buffers(ALICE, ctx.id)), residency.statistics().buffers)
    device_before = bed.device.statistics().buffers
    bed.device.lose("unplugged")
    bed.run()
    blob = Program().burn(0.001).encode()

    def inline_submit() -> None:  # what the api does for a job's inline command stream
        buf = core.create_buffer(ALICE, ctx.id, len(blob), usage=BufferUsage.COMMAND, recycle=True)
        core.write_buffer(ALICE, ctx.id, buf.id, 0, blob)
        core.submit(ALICE, ctx.id, [JobSpec(queue.id, buf.id)])

    for _ in range(20):
        with pytest.raises(DeviceLost):
            inline_submit()
    assert (len(core.buffers(ALICE, ctx.id)), residency.statistics().buffers) == before
    assert bed.device.statistics().buffers == device_before
