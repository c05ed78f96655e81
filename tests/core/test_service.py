"""The Core facade: ownership, admission limits, cancellation, context close, events, stats."""

from __future__ import annotations

import pytest

from npud.core.context import ContextQuotas
from npud.core.events import ContextEvent, Event, JobEvent
from npud.core.policy import SchedulerPolicy
from npud.core.service import CoreLimits, JobSpec
from npud.errors import (
    Cancelled,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    QueueFull,
    QuotaExceeded,
    TimeSliceExceeded,
)
from npud.vocab import BufferUsage, JobState, SchedulingClass
from tests.core.harness import ALICE, BOB, ROOT, make_bed


def test_other_users_see_not_found_and_admins_see_everything() -> None:
    """Ids of another owner's context are NotFound; root reaches them."""
    bed = make_bed()
    ctx = bed.context(ALICE)
    with pytest.raises(NotFound, match=ctx.id):
        bed.core.context(BOB, ctx.id)
    with pytest.raises(NotFound):
        bed.core.create_queue(BOB, ctx.id)
    assert bed.core.contexts(BOB) == []
    assert bed.core.context(ROOT, ctx.id) is ctx
    assert bed.core.contexts(ROOT, all_users=True) == [ctx]
    same_user_other_process = type(ALICE)(uid=ALICE.uid, gid=ALICE.gid, pid=999)
    assert bed.core.context(same_user_other_process, ctx.id) is ctx


def test_admin_group_members_are_admins() -> None:
    """A configured admin gid makes its members admins."""
    bed = make_bed(limits=CoreLimits(admin_gid=BOB.gid))
    ctx = bed.context(ALICE)
    assert bed.core.is_admin(BOB)
    assert bed.core.context(BOB, ctx.id) is ctx


def test_queue_depth_and_quotas_are_enforced_with_actionable_messages() -> None:
    """QueueFull and QuotaExceeded name the limit and the current value; nothing is admitted."""
    bed = make_bed(limits=CoreLimits(max_contexts_per_user=2))
    ctx = bed.context(quotas=ContextQuotas(max_queued_jobs=5, max_queues=2))
    queue = bed.queue(ctx, depth_limit=3)
    bed.burn(ctx, queue, 0.001, n=2)
    with pytest.raises(QueueFull, match=r"holds 2 jobs and the batch adds 2; its depth limit is 3"):
        bed.burn(ctx, queue, 0.001, n=2)
    other = bed.queue(ctx)
    with pytest.raises(QuotaExceeded, match=r"would hold 6 live jobs; its quota is 5"):
        bed.burn(ctx, other, 0.001, n=4)
    with pytest.raises(QuotaExceeded, match=r"has 2 queues; its quota is 2"):
        bed.queue(ctx)
    bed.context()
    with pytest.raises(QuotaExceeded, match=r"holds 2 contexts; the limit per user is 2"):
        bed.context()
    assert queue.depth == 2
    assert other.depth == 0


def test_a_throughput_job_over_the_time_slice_is_refused_with_advice_to_chunk() -> None:
    """An estimated duration over the slice raises TimeSliceExceeded; LATENCY is exempt."""
    bed = make_bed(SchedulerPolicy(time_slice_s=0.02))
    ctx = bed.context()
    tp = bed.queue(ctx, SchedulingClass.THROUGHPUT)
    model = r"50\.00 ms \(the device's cost model.*20\.00 ms.*at least 3 chunks"
    with pytest.raises(TimeSliceExceeded, match=model):
        bed.burn(ctx, tp, 0.05, kind="prefill")  # unknown kind: the device's model of it
    [lat] = bed.burn(ctx, bed.queue(ctx, SchedulingClass.LATENCY), 0.05, kind="prefill")
    bed.run()
    assert lat.state is JobState.COMPLETED
    with pytest.raises(TimeSliceExceeded, match=r"50\.00 ms \(measured average\)"):
        bed.burn(ctx, tp, 0.05, kind="prefill")
    with pytest.raises(TimeSliceExceeded, match="your estimate_s"):
        bed.burn(ctx, tp, 0.01, kind="new", estimate_s=0.05)  # the client's own estimate


def test_cancel_queued_and_running_jobs() -> None:
    """Queued jobs cancel at once; a running one is aborted on the device; both CANCELLED."""
    bed = make_bed()
    ctx = bed.context()
    queue = bed.queue(ctx)
    running, queued = bed.burn(ctx, queue, 0.01, n=2)
    bed.clock.advance(0.002)
    assert bed.core.cancel(ALICE, ctx.id, queued.id)
    assert queued.state is JobState.CANCELLED
    assert queued.started_at is None
    assert bed.core.cancel(ALICE, ctx.id, running.id)
    assert running.state is JobState.CANCELLED
    assert running.error is not None
    assert "aborted on the device" in running.error.message
    bed.run()
    assert not bed.core.cancel(ALICE, ctx.id, running.id)  # already ended
    assert bed.device.statistics().aborted == 1
    assert bed.scheduler.statistics().ended == {"cancelled": 2}


def test_closing_a_context_drains_running_jobs_cancels_queued_and_leaves_no_trace() -> None:
    """Close: running job completes within the grace, queued ones cancelled, nothing remains."""
    bed = make_bed()
    seen: list[Event] = []
    bed.core.subscribe(seen.append)
    ctx = bed.context()
    queue = bed.queue(ctx)
    buf = bed.core.create_buffer(ALICE, ctx.id, 4096, usage=BufferUsage.STATE)
    running, queued = bed.burn(ctx, queue, 0.01, n=2, bindings=((buf.id, _rw()),))
    bed.clock.advance(0.001)
    closed: list[str] = []
    bed.core.destroy_context(ALICE, ctx.id, grace_s=1.0, on_closed=lambda c: closed.append(c.id))
    assert queued.state is JobState.CANCELLED
    assert queued.error is not None
    assert queued.error.type is Cancelled
    with pytest.raises(FailedPrecondition):
        bed.burn(ctx, queue, 0.01)
    assert not closed  # still draining
    bed.run()
    assert running.state is JobState.COMPLETED
    assert closed == [ctx.id]
    _assert_no_trace(bed, ctx.id)
    assert any(isinstance(e, ContextEvent) and e.change == "destroyed" for e in seen)
    assert {e.state for e in seen if isinstance(e, JobEvent)} >= {"queued", "running"}


def test_closing_aborts_running_jobs_after_the_grace_period() -> None:
    """A job still running when the grace ends is cancelled and aborted on the device."""
    bed = make_bed()
    ctx = bed.context()
    [job] = bed.burn(ctx, bed.queue(ctx), 0.09, timeout_s=1.0)
    bed.core.destroy_context(ALICE, ctx.id, grace_s=0.05)
    bed.run()
    assert job.state is JobState.CANCELLED
    assert job.finished_at == pytest.approx(0.05)
    _assert_no_trace(bed, ctx.id)


def test_close_all_names_its_reason_in_every_cancelled_job_and_context_event() -> None:
    """close_all's reason reaches queued jobs at once, running ones after the grace, and the
    DESTROYED events, so the daemon needs no cancel loop of its own to say why."""
    bed = make_bed()
    seen: list[Event] = []
    bed.core.subscribe(seen.append)
    ctx = bed.context()
    other = bed.context(BOB)
    running, queued = bed.burn(ctx, bed.queue(ctx), 0.09, n=2, timeout_s=1.0)
    [bobs] = bed.burn(other, bed.queue(other, owner=BOB), 0.01, owner=BOB)
    bed.clock.advance(0.001)
    bed.core.close_all(grace_s=0.05, reason="npud is shutting down")
    assert queued.state is JobState.CANCELLED
    assert queued.error is not None
    assert queued.error.message == "its context was closed: npud is shutting down"
    assert running.state is JobState.RUNNING  # it has the grace to finish
    bed.run()
    assert running.state is JobState.CANCELLED
    assert running.error is not None
    assert running.error.message.startswith(
        "its context was closed: npud is shutting down, and the grace period ran out"
    )
    assert bobs.state is JobState.COMPLETED  # finished within the grace
    destroyed = [e for e in seen if isinstance(e, ContextEvent) and e.change == "destroyed"]
    assert {e.context_id for e in destroyed} == {ctx.id, other.id}
    assert {e.reason for e in destroyed} == {"npud is shutting down"}
    assert bed.core.contexts(ROOT, all_users=True) == []


def test_destroying_a_context_says_why_in_its_jobs_errors() -> None:
    """A queued job cancelled by DestroyContext carries the destroy reason in its error."""
    bed = make_bed()
    ctx = bed.context()
    _, queued = bed.burn(ctx, bed.queue(ctx), 0.01, n=2)
    bed.core.destroy_context(ALICE, ctx.id, reason="its client's session ended")
    assert queued.error is not None
    assert queued.error.message == "its context was closed: its client's session ended"


def test_submit_validates_buffers_ranges_and_batches() -> None:
    """Unknown queues/buffers are NotFound; empty batches and bad ranges InvalidArgument."""
    bed = make_bed()
    ctx = bed.context()
    queue = bed.queue(ctx)
    cmd = bed.burn_buffer(ctx, 0.001)
    with pytest.raises(InvalidArgument, match="at least one job"):
        bed.core.submit(ALICE, ctx.id, [])
    with pytest.raises(NotFound):
        bed.core.submit(ALICE, ctx.id, [JobSpec(queue.id, "buf-nope")])  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="command range"):
        bed.core.submit(ALICE, ctx.id, [JobSpec(queue.id, cmd, command_offset=10_000)])
    with pytest.raises(InvalidArgument, match="engine 7"):
        bed.core.submit(ALICE, ctx.id, [JobSpec(queue.id, cmd, engine=7)])
    bed.burn(ctx, queue, 0.001)
    with pytest.raises(FailedPrecondition, match="bound to 1 live job"):
        bed.core.release_buffer(ALICE, ctx.id, cmd)


def test_statistics_report_depths_waits_and_utilisation() -> None:
    """Scheduler statistics show per-class depth, wait/run percentiles and engine utilisation."""
    bed = make_bed()
    ctx = bed.context()
    queue = bed.queue(ctx, SchedulingClass.THROUGHPUT, in_order=False)
    bed.burn(ctx, queue, 0.01, n=3 * bed.engines)
    mid = bed.core.statistics().device("sim0").scheduler
    tp = mid.by_class(SchedulingClass.THROUGHPUT)
    assert tp.running == 3 * bed.engines  # deep submission: several in flight per engine
    bed.run()
    report = bed.core.device_report()
    tp = report.scheduler.by_class(SchedulingClass.THROUGHPUT)
    assert tp.running == tp.ready == tp.queued == 0
    assert tp.run.count == 9
    assert tp.run.p50_s == pytest.approx(0.01)
    assert tp.queue_wait.p99_s == pytest.approx(0.02)
    assert all(e.utilisation == pytest.approx(1.0) for e in report.scheduler.engines)
    ctx_stats = bed.core.context_statistics(ALICE, ctx.id)
    assert ctx_stats.ended == {"completed": 9}
    assert ctx_stats.device_time_s == pytest.approx(0.09)
    assert report.contexts == 1
    assert report.queues == 1


def _rw():  # type: ignore[no-untyped-def]
    from npud.devices.base import BufferUse

    return BufferUse.READWRITE


def _assert_no_trace(bed, ctx_id) -> None:  # type: ignore[no-untyped-def]
    stats = bed.core.statistics()
    assert ctx_id not in repr(stats)
    assert stats.contexts == 0
    assert stats.device("sim0").scheduler.contexts == 0
    assert bed.core.device().residency.context_usage(ctx_id) == 0
    with pytest.raises(NotFound):
        bed.core.context(ROOT, ctx_id)
