"""Ordering: in-order queues, cross-queue dependencies, cycles and foreign dependencies."""

from __future__ import annotations

import itertools

import pytest

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
