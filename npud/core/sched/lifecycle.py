"""The life of a job in the scheduler: every state change, its accounting, its events.

A job enters QUEUED (:meth:`JobLifecycle.enqueue`), becomes READY when its dependencies have
completed and it heads its in-order queue (:meth:`~JobLifecycle.maybe_ready`), RUNNING when it
is dispatched, and ends (:meth:`~JobLifecycle.finish`) COMPLETED, FAILED, CANCELLED, REJECTED
or TIMED_OUT; a job that ends other than COMPLETED takes its dependents with it. Each change
is counted, timestamped on the job and published on the event bus. The lifecycle also keeps
the scheduler's contexts and finalises a closing context when its last device work is back.

Ownership: jobs belong to their contexts; the lifecycle moves a job between a context's live
jobs and its history (where ``policy.history`` finished jobs are kept for listing).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence

from npud.clock import Clock, TimerHandle
from npud.core.buffers import Buffer
from npud.core.context import Context, ContextState
from npud.core.events import EventBus, JobEvent
from npud.core.ids import ContextId
from npud.core.job import STATE_VALUES, Job, JobError
from npud.core.policy import PolicyKind, SchedulerPolicy
from npud.core.sched.engines import Engine, Engines
from npud.core.sched.port import ResidencyPort
from npud.core.sched.runqueue import RunQueues
from npud.core.sched.statistics import Ledger
from npud.devices.base import Completion, Device
from npud.errors import Cancelled, NpudError
from npud.vocab import JobState, SchedulingClass

_log = logging.getLogger(__name__)

Hook = Callable[[Job], None]
Closer = tuple[Callable[[Context], None], TimerHandle | None]


class JobLifecycle:
    """The state changes of one device's jobs, and the contexts they belong to."""

    def __init__(
        self,
        *,
        device: Device,
        clock: Clock,
        residency: ResidencyPort,
        policy: SchedulerPolicy,
        events: EventBus,
        engines: Engines,
        queues: RunQueues,
        ledger: Ledger,
    ) -> None:
        self.contexts: dict[ContextId, Context] = {}
        self.closers: dict[ContextId, Closer] = {}  # closing contexts: on_closed, grace timer
        self.on_end: list[Hook] = []
        self.on_forget: list[Hook] = []
        self._device = device
        self._clock = clock
        self._residency = residency
        self._policy = policy
        self._fifo = policy.kind is PolicyKind.FIFO
        self._events = events
        self._engines = engines
        self._queues = queues
        self._ledger = ledger
        self._seq = itertools.count(1)

    def enqueue(self, ctx: Context, job: Job, now: float) -> None:
        """Make an admitted ``job`` QUEUED: ``ctx`` owns it from now on."""
        job.seq = next(self._seq)
        job.state = JobState.QUEUED
        job.times[JobState.QUEUED] = now
        self._ledger.counts[job.sched_class][JobState.QUEUED] += 1
        ctx.jobs[job.id] = job
        ctx.submitted += 1
        for buf in job.buffers():
            ctx.buffer_jobs[buf.id] = ctx.buffer_jobs.get(buf.id, 0) + 1
        queue = job.queue
        queue.depth += 1
        queue.submitted += 1
        if queue.in_order:
            queue.pending.append(job)
        self._ledger.submitted += 1
        self.publish(job)

    def set_state(self, job: Job, state: JobState, now: float | None = None) -> None:
        """Move ``job`` to ``state``, count and timestamp it at ``now`` (default: the clock's
        time; READY and RUNNING publish here, QUEUED and the terminal states where they are
        set)."""
        self._ledger.moved(job, state)
        job.state = state
        job.times[state] = self._clock.now() if now is None else now
        if state is JobState.READY or state is JobState.RUNNING:
            self.publish(job)

    # ---- Why an in-order latency job may be handed over behind its predecessor ------------
    #
    # An in-order queue promises that a job starts only after its predecessor has ended. The
    # plain way to keep it - READY when the predecessor's completion arrives - costs every
    # step a round trip: the device finishes the predecessor, tells npud, npud dispatches the
    # successor, the device starts it. Between the two the engine idles, and a decoder that
    # keeps two steps in flight pays the round trip on every token anyway (measured through
    # the daemon: decode at depth 2 ran at 76-90 % of the same device driven in process).
    # But a device runs each engine's jobs in the order it receives them: a job handed to its
    # predecessor's engine, behind it, cannot start before the predecessor ends, which is the
    # promise itself. So the job that follows the running head of an in-order LATENCY queue
    # becomes READY at once, pinned to the head's engine (``job.behind``); it still waits its
    # turn in the run queue and needs a latency credit there, so it takes nothing from other
    # work; and it goes only directly behind the head: if other work went to that engine
    # first, following would add that work to its wait, so it waits for the head's end as
    # before. And it gives way to any other latency job that is READY: while several decoders
    # contend for the latency credits, a credit taken by a follower, which cannot start before
    # its head ends anyway, is one another decoder's step could have started with (measured on
    # virtual time, four decoders on three engines beside a prefill: the p99 gap went from 56
    # to 101 ms when followers took credits regardless). A follower that gives way is held
    # until the next completion and then goes early, or at its head's end, whichever the
    # contention allows. Only the one job after the head goes early (two per queue at most),
    # and only in LATENCY queues, whose jobs are never recalled. If the head leaves its engine
    # without ending (an engine reset puts it back to READY), a follower that has not gone
    # yet is held until the head is back on a device or has ended
    # (:meth:`~npud.core.sched.engines.Engines.choose`); one that had gone was aborted by the
    # same reset and comes back READY to that rule. Explicit dependencies ("only if that
    # succeeded") are not in-order: a job with unmet ones waits for their completion as before.
    # ------------------------------------------------------------------------------------

    def maybe_ready(self, job: Job, now: float | None = None) -> None:
        """Make a QUEUED ``job`` READY if nothing holds it back any more (an in-order latency
        job whose predecessor is on the device goes READY pinned behind it), stamped ``now``
        (default: the clock's time)."""
        if job.state is not JobState.QUEUED or job.unmet:
            return
        queue = job.queue
        behind: Job | None = None
        if queue.in_order:
            head = queue.head()
            if head is not job:
                behind = self._follows(head, job)
                if behind is None:
                    return
        ctx = self.contexts.get(job.context_id)
        if ctx is None or not ctx.open:
            return
        job.behind = behind
        if now is None:
            now = self._clock.now()
        self.set_state(job, JobState.READY, now)
        self._queues.push(job)
        if job.sched_class is SchedulingClass.LATENCY:
            self._engines.last_latency = now
            if not self._fifo:
                self._ledger.recalls += self._engines.recall_deep(self._device)

    @staticmethod
    def _follows(head: Job | None, job: Job) -> Job | None:
        """``head`` if ``job`` may go READY behind it on its engine (see the essay above)."""
        if (
            head is None
            or job.sched_class is not SchedulingClass.LATENCY
            or not head.on_device
            or head.engine is None
            or head.requeue_on_abort
            or head.recall
            or (job.engine_request is not None and job.engine_request != head.engine)
            or head.queue.second() is not job
        ):
            return None
        return head

    @staticmethod
    def dependency_error(dep: Job) -> JobError:
        """The error of a job that can never run because its dependency ``dep`` failed."""
        return JobError(
            Cancelled, f"its dependency {dep.id} ended {dep.state.value.upper()}, so it never ran"
        )

    def answer(self, job: Job, completion: Completion, now: float) -> None:
        """Stamp a job the device completed COMPLETED and run its done callbacks now, ahead of
        the device-side bookkeeping; :meth:`finish` then keeps its books (``answered=True``).

        Why: the callbacks answer the job's waiter (a submit stream's response goes out from
        one), and nothing they read is changed by the bookkeeping (the engine's and residency's
        release of the job, the shares' charge, the estimate, the accounting). Done first, the
        answer is on its way while the daemon keeps its books.
        """
        job.held = False
        job.behind = None
        self.set_state(job, JobState.COMPLETED, now)
        job.error = None
        job.completion = completion
        job._settle()

    def finish(
        self,
        job: Job,
        state: JobState,
        error: JobError | None,
        completion: Completion | None = None,
        now: float | None = None,
        *,
        answered: bool = False,
    ) -> None:
        """End ``job`` (and, transitively, dependents that can no longer run) at ``now``
        (default: the clock's time). ``answered``: :meth:`answer` already ended ``job`` itself;
        only its books and its dependents are left."""
        if now is None:
            now = self._clock.now()
        stack: list[tuple[Job, JobState, JobError | None, Completion | None]] = [
            (job, state, error, completion)
        ]
        while stack:
            j, s, err, comp = stack.pop()
            if answered and j is job:
                pass
            elif j.done:
                continue
            else:
                if j.state is JobState.READY and not j.held:
                    self._queues.ready[j.sched_class] -= 1
                j.held = False
                j.behind = None
                self.set_state(j, s, now)
                j.error = err
                if comp is not None:
                    j.completion = comp
                # the done callbacks answer the job's waiter before the books are kept (see
                # :meth:`answer`)
                j._settle()
            self._account_end(j, s, now)
            self.publish(j)
            for hook in self.on_end:
                hook(j)
            for dep in j.dependents:
                if dep.done:
                    continue
                if s is JobState.COMPLETED:
                    dep.unmet -= 1
                    self.maybe_ready(dep, now)
                else:
                    stack.append((dep, JobState.CANCELLED, self.dependency_error(j), None))
            j.dependents.clear()
            if j.queue.in_order:
                head = j.queue.head()
                if head is not None:
                    head.behind = None  # the job it followed has ended: any engine will do
                    self.maybe_ready(head, now)
                    follower = j.queue.second()
                    if follower is not None:
                        self.maybe_ready(follower, now)  # behind a head already on the device

    # ---- Why one accounting pass at the end --------------------------------------------
    #
    # The scheduler's class figures, the queue's and the context's each keep the ended job's
    # wait and run and a count per terminal state. They are worked out once here, from the
    # job's stamps and the end time ``now`` its state was stamped with, and handed to each,
    # rather than each reading the job's derived properties (a dozen Python calls per job on
    # the path every null job takes).
    # ------------------------------------------------------------------------------------

    def _account_end(self, job: Job, state: JobState, now: float) -> None:
        started = job.started_at
        if started is None:
            wait = run = None
        else:
            wait, run = started - job.times[JobState.QUEUED], now - started
        name = STATE_VALUES[state]
        self._ledger.record_end(job, state, now, wait, run)
        job.queue.record_end(name, wait, run)
        ctx = self.contexts.get(job.context_id)
        if ctx is None:
            return
        ctx.jobs.pop(job.id, None)
        ctx.ended[name] = ctx.ended.get(name, 0) + 1
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
        if len(ctx.history) > self._policy.history:
            old = ctx.history.popleft()
            for hook in self.on_forget:
                hook(old)

    def publish(self, job: Job) -> None:
        """Publish ``job``'s current state on the event bus (if anyone listens)."""
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

    def off_device(
        self, job: Job, engine: Engine, written: Sequence[Buffer], now: float | None = None
    ) -> bool:
        """Undo the device-side bookkeeping of ``job`` at ``now`` (default: the clock's time);
        returns whether it headed its engine."""
        was_head = self._engines.take(job, engine)
        if job.watchdog is not None:
            job.watchdog.cancel()
            job.watchdog = None
        job.on_device = False
        ctx = self.contexts.get(job.context_id)
        if ctx is not None:
            ctx.on_device -= 1
        try:
            self._residency.end_run(job.buffers(), written, now)
        except NpudError:
            _log.exception("end_run for job %s failed", job.id)
        return was_head

    def finalize(self, ctx: Context) -> None:
        """A closing ``ctx`` has nothing left on the device: release it and run its closer."""
        ctx.state = ContextState.CLOSED
        self._queues.fair.detach(ctx.id)
        self.contexts.pop(ctx.id, None)
        try:
            self._residency.release_context(ctx.id)
        except NpudError:
            _log.exception("releasing the buffers of context %s failed", ctx.id)
        on_closed, timer = self.closers.pop(ctx.id, (None, None))
        if timer is not None:
            timer.cancel()
        for job in ctx.history:
            for hook in self.on_forget:
                hook(job)
        ctx.history.clear()
        ctx.buffers.clear()
        ctx.buffer_jobs.clear()
        if on_closed is not None:
            on_closed(ctx)
