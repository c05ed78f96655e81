"""Core's facade for the API layer: devices, contexts, queues, buffers, jobs, statistics, events.

:class:`Core` is the one object the daemon builds and the gRPC servicers call. Every call
takes the caller's :class:`~npud.core.owner.Owner` and checks ownership. Core is
single-threaded: call it only from the core thread (the daemon's event loop); it never blocks.
"""

from __future__ import annotations

from dataclasses import dataclass

from npud.core.context import ContextState, ContextStatistics
from npud.core.events import (
    EventBusStatistics,
)
from npud.core.ids import (
    ContextId,
)
from npud.core.owner import Owner
from npud.core.residency import ResidencyStatistics
from npud.core.sched import SchedulerStatistics
from npud.core.service.jobs import CoreJobs
from npud.devices.base import Capabilities, DeviceStatistics
from npud.errors import (
    NotFound,
)
from npud.vocab import (
    DeviceHealth,
)


@dataclass(frozen=True, slots=True)
class DeviceReport:
    """A frozen snapshot of one device and everything core runs on it."""

    name: str
    capabilities: Capabilities
    device: DeviceStatistics
    scheduler: SchedulerStatistics
    residency: ResidencyStatistics
    contexts: int
    queues: int


@dataclass(frozen=True, slots=True)
class CoreStatistics:
    """A frozen snapshot of core: every device, context counts, the event bus."""

    time: float
    devices: tuple[DeviceReport, ...]
    contexts: int
    closing_contexts: int
    live_jobs: int
    events: EventBusStatistics

    def device(self, name: str) -> DeviceReport:
        """The report of one device.

        Raises:
            NotFound: no such device.
        """
        for report in self.devices:
            if report.name == name:
                return report
        raise NotFound(f"no device {name!r}")


class Core(CoreJobs):
    """The facade the API layer calls. See :mod:`npud.core.service`."""

    def context_statistics(self, owner: Owner, ctx_id: ContextId) -> ContextStatistics:
        """A frozen snapshot of one context, with its memory charge from residency.

        Raises:
            NotFound: no such context for ``owner``.
        """
        return self._context(owner, ctx_id).statistics()

    def device_report(self, name: str | None = None) -> DeviceReport:
        """A frozen snapshot of one device and what core runs on it.

        Raises:
            NotFound: no such device.
        """
        entry = self.device(name)
        return DeviceReport(
            name=entry.name,
            capabilities=entry.device.capabilities,
            device=entry.device.statistics(),
            scheduler=entry.scheduler.statistics(),
            residency=entry.residency.statistics(),
            contexts=len(entry.contexts),
            queues=sum(len(self._contexts[c].queues) for c in entry.contexts),
        )

    def statistics(self) -> CoreStatistics:
        """A frozen snapshot of everything core runs."""
        return CoreStatistics(
            time=self.now(),
            devices=tuple(self.device_report(name) for name in self._devices),
            contexts=len(self._contexts),
            closing_contexts=sum(
                1 for c in self._contexts.values() if c.state is ContextState.CLOSING
            ),
            live_jobs=sum(len(c.jobs) for c in self._contexts.values()),
            events=self.events.statistics(),
        )

    def device_health(self, name: str) -> DeviceHealth:
        """The health of a device as its scheduler sees it (LOST once it is gone).

        Raises:
            NotFound: no such device.
        """
        entry = self.device(name)
        if entry.scheduler.lost is not None:
            return DeviceHealth.LOST
        return entry.device.health()
