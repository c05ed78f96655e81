"""Admission: whether a batch of jobs may enter the scheduler, all or nothing.

A batch is refused, with an error that says why and what to do, when the device is gone, the
context is closing, a queue is not live or would overflow, the context's quota would be
exceeded, a dependency is foreign, self-referential or part of a cycle, an engine does not
exist, a throughput/background job is estimated over the time slice, or a deadline cannot be
met given measured durations. Admission changes no state; the scheduler counts its refusals.

The durations admission holds jobs to come from :class:`~npud.core.estimates.OwnerEstimates`
(per owner and kind, capped by the device's model), else from the client's hint, and never
fall below the device's model of the job itself where the device has one (``Job.modelled_s``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from npud.clock import Clock
from npud.core.context import Context, ContextState
from npud.core.estimates import OwnerEstimates
from npud.core.ids import ContextId
from npud.core.job import Job
from npud.core.owner import Account
from npud.core.policy import PolicyKind, SchedulerPolicy
from npud.core.queue import Queue
from npud.core.sched.engines import Engines
from npud.core.sched.loss import DeviceLoss
from npud.core.sched.runqueue import RunQueues
from npud.errors import (
    DeadlineInfeasible,
    FailedPrecondition,
    InvalidArgument,
    QueueFull,
    QuotaExceeded,
    TimeSliceExceeded,
)
from npud.vocab import SchedulingClass


class Admission:
    """The admission checks of one device's scheduler, and the durations they use."""

    def __init__(
        self,
        *,
        device_name: str,
        clock: Clock,
        policy: SchedulerPolicy,
        estimator: OwnerEstimates,
        contexts: Mapping[ContextId, Context],
        engines: Engines,
        queues: RunQueues,
        loss: DeviceLoss,
    ) -> None:
        self._device_name = device_name
        self._clock = clock
        self._policy = policy
        self._fifo = policy.kind is PolicyKind.FIFO
        self.estimator = estimator
        self._contexts = contexts
        self._engines = engines
        self._queues = queues
        self._loss = loss

    # ------------------------------------------------------------------ durations

    def estimate(self, job: Job) -> float | None:
        """The expected device time of ``job``: its kind's average, else the client's hint,
        never below the device's model of the job (see "Why the device's model of the job is
        a floor").

        What fair-share charging and the per-engine in-flight work use.
        """
        est = self.estimator.estimate(self._uid_of(job), job.kind)
        return _at_least(est if est is not None else job.estimate_s, job.modelled_s)

    def _uid_of(self, job: Job) -> Account:
        """The account whose estimates ``job`` is held to (uid -1 once its context is gone)."""
        ctx = self._contexts.get(job.context_id)
        return (-1, None) if ctx is None else ctx.owner.account

    def admission_estimate(self, job: Job) -> float | None:
        """The duration admission control (time slice, deadlines) holds ``job`` to: its kind's
        measured average capped by the device's model (``DurationEstimator.admission``), else
        the client's hint; never below the device's model of the job."""
        est = self.estimator.admission_s(self._uid_of(job), job.kind)
        return _at_least(est if est is not None else job.estimate_s, job.modelled_s)

    def _basis(self, job: Job) -> str:
        """What :meth:`admission_estimate` was based on, for an error message."""
        adm = self.estimator.admission(self._uid_of(job), job.kind)
        known = job.estimate_s if adm is None else adm.seconds
        if job.modelled_s is not None and (known is None or job.modelled_s > known):
            return "the device's cost model of its command stream"
        return "your estimate_s" if adm is None else adm.describe()

    # ------------------------------------------------------------------ checks

    def admit(self, ctx: Context, jobs: Sequence[Job]) -> None:
        """Check a batch of jobs for ``ctx``; returns only if every job may be admitted.

        Raises:
            DeviceLost: the device is gone.
            FailedPrecondition: the context is closing, or a queue was destroyed.
            InvalidArgument: a foreign dependency, a dependency cycle, an engine out of range.
            QueueFull: a queue's depth limit would be exceeded.
            QuotaExceeded: the context's queued-jobs quota would be exceeded.
            TimeSliceExceeded: a throughput/background job is estimated over the time slice.
            DeadlineInfeasible: a deadline cannot be met given measured durations.
        """
        # The hot path of every submit: checks are ordered cheapest first, and the work for
        # batches (per-queue counts, cycles, EDF among batch members) is skipped for one job.
        if self._loss.reason is not None:
            self._loss.check()
        if ctx.state is not ContextState.OPEN:
            raise FailedPrecondition(f"context {ctx.id} is {ctx.state}: it accepts no new jobs")
        n = len(jobs)
        if len(ctx.jobs) + n > ctx.quotas.max_queued_jobs:
            raise QuotaExceeded(
                f"context {ctx.id} would hold {len(ctx.jobs) + n} live jobs; its quota "
                f"is {ctx.quotas.max_queued_jobs} (it holds {len(ctx.jobs)} now)"
            )
        engines = len(self._engines)
        per_queue: dict[Queue, int] = {}
        any_deps = any_deadline = False
        for job in jobs:
            queue = job.queue
            if queue.destroyed or ctx.queues.get(queue.id) is not queue:
                raise FailedPrecondition(f"queue {queue.id} is not a live queue of {ctx.id}")
            per_queue[queue] = per_queue.get(queue, 0) + 1
            if job.engine_request is not None and not (0 <= job.engine_request < engines):
                raise InvalidArgument(
                    f"engine {job.engine_request} does not exist on {self._device_name}; it "
                    f"has engines 0..{engines - 1}"
                )
            if job.deadline is not None:
                any_deadline = True
            if job.depends_on:
                any_deps = True
                for dep in job.depends_on:
                    if dep.context_id != ctx.id:
                        raise InvalidArgument(
                            f"job dependency {dep.id} is not a job of context {ctx.id}: jobs "
                            "may only depend on jobs of their own context"
                        )
                    if dep is job:
                        raise InvalidArgument(
                            f"a job cannot depend on itself ({job.label or 'job'})"
                        )
        for queue, count in per_queue.items():
            if queue.depth + count > queue.depth_limit:
                raise QueueFull(
                    f"queue {queue.id} holds {queue.depth} jobs and the batch adds {count}; its "
                    f"depth limit is {queue.depth_limit}"
                )
        if any_deps and n > 1:
            self._check_cycles(jobs)
        if not self._fifo and self._policy.time_slice_s is not None:
            for job in jobs:
                if job.queue.sched_class is not SchedulingClass.LATENCY:
                    self._check_slice(job, job.queue.sched_class, self.admission_estimate(job))
        if any_deadline:
            self._check_deadlines(jobs)

    def _check_deadlines(self, jobs: Sequence[Job]) -> None:
        now = self._clock.now()
        # latency jobs of this batch with deadlines, for the EDF work ahead of each other
        batch_edf = [
            (j.deadline, self.admission_estimate(j) or 0.0, id(j))
            for j in jobs
            if j.deadline is not None and j.sched_class is SchedulingClass.LATENCY
        ]
        for job in jobs:
            if job.deadline is None:
                continue
            if job.deadline <= now:
                raise DeadlineInfeasible(
                    f"the deadline {job.deadline:.6f} s has already passed (now {now:.6f} s)"
                )
            est = self.admission_estimate(job)
            if est is None:
                continue
            backlog = 0.0
            if job.sched_class is SchedulingClass.LATENCY:
                ahead = sum(e for d, e, i in batch_edf if d <= job.deadline and i != id(job))
                backlog = self._backlog(job) + ahead / len(self._engines)
            if now + backlog + est > job.deadline:
                raise DeadlineInfeasible(
                    f"a {job.kind or 'job'} job takes about {est * 1e3:.3f} ms "
                    f"({self._basis(job)}) and about {backlog * 1e3:.3f} ms of work is ahead of "
                    f"it, but its deadline is {(job.deadline - now) * 1e3:.3f} ms away"
                )

    def _check_slice(self, job: Job, cls: SchedulingClass, est: float | None) -> None:
        slice_s = self._policy.time_slice_s
        if self._fifo or slice_s is None or cls is SchedulingClass.LATENCY or est is None:
            return
        if est <= slice_s:
            return
        chunks = math.ceil(est / slice_s)
        raise TimeSliceExceeded(
            f"a {cls} job of kind {job.kind or '(none)'!r} is estimated at {est * 1e3:.2f} ms "
            f"({self._basis(job)}), over the {slice_s * 1e3:.2f} ms time slice: split it "
            f"into at least {chunks} "
            "chunks, each its own job (a LATENCY job is never refused for its length)"
        )

    def _check_cycles(self, jobs: Sequence[Job]) -> None:
        # Only jobs of this batch can form a cycle: admitted jobs never gain dependencies.
        batch = {id(j) for j in jobs}
        state: dict[int, int] = {}  # id(job) -> 1 visiting, 2 done
        for root in jobs:
            if state.get(id(root)) == 2:
                continue
            stack: list[tuple[Job, int]] = [(root, 0)]
            path: list[Job] = []
            while stack:
                job, i = stack.pop()
                if i == 0:
                    state[id(job)] = 1
                    path.append(job)
                deps = [d for d in job.depends_on if id(d) in batch]
                if i < len(deps):
                    stack.append((job, i + 1))
                    dep = deps[i]
                    mark = state.get(id(dep))
                    if mark == 1:
                        names = " -> ".join(j.label or j.id for j in [*path, dep])
                        raise InvalidArgument(f"the batch has a dependency cycle: {names}")
                    if mark is None:
                        stack.append((dep, 0))
                else:
                    state[id(job)] = 2
                    path.pop()

    def _backlog(self, job: Job) -> float:
        """Work expected ahead of a latency job: EDF-earlier latency jobs and engine load."""
        deadline = job.deadline if job.deadline is not None else math.inf
        work = 0.0
        for other_deadline, other in self._queues.latency_ready():
            if other_deadline <= deadline:
                work += self.admission_estimate(other) or 0.0
        soonest = self._engines.soonest_free(self._clock.now())
        return work / len(self._engines) + soonest


# ---- Why the device's model of the job is a floor ---------------------------------------------
#
# Before a kind has measurements, a job was held to its client's estimate_s, and a job without
# one skipped the time slice and was charged a token 1 ms for fair share: one user's three 8 s
# throughput jobs without an estimate held every engine while another's LATENCY job waited
# 6.2 s. A device that reads its command streams (the simulated NPU) models each job at
# admission (``Job.modelled_s``), and that figure is a floor under whatever else is known: a
# declared estimate below it, or a kind trained on short jobs and then used for a long one,
# would otherwise let a long job pass the slice and be charged as a short one. Devices without
# a model leave the floor unset and the kind's average or the client's hint stands alone.
# ------------------------------------------------------------------------------------------------


def _at_least(estimate: float | None, floor: float | None) -> float | None:
    """``estimate`` raised to ``floor`` (either may be unknown)."""
    if floor is None:
        return estimate
    return floor if estimate is None or estimate < floor else estimate
