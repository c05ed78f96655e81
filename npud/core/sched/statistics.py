"""What the scheduler counts: per-class job counts and distributions, and its frozen snapshots.

The :class:`Ledger` is the scheduler's bookkeeping of jobs as they move between states and end;
it holds no jobs, only numbers. :class:`SchedulerStatistics` and its parts are the frozen
snapshots ``Scheduler.statistics()`` returns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from npud.core.distribution import (
    EMPTY_BUCKETS,
    BucketCounts,
    Buckets,
    Distribution,
    RecentSamples,
)
from npud.core.estimates import KindEstimate
from npud.core.job import STATE_VALUES, Job
from npud.core.policy import CLASS_ORDER, PolicyKind, SchedulerPolicy
from npud.vocab import DeviceHealth, JobState, SchedulingClass

LIVE_STATES = (JobState.QUEUED, JobState.READY, JobState.RUNNING)


@dataclass(frozen=True, slots=True)
class ClassStatistics:
    """One scheduling class on one device."""

    sched_class: SchedulingClass
    queued: int  # waiting for dependencies or a predecessor
    ready: int  # eligible, waiting for a slot
    running: int  # on the device
    share: float  # of device time, over the recent window
    min_share: float
    queue_wait: Distribution
    run: Distribution
    queue_wait_buckets: Buckets = EMPTY_BUCKETS  # since start, for histograms
    run_buckets: Buckets = EMPTY_BUCKETS


@dataclass(frozen=True, slots=True)
class EngineStatistics:
    """One engine: what is in flight on it and how busy it has been."""

    index: int
    in_flight: int
    latency_in_flight: int
    busy_s: float  # device time of the jobs that have finished on it
    utilisation: float  # busy time (finished + running) over the scheduler's lifetime
    recent_utilisation: float  # busy time (finished + running) over the last ``share_window_s``
    running_s: float = 0.0  # how long the job it runs now has been running (0: idle)


@dataclass(frozen=True, slots=True)
class SchedulerStatistics:
    """A frozen snapshot of one device's scheduler."""

    device: str
    policy: PolicyKind
    health: DeviceHealth
    lost_reason: str | None
    contexts: int
    classes: tuple[ClassStatistics, ...]
    engines: tuple[EngineStatistics, ...]
    ended: dict[str, int]  # terminal state -> count
    submitted: int
    rejected_at_admission: int
    decisions: int
    recalls: int
    requeued_after_reset: int
    watchdog_resets: int
    deadline_misses: int
    held: int
    estimates: tuple[KindEstimate, ...]
    followed: int = 0  # in-order latency jobs handed to the device behind their running head

    def by_class(self, sched_class: SchedulingClass) -> ClassStatistics:
        """The statistics of one class."""
        return next(c for c in self.classes if c.sched_class is sched_class)


class Ledger:
    """The scheduler's counters: live jobs per class and state, waits and runs of ended jobs,
    and the totals of its decisions, recalls, resets and refusals. Owned by one scheduler,
    changed only on the core thread."""

    def __init__(self) -> None:
        self.counts = {c: dict.fromkeys(LIVE_STATES, 0) for c in CLASS_ORDER}
        self.waits = {c: RecentSamples() for c in CLASS_ORDER}
        self.runs = {c: RecentSamples() for c in CLASS_ORDER}
        self.wait_buckets = {c: BucketCounts() for c in CLASS_ORDER}
        self.run_buckets = {c: BucketCounts() for c in CLASS_ORDER}
        self.ended: dict[str, int] = {}
        self.submitted = 0
        self.rejected_at_admission = 0
        self.decisions = 0
        self.recalls = 0
        self.requeued = 0
        self.followed = 0
        self.resets = 0
        self.deadline_misses = 0

    def moved(self, job: Job, state: JobState) -> None:
        """``job`` leaves its state for ``state`` (either may be a terminal state)."""
        counts = self.counts[job.sched_class]
        if job.state in counts:
            counts[job.state] -= 1
        if state in counts:
            counts[state] += 1

    def record_end(
        self, job: Job, state: JobState, end: float, wait: float | None, run: float | None
    ) -> None:
        """``job`` ended in ``state`` at ``end`` after waiting ``wait`` and running ``run``
        seconds (``None``: it never started): count it and its wait and run."""
        cls = job.sched_class
        if wait is not None:
            self.waits[cls].add(wait)
            self.wait_buckets[cls].add(wait)
        if run is not None:
            self.runs[cls].add(run)
            self.run_buckets[cls].add(run)
        ended, name = self.ended, STATE_VALUES[state]
        ended[name] = ended.get(name, 0) + 1
        if state is JobState.COMPLETED and job.deadline is not None and end > job.deadline:
            self.deadline_misses += 1

    def classes(
        self, shares: Mapping[SchedulingClass, float], policy: SchedulerPolicy
    ) -> tuple[ClassStatistics, ...]:
        """A snapshot of every class, given each one's current share of device time."""
        return tuple(
            ClassStatistics(
                sched_class=c,
                queued=self.counts[c][JobState.QUEUED],
                ready=self.counts[c][JobState.READY],
                running=self.counts[c][JobState.RUNNING],
                share=shares[c],
                min_share=policy.min_share.get(c, 0.0),
                queue_wait=self.waits[c].snapshot(),
                run=self.runs[c].snapshot(),
                queue_wait_buckets=self.wait_buckets[c].snapshot(),
                run_buckets=self.run_buckets[c].snapshot(),
            )
            for c in CLASS_ORDER
        )
