"""The scheduler of one device: the facade core drives, wiring the parts of the package.

Contexts attach and close here, batches of jobs are submitted and cancelled here; everything
else happens in the parts: admission, the run queues, class shares, engines, and the dispatch,
completion, watchdog and device-loss paths (see :mod:`npud.core.sched`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from functools import partial

from npud.clock import Clock, TimerHandle
from npud.core.context import Context, ContextState
from npud.core.estimates import OwnerEstimates
from npud.core.events import EventBus
from npud.core.job import Job, JobError
from npud.core.policy import SchedulerPolicy
from npud.core.queue import Queue
from npud.core.sched.admission import Admission
from npud.core.sched.completion import Completions
from npud.core.sched.dispatch import Dispatcher
from npud.core.sched.engines import Engines
from npud.core.sched.lifecycle import Hook, JobLifecycle
from npud.core.sched.loss import DeviceLoss
from npud.core.sched.port import ResidencyPort
from npud.core.sched.runqueue import RunQueues
from npud.core.sched.shares import ClassShares
from npud.core.sched.statistics import Ledger, SchedulerStatistics
from npud.core.sched.watchdog import Watchdog
from npud.devices.base import Device
from npud.errors import Cancelled, NpudError
from npud.vocab import DeviceHealth, JobState, SchedulingClass

_log = logging.getLogger(__name__)


class Scheduler:
    """The scheduler of one device. See :mod:`npud.core.sched`."""

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
        self.policy = policy = policy or SchedulerPolicy()
        events = events or EventBus()
        self.estimator = estimator or OwnerEstimates(policy.ema_alpha, model_cap=policy.model_cap)
        self._ledger = Ledger()
        self._engines = Engines(len(device.capabilities.engines), clock, policy)
        self._queues = RunQueues(policy, residency.is_resident, self.estimate)
        self._shares = ClassShares(clock, policy, self._queues.ready)
        self._life = JobLifecycle(
            device=device,
            clock=clock,
            residency=residency,
            policy=policy,
            events=events,
            engines=self._engines,
            queues=self._queues,
            ledger=self._ledger,
        )
        self._loss = DeviceLoss(
            device_name=device.name,
            clock=clock,
            events=events,
            engines=self._engines,
            queues=self._queues,
            life=self._life,
        )
        self._admission = Admission(
            device_name=device.name,
            clock=clock,
            policy=policy,
            estimator=self.estimator,
            contexts=self._life.contexts,
            engines=self._engines,
            queues=self._queues,
            loss=self._loss,
        )
        self._watchdog = Watchdog(
            device=device,
            clock=clock,
            policy=policy,
            events=events,
            engines=self._engines,
            life=self._life,
            loss=self._loss,
            ledger=self._ledger,
            kick=self.kick,
        )
        completions = Completions(
            device_name=device.name,
            clock=clock,
            policy=policy,
            estimator=self.estimator,
            engines=self._engines,
            queues=self._queues,
            shares=self._shares,
            life=self._life,
            watchdog=self._watchdog,
            ledger=self._ledger,
            kick=self.kick,
        )
        self._dispatch = Dispatcher(
            device=device,
            clock=clock,
            residency=residency,
            policy=policy,
            engines=self._engines,
            queues=self._queues,
            shares=self._shares,
            admission=self._admission,
            life=self._life,
            watchdog=self._watchdog,
            completions=completions,
            loss=self._loss,
            ledger=self._ledger,
        )
        device.add_loss_listener(self._loss.lose)

    # ------------------------------------------------------------------ contexts and queues

    @property
    def device(self) -> Device:
        """The device this scheduler drives."""
        return self._device

    @property
    def lost(self) -> str | None:
        """Why the device was lost, or ``None`` while it serves."""
        return self._loss.reason

    def device_lost(self, reason: str) -> None:
        """Treat the device as lost now, as when it reports the loss itself: every job of it
        ends FAILED with DeviceLost. A second loss does nothing. Never raises."""
        self._loss.lose(reason)

    def add_hooks(self, *, on_end: Hook | None = None, on_forget: Hook | None = None) -> None:
        """Register ``on_end(job)`` (a job ended) and ``on_forget(job)`` (it left the history).

        For core's indexes; hooks run on the core thread and must not raise.
        """
        if on_end is not None:
            self._life.on_end.append(on_end)
        if on_forget is not None:
            self._life.on_forget.append(on_forget)

    def attach(self, ctx: Context) -> None:
        """Start scheduling for a new context.

        Raises:
            DeviceLost: the device is gone.
        """
        self._loss.check()
        self._life.contexts[ctx.id] = ctx
        self._queues.fair.attach(ctx)

    def destroy_queue(self, ctx: Context, queue: Queue, reason: str = "queue destroyed") -> None:
        """Cancel every live job of ``queue`` (running ones as :meth:`cancel` does), drop it."""
        queue.destroyed = True
        for job in [j for j in ctx.jobs.values() if j.queue is queue]:
            self.cancel(job, reason)
        ctx.queues.pop(queue.id, None)
        self._dispatch.pump()

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
                self._life.finish(job, JobState.CANCELLED, JobError(Cancelled, reason))
        timer: TimerHandle | None = None
        running = [j for j in ctx.jobs.values() if j.on_device]
        if running and grace_s <= 0:
            for job in running:
                self.cancel(job, reason)
        elif running:
            timer = self._clock.call_at(
                self._clock.now() + grace_s, partial(self._grace_expired, ctx, reason)
            )
        self._life.closers[ctx.id] = (on_closed, timer)
        if ctx.on_device == 0:
            self._life.finalize(ctx)
        self._dispatch.pump()

    def end_grace(self, ctx: Context, reason: str) -> None:
        """Abort now what a closing ``ctx`` still runs, as if its grace period had run out
        (a second SIGTERM during the drain). An open or closed context is left alone."""
        if ctx.state is not ContextState.CLOSING:
            return
        closers = self._life.closers
        on_closed, timer = closers.get(ctx.id, (None, None))
        if timer is not None and on_closed is not None:
            timer.cancel()
            closers[ctx.id] = (on_closed, None)
        self._grace_expired(ctx, reason)

    def _grace_expired(self, ctx: Context, reason: str) -> None:
        if ctx.state is not ContextState.CLOSING:
            return
        for job in list(ctx.jobs.values()):
            self.cancel(job, f"{reason}, and the grace period ran out")

    # ------------------------------------------------------------------ admission

    def estimate(self, job: Job) -> float | None:
        """The expected device time of ``job``: its kind's average, else the client's hint,
        never below the device's model of the job.

        What fair-share charging and the per-engine in-flight work use.
        """
        return self._admission.estimate(job)

    def admission_estimate(self, job: Job) -> float | None:
        """The duration admission control (time slice, deadlines) holds ``job`` to: its kind's
        measured average capped by the device's model, else the client's hint; never below
        the device's model of the job."""
        return self._admission.admission_estimate(job)

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
            self._admission.admit(ctx, jobs)
        except NpudError:
            self._ledger.rejected_at_admission += len(jobs)
            raise
        life = self._life
        now = self._clock.now()
        for job in jobs:
            life.enqueue(ctx, job, now)
        doomed: list[tuple[Job, Job]] = []
        for job in jobs:
            for dep in job.depends_on:
                if not dep.done:
                    dep.dependents.append(job)
                    job.unmet += 1
                elif dep.state is not JobState.COMPLETED:
                    doomed.append((job, dep))
        for job, dep in doomed:
            life.finish(job, JobState.CANCELLED, life.dependency_error(dep))
        for job in jobs:
            life.maybe_ready(job, now)
        self._dispatch.pump()

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
        life = self._life
        if not job.on_device:
            life.finish(job, JobState.CANCELLED, JobError(Cancelled, reason))
            self._dispatch.pump()
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
            life.finish(job, JobState.CANCELLED, JobError(Cancelled, msg))
        self._dispatch.pump()
        return True

    def kick(self) -> None:
        """Retry held jobs and dispatch (after something outside the scheduler freed room)."""
        self._dispatch.kick()

    # ------------------------------------------------------------------ statistics

    def shares(self) -> Mapping[SchedulingClass, float]:
        """Each class's share of device time over the recent window (sums to 1, or all 0)."""
        return self._shares.shares()

    def statistics(self) -> SchedulerStatistics:
        """A frozen snapshot of the scheduler."""
        ledger = self._ledger
        lost = self._loss.reason
        return SchedulerStatistics(
            device=self._device.name,
            policy=self.policy.kind,
            health=DeviceHealth.LOST if lost is not None else DeviceHealth.OK,
            lost_reason=lost,
            contexts=len(self._life.contexts),
            classes=ledger.classes(self._shares.shares(), self.policy),
            engines=self._engines.statistics(),
            ended=dict(ledger.ended),
            submitted=ledger.submitted,
            rejected_at_admission=ledger.rejected_at_admission,
            decisions=ledger.decisions,
            recalls=ledger.recalls,
            requeued_after_reset=ledger.requeued,
            followed=ledger.followed,
            watchdog_resets=ledger.resets,
            deadline_misses=ledger.deadline_misses,
            held=len(self._queues.held),
            estimates=self.estimator.statistics(),
        )
