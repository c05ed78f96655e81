"""Jobs: one command stream to run on a device, with its buffers, dependencies and outcome.

A job moves through ``QUEUED -> READY -> RUNNING`` and ends in exactly one terminal state
(COMPLETED, FAILED, CANCELLED, TIMED_OUT or REJECTED), with a timestamp at each transition:

* QUEUED: admitted, waiting for its dependencies or for its predecessor in an in-order queue;
* READY: eligible; the scheduler picks among READY jobs;
* RUNNING: handed to the device. The device runs an engine's jobs in order, so a RUNNING job
  may still wait behind another on its engine: ``started_at`` is when its engine began it.

``queue_wait_s`` (``started_at`` minus submission) and ``run_s`` (end minus ``started_at``) are
what users ask for first. A terminal job carries its error (:class:`JobError`: an
:mod:`npud.errors` class and a message) and, if the device ran it, its device
:class:`~npud.devices.base.Completion`. Failures travel on the job; nothing is raised through
the scheduler.

The scheduler may move a RUNNING job back to READY in two documented cases only: it recalled a
job the device had not started yet (to make room for latency work), or a watchdog reset of its
engine aborted it before it started. A job never runs twice after it started.

Ownership: a :class:`Job` belongs to its context (:class:`~npud.core.context.Context`), which
keeps it while live and in a bounded history after it ends. Done callbacks run exactly once,
on the core thread, after the terminal state is set.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from npud.clock import TimerHandle
from npud.core.buffers import Buffer
from npud.core.ids import ContextId, JobId, QueueId
from npud.devices.base import BufferUse, Completion, SubmitToken
from npud.errors import NpudError
from npud.vocab import TERMINAL_STATES, JobState, SchedulingClass

if TYPE_CHECKING:
    from npud.core.queue import Queue

_log = logging.getLogger(__name__)

STATE_VALUES: dict[JobState, str] = {s: s.value for s in JobState}
"""Each state's wire name: the key of the ``ended`` counters (a dict lookup, where an enum's
``.value`` is a Python-level descriptor call on every ended job)."""


@dataclass(frozen=True, slots=True)
class JobError:
    """Why a job did not complete: an npud error class and a message for a person."""

    type: type[NpudError]
    message: str

    @property
    def kind(self) -> str:
        """The error class's name ("JobFailed", "DeviceLost", ...)."""
        return self.type.__name__

    def exception(self) -> NpudError:
        """A fresh exception instance for callers that raise (e.g. a blocking wait)."""
        return self.type(self.message)


@dataclass(frozen=True, slots=True)
class JobInfo:
    """A frozen snapshot of a job, for listings, events and the API."""

    id: JobId
    context_id: ContextId
    queue_id: QueueId
    sched_class: SchedulingClass
    kind: str
    label: str
    state: JobState
    submitted_at: float
    times: tuple[tuple[JobState, float], ...]
    started_at: float | None
    finished_at: float | None
    queue_wait_s: float | None
    run_s: float | None
    engine: int | None
    deadline: float | None
    error: JobError | None
    completion: Completion | None
    discarded: bool
    context_label: str = ""  # the label of the job's context, for people ("chat-alice")


DoneCallback = Callable[["Job"], None]


@dataclass(slots=True, eq=False)
class Job:
    """One job (an identity object).

    Fields after ``estimate_s`` are the scheduler's bookkeeping: read them, never write them.
    """

    id: JobId
    context_id: ContextId
    queue: Queue
    command: Buffer
    command_offset: int
    command_size: int
    bindings: tuple[tuple[Buffer, BufferUse], ...]
    depends_on: tuple[Job, ...] = ()
    kind: str = ""
    label: str = ""
    deadline: float | None = None  # absolute, on the core clock
    timeout_s: float | None = None  # None: the class default of the scheduler's policy
    engine_request: int | None = None
    estimate_s: float | None = None  # the client's hint, used while the kind has no history
    context_label: str = ""  # its context's label (a context's label never changes)
    modelled_s: float | None = None  # the device's model of this job at admission (None: none)

    state: JobState = JobState.QUEUED
    times: dict[JobState, float] = field(default_factory=dict)
    seq: int = 0
    started_at: float | None = None
    engine: int | None = None
    token: SubmitToken | None = None
    error: JobError | None = None
    completion: Completion | None = None
    discarded: bool = False  # the result of a run that could not be stopped is thrown away
    # -- scheduler bookkeeping --
    unmet: int = 0
    dependents: list[Job] = field(default_factory=list)
    on_device: bool = False
    recall: bool = False
    requeue_on_abort: bool = False
    held: bool = False
    behind: Job | None = None  # the in-order predecessor it follows on that one's engine
    cancel_reason: str | None = None
    charged_s: float = 0.0
    watchdog: TimerHandle | None = None
    _callbacks: list[DoneCallback] = field(default_factory=list)
    _buffers: tuple[Buffer, ...] | None = None
    # the scheduling class of the job's queue (a queue's class never changes); a field, not a
    # property, because the scheduler reads it a dozen times per job
    sched_class: SchedulingClass = field(init=False)

    def __post_init__(self) -> None:
        self.sched_class = self.queue.sched_class

    @property
    def queue_id(self) -> QueueId:
        """The id of the job's queue."""
        return self.queue.id

    @property
    def done(self) -> bool:
        """Whether the job has reached a terminal state."""
        return self.state in TERMINAL_STATES

    @property
    def submitted_at(self) -> float:
        """When the job was admitted (its QUEUED timestamp)."""
        return self.times[JobState.QUEUED]

    @property
    def finished_at(self) -> float | None:
        """When the job reached its terminal state, or ``None`` while live."""
        return self.times.get(self.state) if self.done else None

    @property
    def queue_wait_s(self) -> float | None:
        """From submission until its engine started it (``None`` if it never started)."""
        return None if self.started_at is None else self.started_at - self.submitted_at

    @property
    def run_s(self) -> float | None:
        """From the engine starting it until it ended (``None`` unless it started and ended)."""
        end = self.finished_at
        if self.started_at is None or end is None:
            return None
        return end - self.started_at

    def buffers(self) -> tuple[Buffer, ...]:
        """Every distinct buffer the job touches: the command buffer, then bindings in order."""
        cached = self._buffers
        if cached is None:
            cached = self._buffers = tuple(
                dict.fromkeys([self.command, *(b for b, _ in self.bindings)])
            )
        return cached

    def written_buffers(self) -> tuple[Buffer, ...]:
        """The bound buffers the job may write."""
        return tuple(dict.fromkeys(b for b, use in self.bindings if use & BufferUse.WRITE))

    def add_done_callback(self, callback: DoneCallback) -> None:
        """Run ``callback(job)`` once the job is terminal (at once if it already is).

        Callbacks run on the core thread in registration order; one that raises is logged and
        does not affect the job or other callbacks.
        """
        if self.done:
            self._run_callback(callback)
        else:
            self._callbacks.append(callback)

    def remove_done_callback(self, callback: DoneCallback) -> bool:
        """Forget a callback not yet run; returns whether it was registered."""
        for i, existing in enumerate(self._callbacks):
            if existing is callback:
                del self._callbacks[i]
                return True
        return False

    def _run_callback(self, callback: DoneCallback) -> None:
        try:
            callback(self)
        except Exception:
            _log.exception("done callback %r of job %s failed", callback, self.id)

    def _settle(self) -> None:
        """Run and drop the done callbacks (called once, by the scheduler, when terminal)."""
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            self._run_callback(callback)

    def statistics(self) -> JobInfo:
        """A frozen snapshot of the job."""
        return JobInfo(
            id=self.id,
            context_id=self.context_id,
            queue_id=self.queue.id,
            sched_class=self.queue.sched_class,
            kind=self.kind,
            label=self.label,
            state=self.state,
            submitted_at=self.submitted_at,
            times=tuple(self.times.items()),
            started_at=self.started_at,
            finished_at=self.finished_at,
            queue_wait_s=self.queue_wait_s,
            run_s=self.run_s,
            engine=self.engine,
            deadline=self.deadline,
            error=self.error,
            completion=self.completion,
            discarded=self.discarded,
            context_label=self.context_label,
        )
