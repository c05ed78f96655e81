"""Execution contexts: a client's workspace on one device.

A context has an owner (:class:`~npud.core.owner.Owner`), a device, quotas, a default
scheduling class and a fair-share weight. It owns its queues, its jobs (live ones, and a bounded
history of ended ones) and its references to buffers. Nothing outlives it: closing a context
cancels what is queued, lets running jobs finish within a grace period (then aborts them), and
releases every buffer reference through the residency manager. After the close completes, no
statistic of the scheduler, the residency manager or core mentions the context.
"""

from __future__ import annotations

import enum
from collections import deque
from dataclasses import dataclass, field

from npud.core.buffers import Buffer
from npud.core.distribution import Distribution, RecentSamples
from npud.core.ids import BufferId, ContextId, JobId, QueueId
from npud.core.job import Job
from npud.core.owner import Owner
from npud.core.queue import Queue
from npud.vocab import SchedulingClass


class ContextState(enum.StrEnum):
    """A context's life: OPEN, then CLOSING while running jobs drain, then CLOSED."""

    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


@dataclass(frozen=True, slots=True)
class ContextQuotas:
    """Per-context limits. ``memory_bytes=None`` means only the device's capacity limits it."""

    max_queued_jobs: int = 4096
    max_queues: int = 64
    memory_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class ContextStatistics:
    """A frozen snapshot of one context."""

    id: ContextId
    owner: Owner
    device: str
    label: str
    state: ContextState
    default_class: SchedulingClass
    weight: float
    quotas: ContextQuotas
    created_at: float
    queues: int
    buffers: int
    live_jobs: int
    running_jobs: int
    submitted: int
    ended: dict[str, int]
    device_time_s: float
    queue_wait: Distribution
    run: Distribution


@dataclass(slots=True, eq=False)
class Context:
    """One execution context (an identity object)."""

    id: ContextId
    owner: Owner
    device: str
    quotas: ContextQuotas = field(default_factory=ContextQuotas)
    default_class: SchedulingClass = SchedulingClass.THROUGHPUT
    weight: float = 1.0
    label: str = ""
    created_at: float = 0.0
    state: ContextState = ContextState.OPEN
    queues: dict[QueueId, Queue] = field(default_factory=dict)
    jobs: dict[JobId, Job] = field(default_factory=dict)  # live (not yet ended)
    history: deque[Job] = field(default_factory=deque)  # ended, newest last, bounded
    buffers: dict[BufferId, Buffer] = field(default_factory=dict)  # references held
    buffer_jobs: dict[BufferId, int] = field(default_factory=dict)  # live jobs binding each
    on_device: int = 0  # jobs handed to the device whose completion has not arrived
    submitted: int = 0
    ended: dict[str, int] = field(default_factory=dict)
    device_time_s: float = 0.0
    waits: RecentSamples = field(default_factory=lambda: RecentSamples(256))
    runs: RecentSamples = field(default_factory=lambda: RecentSamples(256))

    @property
    def open(self) -> bool:
        """Whether the context accepts new work."""
        return self.state is ContextState.OPEN

    def statistics(self) -> ContextStatistics:
        """A frozen snapshot of the context."""
        return ContextStatistics(
            id=self.id,
            owner=self.owner,
            device=self.device,
            label=self.label,
            state=self.state,
            default_class=self.default_class,
            weight=self.weight,
            quotas=self.quotas,
            created_at=self.created_at,
            queues=len(self.queues),
            buffers=len(self.buffers),
            live_jobs=len(self.jobs),
            running_jobs=self.on_device,
            submitted=self.submitted,
            ended=dict(self.ended),
            device_time_s=self.device_time_s,
            queue_wait=self.waits.snapshot(),
            run=self.runs.snapshot(),
        )
