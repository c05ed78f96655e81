"""Fixed-bucket duration counts: what the wait and run histograms are read from."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from npud.core.distribution import DURATION_BOUNDS_S, BucketCounts
from npud.vocab import SchedulingClass
from tests.core.harness import make_bed


@given(st.lists(st.floats(min_value=0.0, max_value=1e4, allow_nan=False), max_size=200))
def test_cumulative_counts_match_the_samples(samples: list[float]) -> None:
    """Each cumulative bucket counts exactly the samples <= its bound; +Inf counts all; the
    sum is the samples' sum."""
    counts = BucketCounts()
    for s in samples:
        counts.add(s)
    snap = counts.snapshot()
    cumulative = snap.cumulative()
    assert [b for b, _ in cumulative] == [*DURATION_BOUNDS_S, float("inf")]
    for bound, n in cumulative:
        assert n == sum(1 for s in samples if s <= bound)
    assert snap.count == len(samples)
    assert abs(snap.sum_s - sum(samples)) <= 1e-9 * max(1.0, sum(samples))


def test_the_scheduler_counts_each_finished_job_once_per_class() -> None:
    """Five THROUGHPUT jobs of 2 ms: five run samples in the 2.5 ms bucket, five wait samples,
    none in LATENCY; the snapshot is frozen (later jobs do not change it)."""
    bed = make_bed()
    ctx = bed.context()
    q = bed.queue(ctx, SchedulingClass.THROUGHPUT)
    bed.burn(ctx, q, 0.002, n=5)
    bed.run()
    stats = bed.scheduler.statistics()
    tp = stats.by_class(SchedulingClass.THROUGHPUT)
    assert tp.run_buckets.count == 5
    assert tp.queue_wait_buckets.count == 5
    assert dict(tp.run_buckets.cumulative())[0.0025] == 5
    assert dict(tp.run_buckets.cumulative())[0.001] == 0
    assert stats.by_class(SchedulingClass.LATENCY).run_buckets.count == 0
    bed.burn(ctx, q, 0.002)
    bed.run()
    assert tp.run_buckets.count == 5
    assert bed.scheduler.statistics().by_class(SchedulingClass.THROUGHPUT).run_buckets.count == 6
