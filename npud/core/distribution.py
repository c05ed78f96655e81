"""Distributions of recent durations: queue waits and run times, the first numbers users ask for.

A :class:`RecentSamples` keeps the last ``capacity`` samples in a ring (O(1) to record, no
allocation per sample); :meth:`RecentSamples.snapshot` sorts a copy to give a frozen
:class:`Distribution` with p50/p99 over that recent window. Statistics are read far less often
than jobs finish, so sorting on read is the cheap side of the trade.
"""

from __future__ import annotations

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


class RecentSamples:
    """The most recent ``capacity`` samples of one duration."""

    __slots__ = ("_ring",)

    def __init__(self, capacity: int = 1024) -> None:
        self._ring: deque[float] = deque(maxlen=capacity)

    def add(self, value: float) -> None:
        """Record one sample (evicting the oldest when full)."""
        self._ring.append(value)

    def __len__(self) -> int:
        return len(self._ring)

    def snapshot(self) -> Distribution:
        """Percentiles (nearest rank) over the samples currently held."""
        if not self._ring:
            return EMPTY
        ordered = sorted(self._ring)
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
