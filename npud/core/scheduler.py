"""The scheduler: one per device, deciding which READY job runs next, where, and when.

The scheduler is callback driven on the core thread: a submit, a device completion, a cancel
or a timer runs a *pump* that dispatches as many READY jobs as the engines' credits allow.
Time and timers come only from :class:`npud.clock.Clock`, so the same code runs on real time in
the daemon and on a :class:`~npud.clock.VirtualClock` in tests.

Policy ``npud`` (see :mod:`npud.core.policy`):

* LATENCY first, earliest deadline first, then queue priority, then arrival;
* THROUGHPUT shared between contexts by weight: each context has a virtual time that advances
  by the device time its jobs use divided by its weight; the context with the least virtual
  time goes next (stride scheduling, as in the fair DRM scheduler);
* BACKGROUND only when nothing else is ready;
* a minimum share per class over a sliding window: a class below its share takes the next slot;
* per-engine credits that keep the hardware queue shallow while latency work exists;
* a time slice for throughput jobs, deadline admission, a watchdog per running job.

Policy ``fifo``: arrival order over every class with a deep hardware queue: the raw driver.

Ownership: the scheduler owns the READY structures and the in-flight lists of its engines; the
jobs themselves belong to their contexts. The scheduler never raises out of a device callback:
a job's failure travels on the job.
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import math
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Protocol

from npud.clock import Clock, TimerHandle
from npud.core.buffers import Buffer
from npud.core.context import Context, ContextState
from npud.core.distribution import (
    EMPTY_BUCKETS,
    BucketCounts,
    Buckets,
    Distribution,
    RecentSamples,
)
from npud.core.estimates import KindEstimate, OwnerEstimates
from npud.core.events import DeviceEvent, EventBus, JobEvent
from npud.core.ids import ContextId
from npud.core.job import Job, JobError
from npud.core.owner import Account
from npud.core.policy import CLASS_ORDER, PolicyKind, SchedulerPolicy, native_priority
from npud.core.queue import Queue
from npud.devices.base import Binding, BufferUse, Completion, CompletionStatus, Device, Submission
from npud.errors import (
    Cancelled,
    DeadlineInfeasible,
    DeviceLost,
    FailedPrecondition,
    InvalidArgument,
    JobFailed,
    JobTimedOut,
    NpudError,
    QueueFull,
    QuotaExceeded,
    TimeSliceExceeded,
)
from npud.vocab import DeviceHealth, JobState, SchedulingClass

_log = logging.getLogger(__name__)

_LIVE_STATES = (JobState.QUEUED, JobState.READY, JobState.RUNNING)
_INF = math.inf


class ResidencyPort(Protocol):
    """What the scheduler needs of a residency manager (:mod:`npud.core.residency`)."""

    def prepare(self, buffers: Sequence[Buffer]) -> bool: ...

    def is_resident(self, buffers: Sequence[Buffer]) -> bool: ...

    def begin_run(self, buffers: Sequence[Buffer]) -> None: ...

    def end_run(self, buffers: Sequence[Buffer], written: Sequence[Buffer]) -> None: ...

    def binding(self, buf: Buffer, use: BufferUse) -> Binding: ...

    def release_context(self, ctx: ContextId) -> None: ...


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

    def by_class(self, sched_class: SchedulingClass) -> ClassStatistics:
        """The statistics of one class."""
        return next(c for c in self.classes if c.sched_class is sched_class)


@dataclass(slots=True, eq=False)
class _Engine:
    index: int
    inflight: deque[Job] = field(default_factory=deque)
    latency: int = 0
    other: int = 0
    load_s: float = 0.0
    busy_s: float = 0.0
    recent: deque[tuple[float, float]] = field(default_factory=deque)  # (finished, run)
    head_since: float | None = None  # when the head of ``inflight`` started running


@dataclass(slots=True, eq=False)
class _Tenant:
    """A context as the fair-share scheduler sees it."""

    ctx: Context
    vtime: float = 0.0
    ready: list[tuple[int, int, Job]] = field(default_factory=list)  # (-priority, seq, job)
    in_heap: bool = False


Hook = Callable[[Job], None]


class Scheduler:
    """The scheduler of one device. See the module docstring."""

    def __init__(
        self,
        device: Device,
        clock: Clock,
        residency: ResidencyPort,
        *,
        policy: SchedulerPolicy | None = None,
        events: EventBus | None = None,
        estimator: OwnerEstimates | None = None,
    ) -> None:
        self._device = device
        self._clock = clock
        self._residency = residency
        self.policy = policy or SchedulerPolicy()
        self._events = events or EventBus()
        self.estimator = estimator or OwnerEstimates(
            self.policy.ema_alpha, model_cap=self.policy.model_cap
        )
        caps = device.capabilities
        self._caps = caps
        self._engines = [_Engine(i) for i in range(max(1, len(caps.engines)))]
        self._fifo = self.policy.kind is PolicyKind.FIFO
        self._native = {c: native_priority(c, caps.native_priorities) for c in CLASS_ORDER}
        self._contexts: dict[ContextId, Context] = {}
        self._tenants: dict[ContextId, _Tenant] = {}
        self._closers: dict[ContextId, tuple[Callable[[Context], None], TimerHandle | None]] = {}
        # READY structures (lazy deletion: an entry whose job is no longer READY is skipped)
        self._lat: list[tuple[float, int, int, Job]] = []  # (deadline, -priority, seq, job)
        self._tp: list[tuple[float, int, _Tenant]] = []  # (virtual time, seq, tenant)
        self._bg: list[tuple[int, int, Job]] = []  # (-priority, seq, job)
        self._arrival: list[tuple[int, Job]] = []  # the fifo policy: (seq, job)
        self._ready = dict.fromkeys(CLASS_ORDER, 0)
        self._held: list[Job] = []
        self._idle_retry: TimerHandle | None = None
        self._idle_retries = 0
        self._vclock = 0.0
        self._seq = itertools.count(1)
        self._tseq = itertools.count(1)
        self._last_latency = -_INF
        self._lat_inflight = 0
        self._usage = dict.fromkeys(CLASS_ORDER, 0.0)
        self._usage_at = clock.now()
        self._started = clock.now()
        self._counts = {c: dict.fromkeys(_LIVE_STATES, 0) for c in CLASS_ORDER}
        self._waits = {c: RecentSamples() for c in CLASS_ORDER}
        self._runs = {c: RecentSamples() for c in CLASS_ORDER}
        self._wait_buckets = {c: BucketCounts() for c in CLASS_ORDER}
        self._run_buckets = {c: BucketCounts() for c in CLASS_ORDER}
        self._ended: dict[str, int] = {}
        self._submitted = 0
        self._rejected_at_admission = 0
        self._decisions = 0
        self._recalls = 0
        self._requeued = 0
        self._resets = 0
        self._deadline_misses = 0
        self._lost: str | None = None
        self._pumping = False
        self._pump_again = False
        self._on_end: list[Hook] = []
        self._on_forget: list[Hook] = []
        device.add_loss_listener(self._on_device_lost)

    # ------------------------------------------------------------------ contexts and queues

    @property
    def device(self) -> Device:
        """The device this scheduler drives."""
        return self._device

    @property
    def lost(self) -> str | None:
        """Why the device was lost, or ``None`` while it serves."""
        return self._lost

    def add_hooks(self, *, on_end: Hook | None = None, on_forget: Hook | None = None) -> None:
        """Register ``on_end(job)`` (a job ended) and ``on_forget(job)`` (it left the history).

        For core's indexes; hooks run on the core thread and must not raise.
        """
        if on_end is not None:
            self._on_end.append(on_end)
        if on_forget is not None:
            self._on_forget.append(on_forget)

    def attach(self, ctx: Context) -> None:
        """Start scheduling for a new context.

        Raises:
            DeviceLost: the device is gone.
        """
        self._check_device()
        self._contexts[ctx.id] = ctx
        self._tenants[ctx.id] = _Tenant(ctx, vtime=self._vclock)

    def destroy_queue(self, ctx: Context, queue: Queue, reason: str = "queue destroyed") -> None:
        """Cancel every live job of ``queue`` (running ones as :meth:`cancel` does), drop it."""
        queue.destroyed = True
        for job in [j for j in ctx.jobs.values() if j.queue is queue]:
            self.cancel(job, reason)
        ctx.queues.pop(queue.id, None)
        self._pump()

    def close_context(
        self,
        ctx: Context,
        grace_s: float,
        on_closed: Callable[[Context], None],
        reason: str = "",
    ) -> None:
        """Close ``ctx``: cancel what is queued, drain or abort what runs, release everything.

        Jobs not yet on the device end CANCELLED at once. Running jobs may finish within
        ``grace_s`` seconds; after that they are cancelled (aborted on the device where
        possible). Every cancelled job's error says its context was closed and, when given,
        why (``reason``: "npud is shutting down", "session ended", ...). When the last device
        completion of the context has arrived, its buffer references are released
        (``residency.release_context``), the scheduler forgets it and ``on_closed(ctx)`` runs.
        A second close of a closing context does nothing.
        """
        if ctx.state is not ContextState.OPEN:
            return
        ctx.state = ContextState.CLOSING
        reason = f"its context was closed: {reason}" if reason else "its context was closed"
        for job in sorted(ctx.jobs.values(), key=lambda j: -j.seq):
            if not job.on_device:
                self._finish(job, JobState.CANCELLED, JobError(Cancelled, reason))
        timer: TimerHandle | None = None
        running = [j for j in ctx.jobs.values() if j.on_device]
        if running and grace_s <= 0:
            for job in running:
                self.cancel(job, reason)
        elif running:
            timer = self._clock.call_at(
                self._clock.now() + grace_s, partial(self._grace_expired, ctx, reason)
            )
        self._closers[ctx.id] = (on_closed, timer)
        if ctx.on_device == 0:
            self._finalize(ctx)
        self._pump()

    def end_grace(self, ctx: Context, reason: str) -> None:
        """Abort now what a closing ``ctx`` still runs, as if its grace period had run out
        (a second SIGTERM during the drain). An open or closed context is left alone."""
        if ctx.state is not ContextState.CLOSING:
            return
        on_closed, timer = self._closers.get(ctx.id, (None, None))
        if timer is not None and on_closed is not None:
            timer.cancel()
            self._closers[ctx.id] = (on_closed, None)
        self._grace_expired(ctx, reason)

    def _grace_expired(self, ctx: Context, reason: str) -> None:
        if ctx.state is not ContextState.CLOSING:
            return
        for job in list(ctx.jobs.values()):
            self.cancel(job, f"{reason}, and the grace period ran out")

    def _finalize(self, ctx: Context) -> None:
        ctx.state = ContextState.CLOSED
        self._tenants.pop(ctx.id, None)
        self._contexts.pop(ctx.id, None)
        try:
            self._residency.release_context(ctx.id)
        except NpudError:
            _log.exception("releasing the buffers of context %s failed", ctx.id)
        on_closed, timer = self._closers.pop(ctx.id, (None, None))
        if timer is not None:
            timer.cancel()
        for job in ctx.history:
            for hook in self._on_forget:
                hook(job)
        ctx.history.clear()
        ctx.buffers.clear()
        ctx.buffer_jobs.clear()
        if on_closed is not None:
            on_closed(ctx)

    # ------------------------------------------------------------------ admission

    def estimate(self, job: Job) -> float | None:
        """The expected device time of ``job``: its kind's average, else the client's hint.

        What fair-share charging and the per-engine in-flight work use.
        """
        est = self.estimator.estimate(self._uid_of(job), job.kind)
        return est if est is not None else job.estimate_s

    def _uid_of(self, job: Job) -> Account:
        """The account whose estimates ``job`` is held to (uid -1 once its context is gone)."""
        ctx = self._contexts.get(job.context_id)
        return (-1, None) if ctx is None else ctx.owner.account

    def admission_estimate(self, job: Job) -> float | None:
        """The duration admission control (time slice, deadlines) holds ``job`` to: its kind's
        measured average capped by the device's model (``DurationEstimator.admission``), else
        the client's hint."""
        est = self.estimator.admission_s(self._uid_of(job), job.kind)
        return est if est is not None else job.estimate_s

    def _basis(self, job: Job) -> str:
        """What :meth:`admission_estimate` was based on, for an error message."""
        adm = self.estimator.admission(self._uid_of(job), job.kind)
        return "your estimate_s" if adm is None else adm.describe()

    def submit(self, ctx: Context, jobs: Sequence[Job]) -> None:
        """Admit a batch of jobs, all or nothing, and schedule them.

        Jobs are built by the caller (core's facade) with their queue, buffers and resolved
        dependencies; dependencies may name earlier jobs of the context or other jobs of the
        same batch. On success every job is QUEUED (or further along) and owned by ``ctx``.

        Raises:
            DeviceLost: the device is gone.
            FailedPrecondition: the context is closing, or a queue was destroyed.
            InvalidArgument: a foreign dependency, a dependency cycle, an engine out of range.
            QueueFull: a queue's depth limit would be exceeded.
            QuotaExceeded: the context's queued-jobs quota would be exceeded.
            TimeSliceExceeded: a throughput/background job is estimated over the time slice.
            DeadlineInfeasible: a deadline cannot be met given measured durations.
        """
        try:
            self._admit(ctx, jobs)
        except NpudError:
            self._rejected_at_admission += len(jobs)
            raise
        now = self._clock.now()
        for job in jobs:
            self._enqueue(ctx, job, now)
        doomed: list[tuple[Job, Job]] = []
        for job in jobs:
            for dep in job.depends_on:
                if not dep.done:
                    dep.dependents.append(job)
                    job.unmet += 1
                elif dep.state is not JobState.COMPLETED:
                    doomed.append((job, dep))
        for job, dep in doomed:
            self._finish(job, JobState.CANCELLED, self._dependency_error(dep))
        for job in jobs:
            self._maybe_ready(job)
        self._pump()

    def _admit(self, ctx: Context, jobs: Sequence[Job]) -> None:
        # The hot path of every submit: checks are ordered cheapest first, and the work for
        # batches (per-queue counts, cycles, EDF among batch members) is skipped for one job.
        if self._lost is not None:
            self._check_device()
        if ctx.state is not ContextState.OPEN:
            raise FailedPrecondition(f"context {ctx.id} is {ctx.state}: it accepts no new jobs")
        n = len(jobs)
        if len(ctx.jobs) + n > ctx.quotas.max_queued_jobs:
            raise QuotaExceeded(
                f"context {ctx.id} would hold {len(ctx.jobs) + n} live jobs; its quota "
                f"is {ctx.quotas.max_queued_jobs} (it holds {len(ctx.jobs)} now)"
            )
        per_queue: dict[Queue, int] = {}
        any_deps = any_deadline = False
        for job in jobs:
            queue = job.queue
            if queue.destroyed or ctx.queues.get(queue.id) is not queue:
                raise FailedPrecondition(f"queue {queue.id} is not a live queue of {ctx.id}")
            per_queue[queue] = per_queue.get(queue, 0) + 1
            if job.engine_request is not None and not (
                0 <= job.engine_request < len(self._engines)
            ):
                raise InvalidArgument(
                    f"engine {job.engine_request} does not exist on {self._device.name}; it "
                    f"has engines 0..{len(self._engines) - 1}"
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
        if not self._fifo and self.policy.time_slice_s is not None:
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
        slice_s = self.policy.time_slice_s
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
        deadline = job.deadline if job.deadline is not None else _INF
        work = 0.0
        for entry in self._lat:
            other = entry[3]
            if other.state is JobState.READY and entry[0] <= deadline:
                work += self.admission_estimate(other) or 0.0
        now = self._clock.now()
        soonest = min(self._remaining(e, now) for e in self._engines)
        return work / len(self._engines) + soonest

    def _remaining(self, engine: _Engine, now: float) -> float:
        """The engine's in-flight work not yet done: charged work minus the head's progress."""
        if not engine.inflight:
            return 0.0
        since = engine.head_since
        elapsed = now - since if since is not None else 0.0
        return max(0.0, engine.load_s - elapsed)

    def _check_device(self) -> None:
        if self._lost is not None:
            raise DeviceLost(f"device {self._device.name} was lost: {self._lost}")

    # ------------------------------------------------------------------ state changes

    def _enqueue(self, ctx: Context, job: Job, now: float) -> None:
        job.seq = next(self._seq)
        job.state = JobState.QUEUED
        job.times[JobState.QUEUED] = now
        self._counts[job.sched_class][JobState.QUEUED] += 1
        ctx.jobs[job.id] = job
        ctx.submitted += 1
        for buf in job.buffers():
            ctx.buffer_jobs[buf.id] = ctx.buffer_jobs.get(buf.id, 0) + 1
        queue = job.queue
        queue.depth += 1
        queue.submitted += 1
        if queue.in_order:
            queue.pending.append(job)
        self._submitted += 1
        self._publish(job)

    def _set_state(self, job: Job, state: JobState) -> None:
        counts = self._counts[job.sched_class]
        if job.state in counts:
            counts[job.state] -= 1
        if state in counts:
            counts[state] += 1
        job.state = state
        job.times[state] = self._clock.now()
        if state is JobState.READY or state is JobState.RUNNING:
            self._publish(job)  # QUEUED and the terminal states publish where they are set

    def _maybe_ready(self, job: Job) -> None:
        if job.state is not JobState.QUEUED or job.unmet:
            return
        queue = job.queue
        if queue.in_order and queue.head() is not job:
            return
        ctx = self._contexts.get(job.context_id)
        if ctx is None or not ctx.open:
            return
        self._set_state(job, JobState.READY)
        self._push_ready(job)
        if job.sched_class is SchedulingClass.LATENCY:
            self._last_latency = self._clock.now()
            if not self._fifo:
                self._recall_deep()

    def _push_ready(self, job: Job) -> None:
        cls = job.sched_class
        prio = -job.queue.priority
        if self._fifo:
            heapq.heappush(self._arrival, (job.seq, job))
        elif cls is SchedulingClass.LATENCY:
            deadline = job.deadline if job.deadline is not None else _INF
            heapq.heappush(self._lat, (deadline, prio, job.seq, job))
        elif cls is SchedulingClass.THROUGHPUT:
            tenant = self._tenants[job.context_id]
            heapq.heappush(tenant.ready, (prio, job.seq, job))
            if not tenant.in_heap:
                # A context that was idle re-enters at the current virtual time: sleeping
                # does not earn credit to monopolise the device later.
                tenant.vtime = max(tenant.vtime, self._vclock)
                tenant.in_heap = True
                heapq.heappush(self._tp, (tenant.vtime, next(self._tseq), tenant))
        else:
            heapq.heappush(self._bg, (prio, job.seq, job))
        self._ready[cls] += 1

    def _dependency_error(self, dep: Job) -> JobError:
        return JobError(
            Cancelled, f"its dependency {dep.id} ended {dep.state.value.upper()}, so it never ran"
        )

    def _finish(
        self,
        job: Job,
        state: JobState,
        error: JobError | None,
        completion: Completion | None = None,
    ) -> None:
        """End ``job`` (and, transitively, dependents that can no longer run)."""
        stack: list[tuple[Job, JobState, JobError | None, Completion | None]] = [
            (job, state, error, completion)
        ]
        while stack:
            j, s, err, comp = stack.pop()
            if j.done:
                continue
            if j.state is JobState.READY and not j.held:
                self._ready[j.sched_class] -= 1
            j.held = False
            self._set_state(j, s)
            j.error = err
            if comp is not None:
                j.completion = comp
            self._account_end(j, s)
            self._publish(j)
            for hook in self._on_end:
                hook(j)
            j._settle()
            for dep in j.dependents:
                if dep.done:
                    continue
                if s is JobState.COMPLETED:
                    dep.unmet -= 1
                    self._maybe_ready(dep)
                else:
                    stack.append((dep, JobState.CANCELLED, self._dependency_error(j), None))
            j.dependents.clear()
            if j.queue.in_order:
                head = j.queue.head()
                if head is not None:
                    self._maybe_ready(head)

    def _account_end(self, job: Job, state: JobState) -> None:
        ctx = self._contexts.get(job.context_id)
        wait, run = job.queue_wait_s, job.run_s
        cls = job.sched_class
        if wait is not None:
            self._waits[cls].add(wait)
            self._wait_buckets[cls].add(wait)
        if run is not None:
            self._runs[cls].add(run)
            self._run_buckets[cls].add(run)
        self._ended[state.value] = self._ended.get(state.value, 0) + 1
        if (
            state is JobState.COMPLETED
            and job.deadline is not None
            and job.times[state] > job.deadline
        ):
            self._deadline_misses += 1
        job.queue.record_end(state, wait, run)
        if ctx is None:
            return
        ctx.jobs.pop(job.id, None)
        ctx.ended[state.value] = ctx.ended.get(state.value, 0) + 1
        if wait is not None:
            ctx.waits.add(wait)
        if run is not None:
            ctx.runs.add(run)
        for buf in job.buffers():
            left = ctx.buffer_jobs.get(buf.id, 0) - 1
            if left > 0:
                ctx.buffer_jobs[buf.id] = left
            else:
                ctx.buffer_jobs.pop(buf.id, None)
        ctx.history.append(job)
        if len(ctx.history) > self.policy.history:
            old = ctx.history.popleft()
            for hook in self._on_forget:
                hook(old)

    def _publish(self, job: Job) -> None:
        if not self._events.wants_jobs:
            return
        err = job.error
        self._events.publish(
            JobEvent(
                time=self._clock.now(),
                device=self._device.name,
                context_id=job.context_id,
                queue_id=job.queue.id,
                job_id=job.id,
                state=job.state.value,
                kind=job.kind,
                error_kind=None if err is None else err.kind,
                error_message=None if err is None else err.message,
            )
        )

    # ------------------------------------------------------------------ cancellation

    def cancel(self, job: Job, reason: str = "cancelled by its owner") -> bool:
        """Cancel ``job``; returns ``False`` if it had already ended.

        A job not yet on the device ends CANCELLED at once. A running one is aborted on the
        device where possible; otherwise it runs to the end and its result is discarded
        (``job.discarded``; the error message says so). Either way it is CANCELLED now and its
        buffers stay in use until the device reports back.
        """
        if job.done:
            return False
        if not job.on_device:
            self._finish(job, JobState.CANCELLED, JobError(Cancelled, reason))
            self._pump()
            return True
        job.cancel_reason = reason
        stopped = False
        if job.token is not None:
            try:
                stopped = self._device.abort(job.token)
            except NpudError:
                _log.exception("abort of job %s failed", job.id)
        if not job.done:
            if stopped:
                msg = f"{reason}; it was aborted on the device"
            else:
                job.discarded = True
                msg = (
                    f"{reason}; the device could not stop it, so it runs to its end and its "
                    "result is discarded"
                )
            self._finish(job, JobState.CANCELLED, JobError(Cancelled, msg))
        self._pump()
        return True

    # ------------------------------------------------------------------ dispatch

    def kick(self) -> None:
        """Retry held jobs and dispatch (after something outside the scheduler freed room)."""
        self._release_held()
        self._pump()

    def _pump(self) -> None:
        if self._pumping:
            self._pump_again = True
            return
        self._pumping = True
        try:
            while True:
                self._pump_again = False
                self._dispatch_all()
                if not self._pump_again:
                    break
        finally:
            self._pumping = False

    def _latency_mode(self, now: float) -> bool:
        return (
            self._ready[SchedulingClass.LATENCY] > 0
            or self._lat_inflight > 0
            or now - self._last_latency <= self.policy.latency_window_s
        )

    def _can_take(
        self, engine: _Engine, cls: SchedulingClass, shallow: bool, idle_only: bool = False
    ) -> bool:
        if self._fifo:
            return len(engine.inflight) < self.policy.fifo_credits
        if cls is SchedulingClass.LATENCY:
            return engine.latency < self.policy.latency_credits
        if idle_only:
            return not engine.inflight
        if shallow:
            return engine.other == 0
        return len(engine.inflight) < self.policy.deep_credits

    # ---- Why credits, and why recalls -------------------------------------------------
    #
    # A device runs an engine's jobs in the order it received them. Whatever npud has already
    # handed to an engine is therefore a FIFO that npud's priorities can no longer reorder: a
    # decode step submitted behind eight prefill chunks waits for all eight, however urgent.
    # The DRM scheduler solves this with a credit limit per hardware ring; npud does the same
    # per engine, with two depths:
    #
    # * shallow: while latency work is ready, running, or was seen within
    #   ``latency_window_s``, an engine holds at most ONE throughput/background job (plus up to
    #   ``latency_credits`` latency jobs). A decode step that arrives then waits for at most
    #   the one throughput job already on its engine, never a queue of them. More than that:
    #   in shallow mode a throughput/background job starts only on an IDLE engine, unless its
    #   class is below its minimum share (see below). Queued behind a running decode step, it
    #   would take that engine from whichever decode step becomes ready next - the next step
    #   of the same decoder, typically - and when the decoders already keep every engine busy,
    #   the throughput job would get an engine for every job it has while the decode steps
    #   queue behind it: in effect the FIFO the policy exists to avoid (measured: four decode
    #   loops on three engines with a prefill beside them decoded at the same rate under
    #   ``npud`` as under ``fifo``). Waiting for an idle engine costs throughput work nothing
    #   the classes do not already promise: it is guaranteed its minimum share, and it gets
    #   every engine that latency work leaves idle.
    # * deep: when only throughput work exists, each engine holds up to ``deep_credits`` jobs,
    #   so the device never idles between completions and the scheduler's reaction time does
    #   not cost throughput.
    #
    # The window matters because decode steps arrive one at a time with small gaps (the client
    # reads the token, then submits the next step); switching to deep mode in every gap would
    # put a deep queue in front of the next step. The window hides those gaps.
    #
    # The first latency job after a long throughput-only stretch still finds deep queues. For
    # it, npud *recalls* the throughput jobs an engine holds but has not started (everything
    # behind the head of its FIFO): it aborts them on the device and puts them back in READY
    # with their place in line. They never started, so they lose nothing but the round trip,
    # and the latency job waits for at most one throughput job after all. A device that cannot
    # abort queued work keeps them; then the bound is the deep queue, and the statistics say so
    # (``recalls`` stays 0).
    # ------------------------------------------------------------------------------------

    def _recall_deep(self) -> None:
        for engine in self._engines:
            if engine.other <= 1:
                continue
            for job in list(engine.inflight)[1:]:
                if job.sched_class is SchedulingClass.LATENCY or job.done or job.recall:
                    continue
                if job.token is None:
                    continue
                job.recall = True
                try:
                    stopped = self._device.abort(job.token)
                except NpudError:
                    stopped = False
                if not stopped:
                    job.recall = False
                else:
                    self._recalls += 1

    def _eligible(self, shallow: bool) -> list[SchedulingClass]:
        """The classes with READY work and a free credit on some engine (hot path)."""
        ready = self._ready
        lat = ready[SchedulingClass.LATENCY] > 0
        tp = ready[SchedulingClass.THROUGHPUT] > 0
        bg = ready[SchedulingClass.BACKGROUND] > 0
        if not (lat or tp or bg):
            return []
        engines = self._engines
        if self._fifo:
            limit = self.policy.fifo_credits
            if not any(len(e.inflight) < limit for e in engines):
                return []
            return [c for c in CLASS_ORDER if ready[c] > 0]
        out: list[SchedulingClass] = []
        if lat:
            limit = self.policy.latency_credits
            if any(e.latency < limit for e in engines):
                out.append(SchedulingClass.LATENCY)
        if tp or bg:
            if shallow:
                other_ok = any(e.other == 0 for e in engines)
            else:
                limit = self.policy.deep_credits
                other_ok = any(len(e.inflight) < limit for e in engines)
            if other_ok:
                if tp:
                    out.append(SchedulingClass.THROUGHPUT)
                if bg:
                    out.append(SchedulingClass.BACKGROUND)
        return out

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

    def _choose_class(self, eligible: list[SchedulingClass]) -> tuple[SchedulingClass | None, bool]:
        """The class to serve next (``None`` when the best one has no credit now), and whether
        it was chosen because it is below its minimum share."""
        if self._fifo:
            return eligible[0], False
        usage = self._usage
        total = usage[SchedulingClass.LATENCY] + usage[SchedulingClass.THROUGHPUT]
        total += usage[SchedulingClass.BACKGROUND]
        if total > 0.0:
            worst: SchedulingClass | None = None
            worst_gap = 0.0
            for cls in eligible:
                gap = self.policy.min_share.get(cls, 0.0) - usage[cls] / total
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

    def _charge_class(self, cls: SchedulingClass, seconds: float) -> None:
        now = self._clock.now()
        if now > self._usage_at:
            factor = 0.5 ** ((now - self._usage_at) / self.policy.share_window_s)
            for c in CLASS_ORDER:
                self._usage[c] *= factor
            self._usage_at = now
        self._usage[cls] = max(0.0, self._usage[cls] + seconds)

    def _dispatch_all(self) -> None:
        while True:
            if self._lost is not None:
                return
            now = self._clock.now()
            shallow = not self._fifo and self._latency_mode(now)
            eligible = self._eligible(shallow)
            if not eligible:
                return
            cls, by_share = self._choose_class(eligible)
            if cls is None:
                return
            # shallow mode: work other than latency waits for an idle engine unless it is
            # owed its minimum share (see "Why credits, and why recalls")
            idle_only = shallow and cls is not SchedulingClass.LATENCY and not by_share
            if idle_only and all(e.inflight for e in self._engines):
                return
            job = self._pop(cls)
            if job is None:
                self._ready[cls] = 0  # only stale entries were left
                continue
            self._ready[cls] -= 1
            self._decisions += 1
            est = self.estimate(job)
            late = None
            if self.policy.reject_late and job.deadline is not None:
                late = self.admission_estimate(job)
            if late is not None and job.deadline is not None and now + late > job.deadline:
                self._refund(job)
                self._finish(
                    job,
                    JobState.REJECTED,
                    JobError(
                        DeadlineInfeasible,
                        f"when its turn came at {now:.6f} s it needed about {late * 1e3:.3f} ms "
                        f"more, past its deadline {job.deadline:.6f} s: rejected before it ran",
                    ),
                )
                continue
            engine = self._choose_engine(job, cls, shallow, idle_only)
            if engine is None:
                self._hold(job)
                continue
            self._dispatch(job, engine, est)

    def _pop(self, cls: SchedulingClass) -> Job | None:
        if self._fifo:
            return self._pop_best(self._arrival, 0)
        if cls is SchedulingClass.LATENCY:
            return self._pop_best(self._lat, 2)
        if cls is SchedulingClass.BACKGROUND:
            return self._pop_best(self._bg, 1)
        while self._tp:
            vtime, _, tenant = heapq.heappop(self._tp)
            if vtime != tenant.vtime and tenant.ready:
                # its virtual time was corrected while it waited in the heap: re-rank it
                heapq.heappush(self._tp, (tenant.vtime, next(self._tseq), tenant))
                continue
            job = self._pop_best(tenant.ready, 1)
            if job is None:
                tenant.in_heap = False
                continue
            self._vclock = max(self._vclock, tenant.vtime)
            charge = self.estimate(job) or self.policy.unknown_cost_s
            job.charged_s = charge
            tenant.vtime += charge / tenant.ctx.weight
            if tenant.ready:
                heapq.heappush(self._tp, (tenant.vtime, next(self._tseq), tenant))
            else:
                tenant.in_heap = False
            return job
        return None

    def _pop_best(self, heap: list[Any], rank: int) -> Job | None:
        """Pop the best READY job; among equally ranked ones prefer resident buffers."""
        first: Job | None = None
        first_entry: tuple[object, ...] | None = None
        while heap:
            entry = heapq.heappop(heap)
            job = entry[-1]
            if job.state is JobState.READY and not job.held:
                first, first_entry = job, entry
                break
        if first is None or first_entry is None:
            return None
        lookahead = self.policy.resident_lookahead
        key = first_entry[:rank]
        if lookahead <= 0 or not heap or heap[0][:rank] != key:
            return first  # nothing ranks equal: residency cannot change the choice
        if self._residency.is_resident(first.buffers()):
            return first
        passed: list[Any] = []
        chosen = first
        while heap and len(passed) < lookahead:
            entry = heap[0]
            if entry[:rank] != key:
                break
            heapq.heappop(heap)
            other = entry[-1]
            if other.state is not JobState.READY or other.held:
                continue
            if self._residency.is_resident(other.buffers()):
                chosen = other
                passed.append(first_entry)
                break
            passed.append(entry)
        for entry in passed:
            heapq.heappush(heap, entry)
        return chosen

    def _refund(self, job: Job) -> None:
        if job.charged_s and job.sched_class is SchedulingClass.THROUGHPUT:
            tenant = self._tenants.get(job.context_id)
            if tenant is not None:
                tenant.vtime -= job.charged_s / tenant.ctx.weight
        job.charged_s = 0.0

    def _hold(self, job: Job) -> None:
        self._refund(job)
        job.held = True
        self._held.append(job)

    # ---- Why held jobs are retried on a timer when the device is idle --------------------
    #
    # A job whose buffers cannot be placed is held until the next completion frees memory.
    # When nothing is in flight no completion will come, yet the device may refuse memory
    # that the budgets say exists (a transient ENOMEM: another process's allocations, CMA
    # pressure, an injected fault). Held with an idle device, the job - and every job held
    # behind it - would wait for an unrelated event forever. So an idle hold arms one retry
    # timer with exponential backoff (10 ms doubling to 2 s); after IDLE_RETRIES tries
    # (about 75 s) it stops, leaving holds that are permanent (pins, budgets) to the events
    # that end them (unpin, release, a completion), so a virtual clock still runs idle.
    # ------------------------------------------------------------------------------------

    IDLE_RETRIES = 40

    def _retry_when_idle(self) -> None:
        if self._idle_retry is not None or any(e.inflight for e in self._engines):
            return
        if self._idle_retries >= self.IDLE_RETRIES:
            return
        delay = min(0.01 * 2**self._idle_retries, 2.0)
        self._idle_retries += 1
        self._idle_retry = self._clock.call_at(self._clock.now() + delay, self._idle_retry_fired)

    def _idle_retry_fired(self) -> None:
        self._idle_retry = None
        self.kick()

    def _release_held(self) -> None:
        if not self._held:
            return
        held, self._held = self._held, []
        for job in held:
            if job.held and job.state is JobState.READY:
                job.held = False
                self._push_ready(job)
            job.held = False

    # ---- Why the engine that frees up soonest ---------------------------------------------
    #
    # An engine runs what it holds in order, so a job handed to it starts when the work ahead
    # of it there is done. Spreading jobs evenly (fewest in flight, then least work charged)
    # ignores how far along that work is: a latency probe went to an engine that had just
    # started a 10 ms job rather than to one about to finish a 30 ms job, and the P2 probes
    # spread 99/84/92 over three engines with a median wait near half a throughput job
    # instead of the quarter a "soonest free" choice gives. So a job that may run anywhere
    # goes to an idle engine if there is one, else to the one whose remaining in-flight work
    # (work charged minus what the running head has done, :meth:`_remaining`) is smallest;
    # ties go to fewer jobs in flight, then the lower index. Estimates may be wrong; a head
    # that overran its estimate counts as about to finish, which is the best guess there is.
    # ------------------------------------------------------------------------------------

    def _choose_engine(
        self, job: Job, cls: SchedulingClass, shallow: bool, idle_only: bool = False
    ) -> _Engine | None:
        if job.engine_request is not None:
            engine = self._engines[job.engine_request]
            return engine if self._can_take(engine, cls, shallow, idle_only) else None
        best: _Engine | None = None
        best_key = (0.0, 0)
        now = -1.0
        for engine in self._engines:
            if not self._can_take(engine, cls, shallow, idle_only):
                continue
            if not engine.inflight:
                return engine  # idle: nothing can start sooner
            if now < 0.0:
                now = self._clock.now()
            key = (self._remaining(engine, now), len(engine.inflight))
            if best is None or key < best_key:
                best, best_key = engine, key
        return best

    def _dispatch(self, job: Job, engine: _Engine, est: float | None) -> None:
        buffers = job.buffers()
        residency = self._residency
        try:
            if not residency.prepare(buffers):
                self._hold(job)
                self._retry_when_idle()
                return
            command = residency.binding(job.command, BufferUse.READ).handle
            bindings = tuple(residency.binding(b, u) for b, u in job.bindings)
        except Exception as err:  # any failure before the device ends the job (see _unsent)
            self._refund(job)
            self._finish(job, JobState.FAILED, _unsent(job, err))
            return
        cls = job.sched_class
        submission = Submission(
            command=command,
            command_offset=job.command_offset,
            command_size=job.command_size,
            bindings=bindings,
            engine=engine.index,
            priority=self._native[cls],
            label=job.label or job.kind,
            timeout_s=self._timeout_of(job),
        )
        residency.begin_run(buffers)
        cost = est if est is not None else self.policy.unknown_cost_s
        if cls is not SchedulingClass.THROUGHPUT or self._fifo:
            job.charged_s = cost
        self._charge_class(cls, job.charged_s)
        job.on_device = True
        job.engine = engine.index
        ctx = self._contexts[job.context_id]
        ctx.on_device += 1
        self._set_state(job, JobState.RUNNING)
        engine.inflight.append(job)
        engine.load_s += job.charged_s
        if cls is SchedulingClass.LATENCY:
            engine.latency += 1
            self._lat_inflight += 1
            self._last_latency = self._clock.now()
        else:
            engine.other += 1
        try:
            job.token = self._device.submit(submission, partial(self._on_done, job))
        except Exception as err:  # the job must not stay RUNNING without reaching the device
            if job.on_device:
                self._off_device(job, engine, written=())
            if isinstance(err, DeviceLost):
                self._on_device_lost(str(err))
            else:
                self._finish(job, JobState.FAILED, _unsent(job, err))
            return
        self._idle_retries = 0
        if job.on_device and engine.inflight[0] is job:
            self._start(job, engine)

    def _start(self, job: Job, engine: _Engine) -> None:
        now = self._clock.now()
        engine.head_since = now
        if not job.done:
            job.started_at = now
        timeout = self._timeout_of(job)
        job.watchdog = self._clock.call_at(now + timeout, partial(self._on_watchdog, job))

    def _timeout_of(self, job: Job) -> float:
        """The watchdog timeout of ``job``: its own, else its class's. Core admits only finite
        positive timeouts; one that is not (a job built around core) gets the class's, because
        a NaN on the clock's timer heap would break its order for every job."""
        own = job.timeout_s
        if own is not None and math.isfinite(own) and own > 0:
            return own
        return self.policy.timeout_for(job.sched_class)

    def _off_device(self, job: Job, engine: _Engine, written: Sequence[Buffer]) -> bool:
        """Undo the device-side bookkeeping of ``job``; returns whether it headed its engine."""
        was_head = bool(engine.inflight) and engine.inflight[0] is job
        if was_head:
            engine.inflight.popleft()
            engine.head_since = None
        else:
            with contextlib.suppress(ValueError):
                engine.inflight.remove(job)
        engine.load_s = max(0.0, engine.load_s - job.charged_s) if engine.inflight else 0.0
        if job.sched_class is SchedulingClass.LATENCY:
            engine.latency -= 1
            self._lat_inflight -= 1
        else:
            engine.other -= 1
        if job.watchdog is not None:
            job.watchdog.cancel()
            job.watchdog = None
        job.on_device = False
        ctx = self._contexts.get(job.context_id)
        if ctx is not None:
            ctx.on_device -= 1
        try:
            self._residency.end_run(job.buffers(), written)
        except NpudError:
            _log.exception("end_run for job %s failed", job.id)
        return was_head

    # ------------------------------------------------------------------ device callbacks

    def _on_done(self, job: Job, completion: Completion) -> None:
        """A device completion (core thread). Never raises: the outcome goes on the job."""
        try:
            self._complete(job, completion)
        except Exception:
            _log.exception("handling the completion of job %s failed", job.id)
        self._release_held()
        self._pump()

    def _complete(self, job: Job, completion: Completion) -> None:
        if not job.on_device or job.engine is None:
            return  # already accounted (device loss)
        engine = self._engines[job.engine]
        ok = completion.status is CompletionStatus.OK
        was_head = self._off_device(job, engine, job.written_buffers() if ok else ())
        run = max(0.0, completion.measured_s)
        now = self._clock.now()
        engine.busy_s += run
        engine.recent.append((now, run))
        self._forget_before(engine, now - self.policy.share_window_s)
        ctx = self._contexts.get(job.context_id)
        if ctx is not None:
            ctx.device_time_s += run
        cls = job.sched_class
        self._charge_class(cls, run - job.charged_s)
        if cls is SchedulingClass.THROUGHPUT and not self._fifo:
            tenant = self._tenants.get(job.context_id)
            if tenant is not None:
                tenant.vtime += (run - job.charged_s) / tenant.ctx.weight
        job.charged_s = 0.0
        if ok and ctx is not None:
            self.estimator.observe(ctx.owner.account, job.kind, completion)
        status = completion.status
        if job.done:
            job.completion = job.completion or completion
        elif job.cancel_reason is not None:
            self._finish(
                job,
                JobState.CANCELLED,
                JobError(Cancelled, f"{job.cancel_reason}; it was aborted on the device"),
                completion,
            )
        elif job.recall or (status is CompletionStatus.ABORTED and job.requeue_on_abort):
            if job.requeue_on_abort:
                self._requeued += 1
            job.recall = False
            job.requeue_on_abort = False
            job.started_at = None
            job.engine = None
            job.token = None
            self._set_state(job, JobState.READY)
            self._push_ready(job)
        elif ok:
            if job.started_at is None:
                # It ran while npud still counted an earlier job as its engine's head (that
                # one's completion had not been delivered yet), so _start never stamped it:
                # the device's measured run time says when it started.
                job.started_at = max(job.submitted_at, now - run)
            self._finish(job, JobState.COMPLETED, None, completion)
        elif status is CompletionStatus.ERROR:
            self._finish(
                job,
                JobState.FAILED,
                JobError(JobFailed, f"the device reported an error: {completion.error}"),
                completion,
            )
        elif status is CompletionStatus.ABORTED:
            self._finish(
                job,
                JobState.FAILED,
                JobError(JobFailed, f"the device aborted it: {completion.error}"),
                completion,
            )
        else:
            self._finish(
                job,
                JobState.FAILED,
                JobError(DeviceLost, f"device {self._device.name} was lost: {completion.error}"),
                completion,
            )
        if was_head and engine.inflight:
            self._start(engine.inflight[0], engine)
        if ctx is not None and ctx.state is ContextState.CLOSING and ctx.on_device == 0:
            self._finalize(ctx)

    # ---- Why the watchdog resets and what happens to the other jobs -------------------
    #
    # The kernel's own job timeout (rocket 500 ms, amdxdna 16 s) recovers the hardware but
    # fails whatever was queued on the ring with it, and it fires late. npud arms its own
    # watchdog per job when the job reaches the head of its engine (the moment the engine
    # starts it; jobs behind it are not yet running), with the job's timeout or its class's.
    # When it fires, the job is TIMED_OUT (it is never re-run: re-running a job that hung
    # once mostly hangs again; drm_sched deprecated resubmission for that reason), and the
    # engine is reset through ``device.reset_engine``. The reset aborts every job on that
    # engine. The others had not started (they were behind the hung head), so npud puts them
    # back to READY with their place in line and they run again on a healthy engine; their
    # clients see only a delay. Other engines carry on untouched.
    # ------------------------------------------------------------------------------------

    def _on_watchdog(self, job: Job) -> None:
        job.watchdog = None
        if not job.on_device or job.engine is None:
            return
        engine = self._engines[job.engine]
        timeout = self._timeout_of(job)
        reason = f"job {job.id} ran past its {timeout:.3f} s timeout"
        if not job.done:
            self._finish(
                job,
                JobState.TIMED_OUT,
                JobError(
                    JobTimedOut,
                    f"it ran longer than its {timeout * 1e3:.1f} ms timeout; engine "
                    f"{engine.index} of {self._device.name} was reset",
                ),
            )
        for other in engine.inflight:
            if other is not job and not other.done:
                other.requeue_on_abort = True
        self._resets += 1
        if self._events.active:
            self._events.publish(
                DeviceEvent(self._clock.now(), self._device.name, DeviceHealth.RESETTING, reason)
            )
        try:
            self._device.reset_engine(engine.index, reason)
        except NpudError as err:
            if isinstance(err, DeviceLost):
                self._on_device_lost(str(err))
            else:
                _log.exception("reset of engine %d failed", engine.index)
        if self._events.active and self._lost is None:
            self._events.publish(
                DeviceEvent(self._clock.now(), self._device.name, DeviceHealth.OK, "reset done")
            )
        self._release_held()
        self._pump()

    def _on_device_lost(self, reason: str) -> None:
        """The device went away: every job of it fails with DeviceLost; the loop carries on."""
        if self._lost is not None:
            return
        self._lost = reason or "device lost"
        error = JobError(DeviceLost, f"device {self._device.name} was lost: {self._lost}")
        for engine in self._engines:
            for job in list(engine.inflight):
                self._off_device(job, engine, written=())
                self._finish(job, JobState.FAILED, error)
        for ctx in list(self._contexts.values()):
            for job in sorted(ctx.jobs.values(), key=lambda j: -j.seq):
                self._finish(job, JobState.FAILED, error)
        self._lat.clear()
        self._tp.clear()
        self._bg.clear()
        self._arrival.clear()
        self._held.clear()
        for tenant in self._tenants.values():
            tenant.ready.clear()
            tenant.in_heap = False
        self._ready = dict.fromkeys(CLASS_ORDER, 0)
        if self._events.active:
            self._events.publish(
                DeviceEvent(self._clock.now(), self._device.name, DeviceHealth.LOST, self._lost)
            )
        for ctx in list(self._contexts.values()):
            if ctx.state is ContextState.CLOSING and ctx.on_device == 0:
                self._finalize(ctx)

    # ------------------------------------------------------------------ statistics

    # ---- Why utilisation counts the job that is still running ---------------------------
    #
    # An engine's busy time grows when a job finishes (by its measured time). Counted that
    # way alone, an engine running a 600 s job reads 0 % for ten minutes, then 100 % of a
    # window it was not busy in: npuctl showed core0 at 0.0 % while it was fully occupied.
    # So the busy time over a window is the finished jobs' run time that falls inside the
    # window (a run that began before the window counts only from its start) plus the time
    # the job at the head of the engine's FIFO has been running, clipped to the window. The
    # head is the only job an engine executes; jobs queued behind it are not busy time.
    # ------------------------------------------------------------------------------------

    @staticmethod
    def _running_s(engine: _Engine, now: float) -> float:
        if engine.head_since is None or not engine.inflight:
            return 0.0
        return max(0.0, now - engine.head_since)

    @staticmethod
    def _forget_before(engine: _Engine, start: float) -> None:
        # Runs are pruned as they are recorded, so the list holds one window's runs whether or
        # not anyone reads statistics(); statistics() itself only reads.
        while engine.recent and engine.recent[0][0] < start:
            engine.recent.popleft()

    def _busy_in_window(self, engine: _Engine, now: float, running: float) -> float:
        start = now - self.policy.share_window_s
        busy = sum(
            min(run, max(0.0, finished - start))
            for finished, run in engine.recent
            if finished >= start
        )
        return busy + min(running, now - start)

    def shares(self) -> Mapping[SchedulingClass, float]:
        """Each class's share of device time over the recent window (sums to 1, or all 0)."""
        total = sum(self._usage.values())
        if total <= 0:
            return dict.fromkeys(CLASS_ORDER, 0.0)
        return {c: self._usage[c] / total for c in CLASS_ORDER}

    def statistics(self) -> SchedulerStatistics:
        """A frozen snapshot of the scheduler."""
        now = self._clock.now()
        shares = self.shares()
        life = max(now - self._started, 1e-12)
        window = self.policy.share_window_s
        engines = []
        for e in self._engines:
            running = self._running_s(e, now)
            engines.append(
                EngineStatistics(
                    index=e.index,
                    in_flight=len(e.inflight),
                    latency_in_flight=e.latency,
                    busy_s=e.busy_s,
                    utilisation=min(1.0, (e.busy_s + running) / life),
                    recent_utilisation=min(1.0, self._busy_in_window(e, now, running) / window),
                    running_s=running,
                )
            )
        classes = tuple(
            ClassStatistics(
                sched_class=c,
                queued=self._counts[c][JobState.QUEUED],
                ready=self._counts[c][JobState.READY],
                running=self._counts[c][JobState.RUNNING],
                share=shares[c],
                min_share=self.policy.min_share.get(c, 0.0),
                queue_wait=self._waits[c].snapshot(),
                run=self._runs[c].snapshot(),
                queue_wait_buckets=self._wait_buckets[c].snapshot(),
                run_buckets=self._run_buckets[c].snapshot(),
            )
            for c in CLASS_ORDER
        )
        return SchedulerStatistics(
            device=self._device.name,
            policy=self.policy.kind,
            health=DeviceHealth.LOST if self._lost is not None else DeviceHealth.OK,
            lost_reason=self._lost,
            contexts=len(self._contexts),
            classes=classes,
            engines=tuple(engines),
            ended=dict(self._ended),
            submitted=self._submitted,
            rejected_at_admission=self._rejected_at_admission,
            decisions=self._decisions,
            recalls=self._recalls,
            requeued_after_reset=self._requeued,
            watchdog_resets=self._resets,
            deadline_misses=self._deadline_misses,
            held=len(self._held),
            estimates=self.estimator.statistics(),
        )


def _unsent(job: Job, err: Exception) -> JobError:
    """Why ``job`` failed between admission and the device.

    Why catch everything there: a job that is RUNNING holds an engine, its buffers' pins and
    its command buffer until a completion arrives, and none arrives for a job the device never
    took. An npud error keeps its class and message; anything else (a bug, a device adapter's
    unexpected exception) fails the job as JobFailed naming what went wrong, and is logged.
    """
    if isinstance(err, NpudError):
        return JobError(type(err), str(err))
    _log.error("job %s could not be sent to the device", job.id, exc_info=err)
    return JobError(JobFailed, f"the device could not take the job: {type(err).__name__}: {err}")
