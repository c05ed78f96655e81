"""The dispatch path: the pump that hands READY jobs to the engines while credits allow.

A submit, a completion, a cancel or a timer runs the pump; it chooses a class
(:mod:`~npud.core.sched.shares`), takes the best job of that class out of its run queue
(:mod:`~npud.core.sched.runqueue`), rejects it if its deadline can no longer be met, chooses
its engine (:mod:`~npud.core.sched.engines`), has its buffers placed and submits it. A job
whose buffers cannot be placed now is held until something frees memory.
"""

from __future__ import annotations

import logging
from functools import partial

from npud.clock import Clock, TimerHandle
from npud.core.job import Job, JobError
from npud.core.policy import CLASS_ORDER, PolicyKind, SchedulerPolicy, native_priority
from npud.core.sched.admission import Admission
from npud.core.sched.completion import Completions
from npud.core.sched.engines import Engine, Engines
from npud.core.sched.lifecycle import JobLifecycle
from npud.core.sched.loss import DeviceLoss
from npud.core.sched.port import ResidencyPort
from npud.core.sched.runqueue import RunQueues
from npud.core.sched.shares import ClassShares
from npud.core.sched.statistics import Ledger
from npud.core.sched.watchdog import Watchdog
from npud.devices.base import BufferUse, Device, Submission
from npud.errors import DeadlineInfeasible, DeviceLost, JobFailed, NpudError
from npud.vocab import JobState, SchedulingClass

_log = logging.getLogger(__name__)


class Dispatcher:
    """The dispatch loop of one device's scheduler."""

    IDLE_RETRIES = 40

    def __init__(
        self,
        *,
        device: Device,
        clock: Clock,
        residency: ResidencyPort,
        policy: SchedulerPolicy,
        engines: Engines,
        queues: RunQueues,
        shares: ClassShares,
        admission: Admission,
        life: JobLifecycle,
        watchdog: Watchdog,
        completions: Completions,
        loss: DeviceLoss,
        ledger: Ledger,
    ) -> None:
        self._device = device
        self._clock = clock
        self._residency = residency
        self._policy = policy
        self._fifo = policy.kind is PolicyKind.FIFO
        self._native = {
            c: native_priority(c, device.capabilities.native_priorities) for c in CLASS_ORDER
        }
        self._engines = engines
        self._queues = queues
        self._shares = shares
        self._admission = admission
        self._life = life
        self._watchdog = watchdog
        self._completions = completions
        self._loss = loss
        self._ledger = ledger
        self._pumping = False
        self._pump_again = False
        self._idle_retry: TimerHandle | None = None
        self._idle_retries = 0

    def kick(self) -> None:
        """Retry held jobs and dispatch (after something outside the scheduler freed room)."""
        self._queues.release_held()
        self.pump()

    def pump(self) -> None:
        """Dispatch as many READY jobs as the credits allow (re-entrant calls run once more)."""
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
        engines = self._engines
        return (
            self._queues.ready[SchedulingClass.LATENCY] > 0
            or engines.latency_in_flight > 0
            or now - engines.last_latency <= self._policy.latency_window_s
        )

    def eligible(self, shallow: bool) -> list[SchedulingClass]:
        """The classes with READY work and a free credit on some engine (hot path)."""
        ready = self._queues.ready
        lat = ready[SchedulingClass.LATENCY] > 0
        tp = ready[SchedulingClass.THROUGHPUT] > 0
        bg = ready[SchedulingClass.BACKGROUND] > 0
        if not (lat or tp or bg):
            return []
        engines = self._engines.all
        if self._fifo:
            limit = self._policy.fifo_credits
            if not any(len(e.inflight) < limit for e in engines):
                return []
            return [c for c in CLASS_ORDER if ready[c] > 0]
        out: list[SchedulingClass] = []
        if lat:
            limit = self._policy.latency_credits
            if any(e.latency < limit for e in engines):
                out.append(SchedulingClass.LATENCY)
        if tp or bg:
            if shallow:
                other_ok = any(e.other == 0 for e in engines)
            else:
                limit = self._policy.deep_credits
                other_ok = any(len(e.inflight) < limit for e in engines)
            if other_ok:
                if tp:
                    out.append(SchedulingClass.THROUGHPUT)
                if bg:
                    out.append(SchedulingClass.BACKGROUND)
        return out

    def _dispatch_all(self) -> None:
        queues = self._queues
        ready = queues.ready
        lat, tp, bg = CLASS_ORDER
        while True:
            if self._loss.reason is not None:
                return
            if ready[lat] <= 0 and ready[tp] <= 0 and ready[bg] <= 0:
                return  # nothing READY (most pumps after a completion): no clock, no choice
            now = self._clock.now()
            shallow = not self._fifo and self._latency_mode(now)
            eligible = self.eligible(shallow)
            if not eligible:
                return
            cls, by_share = self._shares.choose(eligible)
            if cls is None:
                return
            # shallow mode: work other than latency waits for an idle engine unless it is
            # owed its minimum share (see "Why credits, and why recalls" in engines.py)
            idle_only = shallow and cls is not SchedulingClass.LATENCY and not by_share
            if idle_only and all(e.inflight for e in self._engines.all):
                return
            job = queues.pop(cls)
            if job is None:
                ready[cls] = 0  # only stale entries were left
                continue
            ready[cls] -= 1
            self._ledger.decisions += 1
            est = self._admission.estimate(job)
            late = None
            if self._policy.reject_late and job.deadline is not None:
                late = self._admission.admission_estimate(job)
                if late is not None and job.behind is not None:
                    late += self._engines.ahead_of(job, now)  # it starts when that ends
            if late is not None and job.deadline is not None and now + late > job.deadline:
                queues.refund(job)
                self._life.finish(
                    job,
                    JobState.REJECTED,
                    JobError(
                        DeadlineInfeasible,
                        f"when its turn came at {now:.6f} s it needed about {late * 1e3:.3f} ms "
                        f"more, past its deadline {job.deadline:.6f} s: rejected before it ran",
                    ),
                )
                continue
            if job.behind is not None and (
                ready[SchedulingClass.LATENCY] > 0
                or self._engines.latency_in_flight >= len(self._engines)
            ):
                # a follower gives way to latency work that is ready now (see "Why an
                # in-order latency job may be handed over behind its predecessor")
                queues.hold(job)
                continue
            engine = self._engines.choose(job, cls, shallow, idle_only)
            if engine is None:
                queues.hold(job)
                continue
            self._dispatch(job, engine, est, now)

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

    def _retry_when_idle(self) -> None:
        if self._idle_retry is not None or self._engines.busy():
            return
        if self._idle_retries >= self.IDLE_RETRIES:
            return
        delay = min(0.01 * 2**self._idle_retries, 2.0)
        self._idle_retries += 1
        self._idle_retry = self._clock.call_at(self._clock.now() + delay, self._idle_retry_fired)

    def _idle_retry_fired(self) -> None:
        self._idle_retry = None
        self.kick()

    def _dispatch(self, job: Job, engine: Engine, est: float | None, now: float) -> None:
        buffers = job.buffers()
        residency = self._residency
        life = self._life
        try:
            if not residency.prepare(buffers):
                self._queues.hold(job)
                self._retry_when_idle()
                return
            command = residency.binding(job.command, BufferUse.READ).handle
            bindings = tuple(residency.binding(b, u) for b, u in job.bindings)
        except Exception as err:  # any failure before the device ends the job (see _unsent)
            self._end_unsent(job, _unsent(job, err))
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
            timeout_s=self._watchdog.timeout_of(job),
        )
        # Why the device gets the job before core books it: the books (buffers in use, the
        # charge, RUNNING, the engine's in-flight list) change nothing the device reads, and
        # nothing else runs in between (one loop owns core, and a device never calls
        # ``on_done`` from inside ``submit``). Kept first, they would delay every job's start
        # by their cost; kept after, they are done while the device runs it.
        try:
            token = self._device.submit(submission, partial(self._completions.on_done, job))
        except Exception as err:  # nothing was booked: the job ends here, never RUNNING
            if isinstance(err, DeviceLost):
                self._queues.refund(job)
                job.held = True  # out of the run queue's count (see _end_unsent)
                self._loss.lose(str(err))
            else:
                self._end_unsent(job, _unsent(job, err))
            return
        job.token = token
        residency.begin_run(buffers, now)
        cost = est if est is not None else self._policy.unknown_cost_s
        if cls is not SchedulingClass.THROUGHPUT or self._fifo:
            job.charged_s = cost
        self._shares.charge(cls, job.charged_s, now)
        job.on_device = True
        job.engine = engine.index
        ctx = life.contexts[job.context_id]
        ctx.on_device += 1
        life.set_state(job, JobState.RUNNING, now)
        self._engines.put(job, engine, now)
        self._idle_retries = 0
        if job.behind is not None:
            self._ledger.followed += 1
        if job.on_device and engine.inflight[0] is job:
            self._watchdog.start(job, engine)
        if job.on_device and cls is SchedulingClass.LATENCY and job.queue.in_order:
            follower = job.queue.second()
            if follower is not None:
                life.maybe_ready(follower)  # it may go behind ``job`` on its engine

    def _end_unsent(self, job: Job, error: JobError) -> None:
        """End FAILED a job taken from its run queue that the device never had.

        Taking it out already removed it from the queue's READY count; marked as set aside
        (``held``), :meth:`JobLifecycle.finish` does not remove it a second time, which would
        leave the count short and the next READY job of its class undispatched.
        """
        self._queues.refund(job)
        job.held = True
        self._life.finish(job, JobState.FAILED, error)


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
