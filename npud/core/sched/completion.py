"""The completion path: what a device completion does to its job, its engine and the shares.

A completion takes the job off its engine (the next job there starts), charges its measured
device time to its class and, for throughput, to its context's virtual time (correcting the
estimate charged at dispatch), feeds the duration estimates, and ends the job: COMPLETED,
FAILED with the device's error, CANCELLED if it was cancelled while running, or back to READY
if it was recalled or aborted by an engine reset it had no part in. Runs on the core thread
and never raises: the outcome travels on the job.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from npud.clock import Clock
from npud.core.context import ContextState
from npud.core.estimates import OwnerEstimates
from npud.core.job import Job, JobError
from npud.core.policy import PolicyKind, SchedulerPolicy
from npud.core.sched.engines import Engines
from npud.core.sched.lifecycle import JobLifecycle
from npud.core.sched.runqueue import RunQueues
from npud.core.sched.shares import ClassShares
from npud.core.sched.statistics import Ledger
from npud.core.sched.watchdog import Watchdog
from npud.devices.base import Completion, CompletionStatus
from npud.errors import Cancelled, DeviceLost, JobFailed
from npud.vocab import JobState, SchedulingClass

_log = logging.getLogger(__name__)


class Completions:
    """Handles the device completions of one device's jobs."""

    def __init__(
        self,
        *,
        device_name: str,
        clock: Clock,
        policy: SchedulerPolicy,
        estimator: OwnerEstimates,
        engines: Engines,
        queues: RunQueues,
        shares: ClassShares,
        life: JobLifecycle,
        watchdog: Watchdog,
        ledger: Ledger,
        kick: Callable[[], None],
    ) -> None:
        """``kick`` retries held jobs and dispatches (after a completion freed room)."""
        self._device_name = device_name
        self._clock = clock
        self._fifo = policy.kind is PolicyKind.FIFO
        self._estimator = estimator
        self._engines = engines
        self._queues = queues
        self._shares = shares
        self._life = life
        self._watchdog = watchdog
        self._ledger = ledger
        self._kick = kick

    def on_done(self, job: Job, completion: Completion) -> None:
        """A device completion (core thread). Never raises: the outcome goes on the job."""
        try:
            self._complete(job, completion)
        except Exception:
            _log.exception("handling the completion of job %s failed", job.id)
        self._kick()

    @staticmethod
    def _correct_start(job: Job, now: float, run: float) -> None:
        # ---- Why the start is corrected by the device's measured run ----------------------
        # npud stamps a job started when it sees it head its engine, that is when the
        # completion of the job before it is handled. The engine began it when that job
        # ended, earlier by however long the completion waited for the loop; a job can even
        # run whole while npud still counts an earlier job as the head (never stamped).
        # It ended by ``now``, so it started no later than ``now - run``: the earlier of the
        # two is kept, and a job's run time is never less than the device measured.
        latest = now - run
        if job.started_at is None or job.started_at > latest:
            job.started_at = max(job.submitted_at, latest)

    def _complete(self, job: Job, completion: Completion) -> None:
        if not job.on_device or job.engine is None:
            return  # already accounted (device loss)
        life = self._life
        engine = self._engines[job.engine]
        ok = completion.status is CompletionStatus.OK
        now = self._clock.now()
        run = max(0.0, completion.measured_s)
        answered = ok and not job.done and job.cancel_reason is None and not job.recall
        if answered:  # the common case: answer first, keep the books after (Lifecycle.answer)
            self._correct_start(job, now, run)
            life.answer(job, completion, now)
        was_head = life.off_device(job, engine, job.written_buffers() if ok else (), now)
        self._engines.record_run(engine, now, run)
        ctx = life.contexts.get(job.context_id)
        if ctx is not None:
            ctx.device_time_s += run
        cls = job.sched_class
        self._shares.charge(cls, run - job.charged_s, now)
        if cls is SchedulingClass.THROUGHPUT and not self._fifo:
            self._queues.fair.correct(job, run - job.charged_s)
        job.charged_s = 0.0
        if ok and ctx is not None:
            self._estimator.observe(ctx.owner.account, job.kind, completion)
        status = completion.status
        if answered:
            life.finish(job, JobState.COMPLETED, None, completion, now, answered=True)
        elif job.done:
            job.completion = job.completion or completion
        elif job.cancel_reason is not None:
            life.finish(
                job,
                JobState.CANCELLED,
                JobError(Cancelled, f"{job.cancel_reason}; it was aborted on the device"),
                completion,
            )
        elif job.recall or (status is CompletionStatus.ABORTED and job.requeue_on_abort):
            if job.requeue_on_abort:
                self._ledger.requeued += 1
            job.recall = False
            job.requeue_on_abort = False
            job.started_at = None
            job.engine = None
            job.token = None
            life.set_state(job, JobState.READY, now)
            self._queues.push(job)
        elif ok:
            self._correct_start(job, now, run)
            life.finish(job, JobState.COMPLETED, None, completion, now)
        elif status is CompletionStatus.ERROR:
            life.finish(
                job,
                JobState.FAILED,
                JobError(JobFailed, f"the device reported an error: {completion.error}"),
                completion,
            )
        elif status is CompletionStatus.ABORTED:
            life.finish(
                job,
                JobState.FAILED,
                JobError(JobFailed, f"the device aborted it: {completion.error}"),
                completion,
            )
        else:
            life.finish(
                job,
                JobState.FAILED,
                JobError(DeviceLost, f"device {self._device_name} was lost: {completion.error}"),
                completion,
            )
        if was_head and engine.inflight:
            self._watchdog.start(engine.inflight[0], engine)
        if ctx is not None and ctx.state is ContextState.CLOSING and ctx.on_device == 0:
            life.finalize(ctx)
