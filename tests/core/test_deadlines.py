"""Deadlines: they are met in EDF order; an infeasible one is rejected before it runs."""

from __future__ import annotations

import pytest

from npud.errors import DeadlineInfeasible
from npud.vocab import JobState, SchedulingClass
from tests.core.harness import ALICE, make_bed

D = 0.005  # a decode step


def test_feasible_deadlines_are_met_in_earliest_deadline_first_order() -> None:
    """Jobs submitted in scrambled deadline order start in deadline order and all meet them."""
    bed = make_bed()
    ctx = bed.context()
    queue = bed.queue(ctx, SchedulingClass.LATENCY, in_order=False)
    bed.scheduler.estimator.set_prior("decode", D)
    blocker = bed.queue(ctx, SchedulingClass.LATENCY)
    # occupy engine 0 so that the batch below waits and EDF decides its order
    bed.burn(ctx, blocker, 2 * D, engine=0, kind="warmup")
    now = bed.core.now()
    order = [4, 1, 5, 0, 3, 2]
    specs = [
        bed.spec(ctx, queue, D, kind="decode", engine=0, deadline=now + 2 * D + (k + 1) * D + D)
        for k in order
    ]
    jobs = bed.core.submit(ALICE, ctx.id, specs)
    bed.run()
    assert all(j.state is JobState.COMPLETED for j in jobs)
    by_start = sorted(jobs, key=lambda j: (j.started_at, j.seq))
    deadlines = [j.deadline for j in by_start]
    assert deadlines == sorted(deadlines)  # type: ignore[type-var]
    for job in jobs:
        assert job.finished_at is not None
        assert job.deadline is not None
        assert job.finished_at <= job.deadline
    assert bed.scheduler.statistics().deadline_misses == 0


def test_an_infeasible_deadline_is_rejected_at_submit_and_nothing_runs() -> None:
    """A deadline shorter than the kind's measured duration raises DeadlineInfeasible."""
    bed = make_bed()
    ctx = bed.context()
    queue = bed.queue(ctx, SchedulingClass.LATENCY)
    bed.burn(ctx, queue, D, kind="decode")  # measure the kind once
    bed.run()
    before = bed.device.statistics().submitted
    now = bed.core.now()
    with pytest.raises(DeadlineInfeasible, match=r"takes about 5\.000 ms"):
        bed.burn(ctx, queue, D, kind="decode", deadline=now + D / 2)
    bed.run()
    stats = bed.scheduler.statistics()
    assert stats.rejected_at_admission == 1
    assert bed.device.statistics().submitted == before  # it never reached the device
    assert len(ctx.jobs) == 0
    with pytest.raises(DeadlineInfeasible, match="already passed"):
        bed.burn(ctx, queue, D, kind="decode", deadline=now - 1.0)


def test_a_job_that_can_no_longer_make_its_deadline_is_rejected_before_it_runs() -> None:
    """Admitted, then stuck behind work: at its turn it is REJECTED, not run late."""
    bed = make_bed()
    ctx = bed.context()
    bed.scheduler.estimator.set_prior("decode", D)
    lat = bed.queue(ctx, SchedulingClass.LATENCY)
    first = bed.burn(ctx, lat, 10 * D, kind="long", engine=0)
    # admission sees engines 1 and 2 idle; but the in-order queue makes it wait for `first`
    [late] = bed.burn(ctx, lat, D, kind="decode", deadline=bed.core.now() + 3 * D)
    bed.run()
    assert first[0].state is JobState.COMPLETED
    assert late.state is JobState.REJECTED
    assert late.error is not None
    assert late.error.type is DeadlineInfeasible
    assert late.started_at is None
