"""The READY jobs of one device, in one typed run queue per policy.

* latency: earliest deadline first, then queue priority, then arrival
  (:class:`~npud.core.sched.ranked.EdfRank`);
* throughput: fair share between contexts (:class:`~npud.core.sched.fairshare.FairShare`),
  queue priority then arrival within a context;
* background: queue priority, then arrival;
* the ``fifo`` policy: arrival order over every class, in one queue.

Every queue is a :class:`~npud.core.sched.ranked.RankedQueue`. :class:`RunQueues` routes a job
to its queue, counts READY jobs per class and keeps the jobs held back because their buffers
could not be placed.

Ownership: the run queues hold references to READY jobs; the jobs belong to their contexts.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

from npud.core.job import Job
from npud.core.policy import CLASS_ORDER, PolicyKind, SchedulerPolicy
from npud.core.sched.fairshare import FairShare
from npud.core.sched.ranked import EdfRank, IsResident, RankedQueue
from npud.vocab import JobState, SchedulingClass


class RunQueues:
    """The READY jobs of one device by class, their counts, and the jobs held back."""

    def __init__(
        self,
        policy: SchedulerPolicy,
        is_resident: IsResident,
        estimate: Callable[[Job], float | None],
    ) -> None:
        self.latency = RankedQueue[EdfRank]()
        self.fair = FairShare(estimate, policy.unknown_cost_s)
        self.background = RankedQueue[int]()
        self.arrival = RankedQueue[int]()
        self.ready = dict.fromkeys(CLASS_ORDER, 0)  # READY and not held, per class
        self.held: list[Job] = []
        self._fifo = policy.kind is PolicyKind.FIFO
        self._is_resident = is_resident
        self._lookahead = policy.resident_lookahead

    def push(self, job: Job) -> None:
        """Queue a READY job in its class's run queue (the one queue under ``fifo``)."""
        cls = job.sched_class
        prio = -job.queue.priority
        if self._fifo:
            self.arrival.push(0, job)
        elif cls is SchedulingClass.LATENCY:
            deadline = job.deadline if job.deadline is not None else math.inf
            self.latency.push(EdfRank(deadline, prio), job)
        elif cls is SchedulingClass.THROUGHPUT:
            self.fair.push(job, prio)
        else:
            self.background.push(prio, job)
        self.ready[cls] += 1

    def pop(self, cls: SchedulingClass) -> Job | None:
        """Take the next job of ``cls`` out (under ``fifo``: the oldest of any class).

        A throughput job is charged its estimate to its context's virtual time here.
        The READY count is the caller's to lower.
        """
        if self._fifo:
            return self.arrival.pop(self._is_resident, self._lookahead)
        if cls is SchedulingClass.LATENCY:
            return self.latency.pop(self._is_resident, self._lookahead)
        if cls is SchedulingClass.BACKGROUND:
            return self.background.pop(self._is_resident, self._lookahead)
        return self.fair.pop(self._is_resident, self._lookahead)

    def latency_ready(self) -> Iterator[tuple[float, Job]]:
        """The READY latency jobs as ``(deadline, job)``, in no particular order."""
        for rank, job in self.latency.entries():
            if job.state is JobState.READY:
                yield rank.deadline, job

    def refund(self, job: Job) -> None:
        """Give back what ``job`` was charged when it was taken out (it did not run)."""
        if job.charged_s and job.sched_class is SchedulingClass.THROUGHPUT:
            self.fair.refund(job)
        job.charged_s = 0.0

    def hold(self, job: Job) -> None:
        """Set a popped job aside until :meth:`release_held` (its buffers could not be placed)."""
        self.refund(job)
        job.held = True
        self.held.append(job)

    def release_held(self) -> None:
        """Put every held job that is still READY back in its run queue."""
        if not self.held:
            return
        held, self.held = self.held, []
        for job in held:
            if job.held and job.state is JobState.READY:
                job.held = False
                self.push(job)
            job.held = False

    def clear(self) -> None:
        """Forget every READY and held job (the device is gone)."""
        self.latency.clear()
        self.fair.clear()
        self.background.clear()
        self.arrival.clear()
        self.held.clear()
        for cls in CLASS_ORDER:
            self.ready[cls] = 0
