"""Class shares: which scheduling class is served next, and each class's use of the device.

Under the ``npud`` policy LATENCY goes first, then THROUGHPUT, then BACKGROUND, except that a
class below its guaranteed minimum share of device time takes the next slot. Under ``fifo`` the
class does not matter (the one arrival-ordered run queue decides).

Ownership: the scheduler owns its shares; they hold numbers only.
"""

from __future__ import annotations

from collections.abc import Mapping

from npud.clock import Clock
from npud.core.policy import CLASS_ORDER, PolicyKind, SchedulerPolicy
from npud.vocab import SchedulingClass

# ---- Why a minimum share per class ------------------------------------------------
#
# Strict class priority starves: a steady LATENCY flood would keep THROUGHPUT and
# BACKGROUND off the device forever. Each class therefore has a guaranteed share of
# device time. Usage per class is a sum of device seconds that decays with a half-life of
# ``share_window_s`` (a sliding window without storing samples); the cost of a job is
# charged when it is dispatched (its estimate) and corrected when it completes (its
# measured time), so several engines filling at once do not all see the same stale
# share. Before the class order is applied, a class that has ready work and is below its
# minimum share takes the slot (the one furthest below first). Shares only compare classes
# to each other, so the decay factor applied to all of them cancels out.
# ------------------------------------------------------------------------------------


class ClassShares:
    """Each class's decaying use of device time, and the choice of the class served next."""

    def __init__(self, clock: Clock, policy: SchedulerPolicy, ready: Mapping[SchedulingClass, int]):
        """``ready`` is the live count of READY jobs per class (the run queues' own)."""
        self._clock = clock
        self._policy = policy
        self._fifo = policy.kind is PolicyKind.FIFO
        self._ready = ready
        self._usage = dict.fromkeys(CLASS_ORDER, 0.0)
        self._usage_at = clock.now()

    def choose(self, eligible: list[SchedulingClass]) -> tuple[SchedulingClass | None, bool]:
        """The class to serve next among ``eligible`` (``None`` when the best one has no
        credit now), and whether it was chosen because it is below its minimum share."""
        if self._fifo:
            return eligible[0], False
        usage = self._usage
        total = usage[SchedulingClass.LATENCY] + usage[SchedulingClass.THROUGHPUT]
        total += usage[SchedulingClass.BACKGROUND]
        if total > 0.0:
            worst: SchedulingClass | None = None
            worst_gap = 0.0
            for cls in eligible:
                gap = self._policy.min_share.get(cls, 0.0) - usage[cls] / total
                if gap > worst_gap:
                    worst, worst_gap = cls, gap
            if worst is not None:
                return worst, True
        # Strict order otherwise: a class with READY work but no credit blocks the classes
        # below it (a throughput job slipped onto an engine now would sit in front of the
        # next latency job in the device's FIFO).
        for cls in CLASS_ORDER:
            if self._ready[cls] > 0:
                return (cls if cls in eligible else None), False
        return None, False

    def charge(self, cls: SchedulingClass, seconds: float, now: float | None = None) -> None:
        """Add ``seconds`` of device time to ``cls`` (negative: a correction downwards) at
        ``now`` (default: the clock's time)."""
        if now is None:
            now = self._clock.now()
        if now > self._usage_at:
            factor = 0.5 ** ((now - self._usage_at) / self._policy.share_window_s)
            for c in CLASS_ORDER:
                self._usage[c] *= factor
            self._usage_at = now
        self._usage[cls] = max(0.0, self._usage[cls] + seconds)

    def shares(self) -> dict[SchedulingClass, float]:
        """Each class's share of device time over the recent window (sums to 1, or all 0)."""
        total = sum(self._usage.values())
        if total <= 0:
            return dict.fromkeys(CLASS_ORDER, 0.0)
        return {c: self._usage[c] / total for c in CLASS_ORDER}
