"""Distributions of recent durations: queue waits and run times, the first numbers users ask for.

A :class:`RecentSamples` keeps the last ``capacity`` samples in a ring (O(1) to record, no
allocation per sample); :meth:`RecentSamples.snapshot` sorts a copy to give a frozen
:class:`Distribution` with p50/p99 over that recent window. Statistics are read far less often
than jobs finish, so sorting on read is the cheap side of the trade.

A :class:`BucketCounts` is the other kind: cumulative since start, a fixed array of counters
over fixed bucket bounds (a Prometheus histogram's shape). Recording is one binary search and
one increment, done once per finished job by the scheduler; readers (``statistics()``, the
metrics collector) only copy the array.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Distribution:
    """Percentiles of a recent window of durations, in seconds (all 0.0 when empty)."""

    count: int = 0
    p50_s: float = 0.0
    p99_s: float = 0.0
    mean_s: float = 0.0
    max_s: float = 0.0


EMPTY = Distribution()


class RecentSamples(deque[float]):
    """The most recent ``capacity`` samples of one duration: a bounded ring.

    It is the ring itself (a ``deque`` with ``maxlen``), so recording a sample, once per
    ended job in each of the scheduler's, the queue's and the context's windows, is one call
    into C rather than a Python method around one.
    """

    __slots__ = ()

    def __init__(self, capacity: int = 1024) -> None:
        super().__init__(maxlen=capacity)

    add = deque.append  # record one sample (evicting the oldest when full)

    def snapshot(self) -> Distribution:
        """Percentiles (nearest rank) over the samples currently held."""
        if not self:
            return EMPTY
        ordered = sorted(self)
        n = len(ordered)

        def rank(q: float) -> float:
            return ordered[min(n - 1, max(0, int(q * n + 0.999999) - 1))]

        return Distribution(
            count=n,
            p50_s=rank(0.50),
            p99_s=rank(0.99),
            mean_s=sum(ordered) / n,
            max_s=ordered[-1],
        )


DURATION_BOUNDS_S: tuple[float, ...] = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    5.0,
    30.0,
)
"""Bucket upper bounds for job durations, seconds: a decode step (~ms) to a long prefill."""


@dataclass(frozen=True, slots=True)
class Buckets:
    """A frozen histogram: ``counts[i]`` samples were <= ``bounds[i]`` and above the bound
    before it; ``counts[-1]`` (one longer than ``bounds``) were above every bound."""

    bounds: tuple[float, ...] = DURATION_BOUNDS_S
    counts: tuple[int, ...] = (0,) * (len(DURATION_BOUNDS_S) + 1)
    sum_s: float = 0.0

    @property
    def count(self) -> int:
        """Every sample."""
        return sum(self.counts)

    def cumulative(self) -> list[tuple[float, int]]:
        """``(upper bound, samples <= it)`` per bucket, ending with ``(inf, count)``."""
        out, running = [], 0
        for bound, n in zip((*self.bounds, float("inf")), self.counts, strict=True):
            running += n
            out.append((bound, running))
        return out


EMPTY_BUCKETS = Buckets()


class BucketCounts:
    """Cumulative fixed-bucket counts of one duration (see the module docstring)."""

    __slots__ = ("_bounds", "_counts", "_sum")

    def __init__(self, bounds: tuple[float, ...] = DURATION_BOUNDS_S) -> None:
        self._bounds = bounds
        self._counts = [0] * (len(bounds) + 1)
        self._sum = 0.0

    def add(self, value: float) -> None:
        """Count one sample."""
        self._counts[bisect.bisect_left(self._bounds, value)] += 1
        self._sum += value

    def snapshot(self) -> Buckets:
        """A frozen copy."""
        return Buckets(self._bounds, tuple(self._counts), self._sum)
