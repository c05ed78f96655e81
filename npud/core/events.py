"""The event bus: what changed in core, for the API's Watch and Events streams.

Core publishes an event for every job state change, every context and queue created or
destroyed, and every device state change. Subscribers are plain callbacks run synchronously on
the core thread, in subscription order; they must not block (the API layer copies events into
per-stream asyncio queues). A subscriber that raises is logged and kept: one broken listener
must not stop the scheduler. Publishing with no subscribers costs one attribute test, so the
hot path does not build events nobody reads. A subscriber may name the kinds of event it takes
(``subscribe(cb, kinds=(ContextEvent,))``): job events (four per job) are then only built while
someone takes them (:attr:`EventBus.wants_jobs`).
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass

from npud.core.ids import ContextId, JobId, QueueId
from npud.vocab import DeviceHealth

_log = logging.getLogger(__name__)


class Change(enum.StrEnum):
    """What happened to a context or queue."""

    CREATED = "created"
    DESTROYED = "destroyed"


@dataclass(frozen=True, slots=True)
class JobEvent:
    """A job changed state (``state`` is the new :class:`~npud.vocab.JobState` value)."""

    time: float
    device: str
    context_id: ContextId
    queue_id: QueueId
    job_id: JobId
    state: str
    kind: str
    error_kind: str | None = None
    error_message: str | None = None


@dataclass(frozen=True, slots=True)
class ContextEvent:
    """A context was created or destroyed."""

    time: float
    device: str
    context_id: ContextId
    owner_uid: int
    change: Change
    reason: str = ""
    tenant: str | None = None  # the owner's tenant (see npud.core.owner), None for a user


@dataclass(frozen=True, slots=True)
class QueueEvent:
    """A queue was created or destroyed."""

    time: float
    device: str
    context_id: ContextId
    queue_id: QueueId
    change: Change


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """A device was added (``reason == DEVICE_ADDED``), changed health, or was lost."""

    time: float
    device: str
    health: DeviceHealth
    reason: str = ""


DEVICE_ADDED = "added"
"""The ``reason`` of the :class:`DeviceEvent` published when a device starts being served."""

Event = JobEvent | ContextEvent | QueueEvent | DeviceEvent
Subscriber = Callable[[Event], None]


class Subscription:
    """A live subscription; :meth:`cancel` ends it (idempotent)."""

    __slots__ = ("_bus", "_callback", "kinds")

    def __init__(
        self, bus: EventBus, callback: Subscriber, kinds: tuple[type[Event], ...] | None
    ) -> None:
        self._bus = bus
        self._callback = callback
        self.kinds = kinds

    def cancel(self) -> None:
        """Stop delivering events to this subscriber."""
        self._bus._unsubscribe(self)


class EventBus:
    """Synchronous fan-out of core events to subscribers."""

    __slots__ = ("_job_listeners", "_published", "_subscribers", "wants_jobs")

    def __init__(self) -> None:
        self._subscribers: list[Subscription] = []
        self._published = 0
        self._job_listeners = 0
        # Whether anyone takes job events: a plain attribute, kept by subscribe and cancel,
        # because the scheduler asks four times per job (a property is a call each time).
        self.wants_jobs = False

    @property
    def active(self) -> bool:
        """Whether anyone listens (publishers skip building events otherwise)."""
        return bool(self._subscribers)

    def subscribe(
        self, callback: Subscriber, *, kinds: tuple[type[Event], ...] | None = None
    ) -> Subscription:
        """Deliver every later event (of ``kinds``, default all) to ``callback`` until the
        subscription is cancelled."""
        sub = Subscription(self, callback, kinds)
        self._subscribers.append(sub)
        if kinds is None or JobEvent in kinds:
            self._job_listeners += 1
            self.wants_jobs = True
        return sub

    def _unsubscribe(self, sub: Subscription) -> None:
        for i, existing in enumerate(self._subscribers):
            if existing is sub:
                del self._subscribers[i]
                if existing.kinds is None or JobEvent in existing.kinds:
                    self._job_listeners -= 1
                    self.wants_jobs = self._job_listeners > 0
                return

    def publish(self, event: Event) -> None:
        """Hand ``event`` to every subscriber that takes its kind; a subscriber's exception is
        logged, not raised."""
        self._published += 1
        for sub in tuple(self._subscribers):
            if sub.kinds is not None and not isinstance(event, sub.kinds):
                continue
            try:
                sub._callback(event)
            except Exception:
                _log.exception("event subscriber %r failed on %r", sub._callback, event)

    def statistics(self) -> EventBusStatistics:
        """Subscribers and events published so far."""
        return EventBusStatistics(len(self._subscribers), self._published)


@dataclass(frozen=True, slots=True)
class EventBusStatistics:
    """A snapshot of the bus."""

    subscribers: int
    published: int
