"""The watchdog path: a job that runs past its timeout ends TIMED_OUT and its engine is reset.

The watchdog of a job is armed when the job starts, that is when it reaches the head of its
engine's FIFO (:meth:`Watchdog.start`), and cancelled when it leaves the device.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from functools import partial

from npud.clock import Clock
from npud.core.events import DeviceEvent, EventBus
from npud.core.job import Job, JobError
from npud.core.policy import SchedulerPolicy
from npud.core.sched.engines import Engine, Engines
from npud.core.sched.lifecycle import JobLifecycle
from npud.core.sched.loss import DeviceLoss
from npud.core.sched.statistics import Ledger
from npud.devices.base import Device
from npud.errors import DeviceLost, JobTimedOut, NpudError
from npud.vocab import DeviceHealth, JobState

_log = logging.getLogger(__name__)

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


class Watchdog:
    """The per-job watchdogs of one device's engines."""

    def __init__(
        self,
        *,
        device: Device,
        clock: Clock,
        policy: SchedulerPolicy,
        events: EventBus,
        engines: Engines,
        life: JobLifecycle,
        loss: DeviceLoss,
        ledger: Ledger,
        kick: Callable[[], None],
    ) -> None:
        """``kick`` retries held jobs and dispatches (after a reset freed an engine)."""
        self._device = device
        self._clock = clock
        self._policy = policy
        self._events = events
        self._engines = engines
        self._life = life
        self._loss = loss
        self._ledger = ledger
        self._kick = kick

    def timeout_of(self, job: Job) -> float:
        """The watchdog timeout of ``job``: its own, else its class's. Core admits only finite
        positive timeouts; one that is not (a job built around core) gets the class's, because
        a NaN on the clock's timer heap would break its order for every job."""
        own = job.timeout_s
        if own is not None and math.isfinite(own) and own > 0:
            return own
        return self._policy.timeout_for(job.sched_class)

    def start(self, job: Job, engine: Engine) -> None:
        """``job`` now heads ``engine``'s FIFO, so the engine runs it: stamp it, arm its timer."""
        now = self._clock.now()
        engine.head_since = now
        if not job.done:
            job.started_at = now
        timeout = self.timeout_of(job)
        job.watchdog = self._clock.call_at(now + timeout, partial(self._fire, job))

    def _fire(self, job: Job) -> None:
        job.watchdog = None
        if not job.on_device or job.engine is None:
            return
        engine = self._engines[job.engine]
        timeout = self.timeout_of(job)
        reason = f"job {job.id} ran past its {timeout:.3f} s timeout"
        if not job.done:
            self._life.finish(
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
        self._ledger.resets += 1
        if self._events.active:
            self._events.publish(
                DeviceEvent(self._clock.now(), self._device.name, DeviceHealth.RESETTING, reason)
            )
        try:
            self._device.reset_engine(engine.index, reason)
        except NpudError as err:
            if isinstance(err, DeviceLost):
                self._loss.lose(str(err))
            else:
                _log.exception("reset of engine %d failed", engine.index)
        if self._events.active and self._loss.reason is None:
            self._events.publish(
                DeviceEvent(self._clock.now(), self._device.name, DeviceHealth.OK, "reset done")
            )
        self._kick()
