"""Fairness: weighted fair share for THROUGHPUT, minimum shares against starvation."""

from __future__ import annotations

from npud.core.context import ContextQuotas
from npud.core.job import Job
from npud.core.policy import SchedulerPolicy
from npud.vocab import JobState, SchedulingClass
from tests.core.harness import make_bed


def test_throughput_contexts_share_device_time_by_weight() -> None:
    """Weights 1:1:2 get 25/25/50 % (within 3 points) of device time over 1,000 jobs."""
    bed = make_bed()
    weights = (1.0, 1.0, 2.0)
    finished: list[Job] = []
    contexts = []
    for weight in weights:
        ctx = bed.context(weight=weight)
        queue = bed.queue(ctx, SchedulingClass.THROUGHPUT, in_order=False)
        for job in bed.burn(ctx, queue, 0.002, n=600):
            job.add_done_callback(finished.append)
        contexts.append(ctx)
    while len(finished) < 1000:
        nxt = bed.clock.next_deadline()
        assert nxt is not None
        bed.clock.advance_to(nxt)
    first = finished[:1000]
    assert all(j.state is JobState.COMPLETED for j in first)
    time_by_ctx = {c.id: 0.0 for c in contexts}
    for job in first:
        assert job.run_s is not None
        time_by_ctx[job.context_id] += job.run_s
    total = sum(time_by_ctx.values())
    shares = [time_by_ctx[c.id] / total for c in contexts]
    print("\nshares for weights 1:1:2 over 1,000 jobs:", [f"{s:.1%}" for s in shares])
    for share, want in zip(shares, (0.25, 0.25, 0.50), strict=True):
        assert abs(share - want) <= 0.03


def _class_shares(min_share: dict[SchedulingClass, float]) -> dict[SchedulingClass, float]:
    policy = SchedulerPolicy(min_share=min_share)
    bed = make_bed(policy)
    big = ContextQuotas(max_queued_jobs=20_000)
    by_class: dict[SchedulingClass, float] = dict.fromkeys(SchedulingClass, 0.0)

    def account(job: Job) -> None:
        if job.run_s is not None and job.state is JobState.COMPLETED:
            by_class[job.sched_class] += job.run_s

    for cls, n in ((SchedulingClass.LATENCY, 6000), (SchedulingClass.THROUGHPUT, 800)):
        ctx = bed.context(quotas=big)
        queue = bed.queue(ctx, cls, in_order=False, depth_limit=n)
        for job in bed.burn(ctx, queue, 0.001 if cls is SchedulingClass.LATENCY else 0.002, n=n):
            job.add_done_callback(account)
    ctx = bed.context(quotas=big)
    queue = bed.queue(ctx, SchedulingClass.BACKGROUND, in_order=False, depth_limit=800)
    for job in bed.burn(ctx, queue, 0.002, n=800):
        job.add_done_callback(account)
    bed.clock.advance(1.5)  # the latency flood lasts longer than this
    total = sum(by_class.values())
    return {c: by_class[c] / total for c in SchedulingClass}


def test_minimum_shares_keep_throughput_and_background_alive_under_a_latency_flood() -> None:
    """Under a LATENCY flood THROUGHPUT and BACKGROUND get at least their minimum shares."""
    want = {
        SchedulingClass.LATENCY: 0.0,
        SchedulingClass.THROUGHPUT: 0.20,
        SchedulingClass.BACKGROUND: 0.10,
    }
    shares = _class_shares(want)
    starved = _class_shares(dict.fromkeys(SchedulingClass, 0.0))
    print("\nclass shares under a latency flood, min shares 0/20/10 %:", _fmt(shares))
    print("class shares under a latency flood, no min shares:      ", _fmt(starved))
    assert shares[SchedulingClass.THROUGHPUT] >= 0.20 - 0.005
    assert shares[SchedulingClass.BACKGROUND] >= 0.10 - 0.005
    assert shares[SchedulingClass.LATENCY] >= 0.60  # the flood still gets the rest
    # without the guarantee the flood starves them (they only squeeze into shallow slots)
    assert starved[SchedulingClass.BACKGROUND] < 0.01


def _fmt(shares: dict[SchedulingClass, float]) -> str:
    return ", ".join(f"{c}={s:.1%}" for c, s in shares.items())
