"""The device-loss path: a device that goes away fails its jobs; the scheduler carries on.

The device reports the loss through its loss listener (or core does, when the device's node
disappears); every job of the device, running, READY or waiting, ends FAILED with DeviceLost,
the run queues are emptied, and contexts that were closing are finalised. From then on every
admission is refused with DeviceLost.
"""

from __future__ import annotations

from npud.clock import Clock
from npud.core.context import ContextState
from npud.core.events import DeviceEvent, EventBus
from npud.core.job import JobError
from npud.core.sched.engines import Engines
from npud.core.sched.lifecycle import JobLifecycle
from npud.core.sched.runqueue import RunQueues
from npud.errors import DeviceLost
from npud.vocab import DeviceHealth, JobState


class DeviceLoss:
    """Whether (and why) one device was lost, and what happens to its jobs when it is."""

    def __init__(
        self,
        *,
        device_name: str,
        clock: Clock,
        events: EventBus,
        engines: Engines,
        queues: RunQueues,
        life: JobLifecycle,
    ) -> None:
        self.reason: str | None = None  # why the device was lost; None while it serves
        self._device_name = device_name
        self._clock = clock
        self._events = events
        self._engines = engines
        self._queues = queues
        self._life = life

    def check(self) -> None:
        """Return if the device serves.

        Raises:
            DeviceLost: the device is gone.
        """
        if self.reason is not None:
            raise DeviceLost(f"device {self._device_name} was lost: {self.reason}")

    def lose(self, reason: str) -> None:
        """The device went away: every job of it fails with DeviceLost; the loop carries on.

        A second loss of the same device does nothing. Never raises.
        """
        if self.reason is not None:
            return
        self.reason = reason or "device lost"
        life = self._life
        error = JobError(DeviceLost, f"device {self._device_name} was lost: {self.reason}")
        for engine in self._engines.all:
            for job in list(engine.inflight):
                life.off_device(job, engine, written=())
                life.finish(job, JobState.FAILED, error)
        for ctx in list(life.contexts.values()):
            for job in sorted(ctx.jobs.values(), key=lambda j: -j.seq):
                life.finish(job, JobState.FAILED, error)
        self._queues.clear()
        if self._events.active:
            self._events.publish(
                DeviceEvent(self._clock.now(), self._device_name, DeviceHealth.LOST, self.reason)
            )
        for ctx in list(life.contexts.values()):
            if ctx.state is ContextState.CLOSING and ctx.on_device == 0:
                life.finalize(ctx)
