"""Queues: explicit, ordered job queues inside a context.

A queue has a scheduling class (LATENCY, THROUGHPUT, BACKGROUND), a priority within that class
(higher runs first; default 0), a depth limit (jobs admitted and not yet ended) and an ordering:
*in order* (the default) means a job starts only after its predecessor in the queue has
ended, like a command queue on a GPU: it becomes READY at that end, or, in a LATENCY queue, as
soon as its predecessor is on the device, pinned behind it on the same engine (see "Why an
in-order latency job may be handed over behind its predecessor" in
:mod:`npud.core.sched.lifecycle`); an out-of-order queue lets any job whose dependencies are
met become READY. A job whose predecessor failed or was cancelled still runs: a queue is
not poisoned by one failure (use explicit dependencies for "only if that succeeded").
"""

from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from npud.core.distribution import Distribution, RecentSamples
from npud.core.ids import ContextId, QueueId
from npud.vocab import SchedulingClass

if TYPE_CHECKING:
    from npud.core.job import Job


@dataclass(frozen=True, slots=True)
class QueueStatistics:
    """A frozen snapshot of one queue."""

    id: QueueId
    context_id: ContextId
    sched_class: SchedulingClass
    priority: int
    depth_limit: int
    in_order: bool
    label: str
    depth: int  # jobs admitted and not yet ended
    submitted: int
    ended: dict[str, int]  # terminal state -> count
    queue_wait: Distribution
    run: Distribution


@dataclass(slots=True, eq=False)
class Queue:
    """One job queue (an identity object), owned by its context."""

    id: QueueId
    context_id: ContextId
    sched_class: SchedulingClass
    priority: int = 0
    depth_limit: int = 1024
    in_order: bool = True
    label: str = ""
    destroyed: bool = False
    # in submission order; ended jobs are dropped lazily from the left (in-order queues only)
    pending: deque[Job] = field(default_factory=deque)
    depth: int = 0
    submitted: int = 0
    ended: dict[str, int] = field(default_factory=dict)
    waits: RecentSamples = field(default_factory=lambda: RecentSamples(256))
    runs: RecentSamples = field(default_factory=lambda: RecentSamples(256))

    def head(self) -> Job | None:
        """The first job of an in-order queue that has not ended (``None`` when empty)."""
        pending = self.pending
        while pending and pending[0].done:
            pending.popleft()
        return pending[0] if pending else None

    def second(self) -> Job | None:
        """The first job after the head of an in-order queue that has not ended."""
        if self.head() is None:
            return None
        for job in itertools.islice(self.pending, 1, None):
            if not job.done:
                return job
        return None

    def record_end(self, state: str, wait_s: float | None, run_s: float | None) -> None:
        """Account one ended job (``state``: its terminal state's wire name)."""
        self.depth -= 1
        self.ended[state] = self.ended.get(state, 0) + 1
        if wait_s is not None:
            self.waits.add(wait_s)
        if run_s is not None:
            self.runs.add(run_s)

    def statistics(self) -> QueueStatistics:
        """A frozen snapshot of the queue."""
        return QueueStatistics(
            id=self.id,
            context_id=self.context_id,
            sched_class=self.sched_class,
            priority=self.priority,
            depth_limit=self.depth_limit,
            in_order=self.in_order,
            label=self.label,
            depth=self.depth,
            submitted=self.submitted,
            ended=dict(self.ended),
            queue_wait=self.waits.snapshot(),
            run=self.runs.snapshot(),
        )
