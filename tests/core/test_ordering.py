"""Ordering: in-order queues, cross-queue dependencies, cycles and foreign dependencies."""

from __future__ import annotations

import itertools

import pytest

from npud.core.job import Job
from npud.devices.base import Completion, CompletionCallback, Submission, SubmitToken
from npud.errors import Cancelled, InvalidArgument, NotFound
from npud.vocab import JobState, SchedulingClass
from tests.core.harness import ALICE, BOB, make_bed


def test_no_job_starts_before_its_predecessor_in_the_queue_completes() -> None:
    """An in-order queue runs one job at a time although three engines are free."""
    bed = make_bed()
    ctx = bed.context()
    queue = bed.queue(ctx, SchedulingClass.THROUGHPUT)
    jobs = bed.burn(ctx, queue, 0.003, n=8)
    bed.run()
    assert all(j.state is JobState.COMPLETED for j in jobs)
    for before, after in itertools.pairwise(jobs):
        assert after.started_at is not None
        assert before.finished_at is not None
        assert after.started_at >= before.finished_at


def test_an_out_of_order_queue_runs_its_jobs_concurrently() -> None:
    """Without in-order, jobs of one queue spread over the engines."""
    bed = make_bed()
    ctx = bed.context()
    queue = bed.queue(ctx, SchedulingClass.THROUGHPUT, in_order=False)
    jobs = bed.burn(ctx, queue, 0.003, n=bed.engines)
    bed.run()
    assert {j.engine for j in jobs} == set(range(bed.engines))
    assert {j.started_at for j in jobs} == {0.0}


def test_dependencies_across_queues_are_honoured() -> None:
    """A job depending on a job of another queue starts only after it completes."""
    bed = make_bed()
    ctx = bed.context()
    q1 = bed.queue(ctx, SchedulingClass.THROUGHPUT)
    q2 = bed.queue(ctx, SchedulingClass.LATENCY)
    [a] = bed.burn(ctx, q1, 0.02)
    [b] = bed.burn(ctx, q2, 0.001, depends_on=(a.id,))
    specs = [bed.spec(ctx, q1, 0.004), bed.spec(ctx, q2, 0.001, depends_on=(0,))]
    c, d = bed.core.submit(ALICE, ctx.id, specs)
    assert b.state is JobState.QUEUED
    bed.run()
    assert b.started_at is not None
    assert a.finished_at is not None
    assert b.started_at >= a.finished_at
    assert d.started_at is not None
    assert c.finished_at is not None
    assert d.started_at >= c.finished_at


def test_a_dependency_cycle_is_rejected_and_nothing_is_admitted() -> None:
    """A batch whose jobs depend on each other in a cycle raises InvalidArgument."""
    bed = make_bed()
    ctx = bed.context()
    queue = bed.queue(ctx, SchedulingClass.THROUGHPUT, in_order=False)
    specs = [
        bed.spec(ctx, queue, 0.001, depends_on=(2,), label="a"),
        bed.spec(ctx, queue, 0.001, depends_on=(0,), label="b"),
        bed.spec(ctx, queue, 0.001, depends_on=(1,), label="c"),
    ]
    with pytest.raises(InvalidArgument, match="cycle: a -> c -> b -> a"):
        bed.core.submit(ALICE, ctx.id, specs)
    with pytest.raises(InvalidArgument, match="itself"):
        bed.core.submit(ALICE, ctx.id, [bed.spec(ctx, queue, 0.001, depends_on=(0,))])
    assert queue.depth == 0
    assert not ctx.jobs
    assert bed.scheduler.statistics().submitted == 0


def test_a_dependency_on_another_contexts_job_is_not_found() -> None:
    """Jobs may depend only on jobs of their own context, even of the same owner: another
    context's job id is unknown to this context (NotFound), as any other unknown id."""
    bed = make_bed()
    mine, other, bobs = bed.context(), bed.context(), bed.context(BOB)
    [foreign] = bed.burn(other, bed.queue(other), 0.001)
    [bob_job] = bed.burn(bobs, bed.queue(bobs, owner=BOB), 0.001, owner=BOB)
    queue = bed.queue(mine)
    for dep in (foreign.id, bob_job.id):
        with pytest.raises(NotFound, match="not a job of context"):
            bed.burn(mine, queue, 0.001, depends_on=(dep,))
    assert not mine.jobs


def test_dependents_of_a_failed_job_are_cancelled_and_say_why() -> None:
    """When a dependency fails, its dependents end CANCELLED naming it; the queue carries on."""
    bed = make_bed()
    ctx = bed.context()
    queue = bed.queue(ctx, SchedulingClass.THROUGHPUT)
    other = bed.queue(ctx, SchedulingClass.THROUGHPUT)
    bed.device.inject_job_error(message="bad op")
    [bad] = bed.burn(ctx, queue, 0.001)
    [dependent] = bed.burn(ctx, other, 0.001, depends_on=(bad.id,))
    [after] = bed.burn(ctx, queue, 0.001)
    bed.run()
    assert bad.state is JobState.FAILED
    assert dependent.state is JobState.CANCELLED
    assert dependent.error is not None
    assert dependent.error.type is Cancelled
    assert bad.id in dependent.error.message
    assert after.state is JobState.COMPLETED  # the in-order queue is not poisoned
    # depending on an already-failed job cancels at once
    [late] = bed.burn(ctx, other, 0.001, depends_on=(bad.id,))
    assert late.state is JobState.CANCELLED


def test_an_in_order_latency_job_waits_on_its_predecessors_engine_not_in_npud() -> None:
    """The job after the running head of an in-order LATENCY queue is handed to the head's
    engine at once, behind it; the engine starts it exactly when the head ends, in order."""
    bed = make_bed()
    ctx = bed.context()
    queue = bed.queue(ctx, SchedulingClass.LATENCY)
    head, follower, third = bed.burn(ctx, queue, 0.004, n=3)
    assert head.state is JobState.RUNNING
    assert follower.state is JobState.RUNNING
    assert follower.engine == head.engine
    assert follower.started_at is None  # on the device, not started: the head runs
    assert third.state is JobState.QUEUED  # one follower per queue
    assert bed.device.statistics().submitted == 2
    bed.run()
    assert all(j.state is JobState.COMPLETED for j in (head, follower, third))
    for before, after in itertools.pairwise((head, follower, third)):
        assert after.started_at is not None
        assert before.finished_at is not None
        assert after.started_at >= before.finished_at
    assert follower.started_at == head.finished_at
    assert bed.scheduler.statistics().followed == 2  # the follower, then the third behind it


def test_throughput_queues_and_explicit_dependencies_still_wait_for_the_end() -> None:
    """Only in-order LATENCY queues hand a job over early: a THROUGHPUT successor and a job
    with an unmet explicit dependency stay QUEUED while their predecessor runs."""
    bed = make_bed()
    ctx = bed.context()
    tput = bed.queue(ctx, SchedulingClass.THROUGHPUT)
    lat = bed.queue(ctx, SchedulingClass.LATENCY, in_order=False)
    first, second = bed.burn(ctx, tput, 0.004, n=2)
    [a] = bed.burn(ctx, lat, 0.004)
    [b] = bed.burn(ctx, lat, 0.004, depends_on=(a.id,))
    assert first.state is JobState.RUNNING
    assert second.state is JobState.QUEUED
    assert a.state is JobState.RUNNING
    assert b.state is JobState.QUEUED
    bed.run()
    assert bed.scheduler.statistics().followed == 0
    assert second.started_at is not None
    assert first.finished_at is not None
    assert second.started_at >= first.finished_at


def test_a_follower_gives_way_while_latency_work_occupies_every_engine() -> None:
    """With a latency job on every engine, a follower takes no credit: it waits for its head's
    end, and other contexts' latency steps keep their credits."""
    bed = make_bed()
    others = []
    for _ in range(bed.engines - 1):
        c = bed.context()
        others += bed.burn(c, bed.queue(c, SchedulingClass.LATENCY), 0.01)
    ctx = bed.context()
    head, follower = bed.burn(ctx, bed.queue(ctx, SchedulingClass.LATENCY), 0.004, n=2)
    assert head.state is JobState.RUNNING
    assert follower.state is JobState.READY  # ready, held back: every engine runs latency work
    assert not follower.on_device
    bed.run()
    assert all(j.state is JobState.COMPLETED for j in [*others, head, follower])
    assert follower.started_at is not None
    assert head.finished_at is not None
    assert follower.started_at >= head.finished_at
    assert bed.scheduler.statistics().followed == 0


@pytest.mark.parametrize("follower_first", [False, True])
def test_an_engine_reset_puts_a_head_and_its_follower_back_in_their_order(
    follower_first: bool,
) -> None:
    """A hung job ahead of a head and its follower on one engine is reset by a device that
    aborts everything queued there (as kernel drivers do): both go back to READY and run
    again, the follower still after the head's end, whichever abort is reported first."""
    bed = make_bed()
    ctx = bed.context()
    bed.device.inject_hang(0)
    tput = bed.queue(ctx, SchedulingClass.THROUGHPUT)
    [hung] = bed.burn(ctx, tput, 0.002, engine=0, timeout_s=0.05)
    lat = bed.queue(ctx, SchedulingClass.LATENCY)
    head, follower = bed.burn(ctx, lat, 0.004, n=2, engine=0)
    assert [j.engine for j in (hung, head, follower)] == [0, 0, 0]
    assert follower.state is JobState.RUNNING  # behind the head, behind the hung job
    reset = bed.device.reset_engine

    def reset_aborting_the_queue(engine: int, reason: str) -> None:
        for job in (follower, head) if follower_first else (head, follower):
            assert job.token is not None
            assert bed.device.abort(job.token)
        reset(engine, reason)

    bed.device.reset_engine = reset_aborting_the_queue  # type: ignore[method-assign]
    bed.run()
    assert hung.state is JobState.TIMED_OUT
    assert head.state is JobState.COMPLETED
    assert follower.state is JobState.COMPLETED
    assert bed.scheduler.statistics().requeued_after_reset == 2
    assert follower.started_at is not None
    assert head.finished_at is not None
    assert follower.started_at >= head.finished_at


def test_a_follower_of_a_cancelled_head_still_runs() -> None:
    """Cancelling the running head aborts it; its follower, already on the device, runs (an
    in-order queue is not poisoned by one job's end)."""
    bed = make_bed()
    ctx = bed.context()
    head, follower = bed.burn(ctx, bed.queue(ctx, SchedulingClass.LATENCY), 0.004, n=2)
    assert follower.state is JobState.RUNNING
    bed.scheduler.cancel(head)
    bed.run()
    assert head.state is JobState.CANCELLED
    assert follower.state is JobState.COMPLETED


def test_a_late_completion_never_makes_a_job_run_shorter_than_the_device_measured() -> None:
    """npud stamps a follower started when its predecessor's completion is handled; when that
    completion reaches core late but the follower's own arrives at once, the follower's start
    is moved back to when the device began it: every job's run time is at least its burn."""
    bed = make_bed()
    lags = itertools.cycle((0.003, 0.0))
    submit = bed.device.submit

    def late_submit(submission: Submission, on_done: CompletionCallback) -> SubmitToken:
        lag = next(lags)

        def deliver(completion: Completion) -> None:
            bed.clock.call_at(bed.clock.now() + lag, lambda: on_done(completion))

        return submit(submission, deliver)

    bed.device.submit = late_submit  # type: ignore[method-assign]
    ctx = bed.context()
    queue = bed.queue(ctx, SchedulingClass.LATENCY)
    jobs = bed.burn(ctx, queue, 0.004, n=6)
    bed.run()
    assert all(j.state is JobState.COMPLETED for j in jobs)
    assert bed.scheduler.statistics().followed >= 2
    for job in jobs:
        assert job.run_s is not None
        assert job.completion is not None
        assert job.run_s >= job.completion.measured_s >= 0.004


def test_a_completed_jobs_waiter_is_answered_with_the_finished_job_and_the_books_agree() -> None:
    """A done callback runs as soon as the device's completion is handled and sees the job
    COMPLETED, with its completion and a run no shorter than the device measured; once the
    completion has been handled the queue counts each job once, its engine is free again and
    the next job of an in-order queue has run."""
    bed = make_bed()
    ctx = bed.context()
    queue = bed.queue(ctx, SchedulingClass.LATENCY)
    jobs = bed.burn(ctx, queue, 0.002, n=4)
    seen: list[tuple[JobState, float, float]] = []

    def done(job: Job) -> None:
        assert job.completion is not None
        assert job.run_s is not None
        seen.append((job.state, job.run_s, job.completion.measured_s))

    for job in jobs:
        job.add_done_callback(done)
    bed.run()
    assert [state for state, _, _ in seen] == [JobState.COMPLETED] * 4
    assert all(run >= measured >= 0.002 for _, run, measured in seen)
    stats = queue.statistics()
    assert stats.ended == {"completed": 4}
    assert stats.depth == 0
    assert stats.run.count == 4
    assert all(not j.on_device for j in jobs)
    assert all(not e.inflight for e in bed.scheduler._engines.all)
