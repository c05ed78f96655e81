"""The scheduler: one per device, deciding which READY job runs next, where, and when.

The scheduler is callback driven on the core thread: a submit, a device completion, a cancel
or a timer runs a *pump* that dispatches as many READY jobs as the engines' credits allow.
Time and timers come only from :class:`npud.clock.Clock`, so the same code runs on real time in
the daemon and on a :class:`~npud.clock.VirtualClock` in tests.

Policy ``npud`` (see :mod:`npud.core.policy`):

* LATENCY first, earliest deadline first, then queue priority, then arrival;
* THROUGHPUT shared between contexts by weight: each context has a virtual time that advances
  by the device time its jobs use divided by its weight; the context with the least virtual
  time goes next (stride scheduling, as in the fair DRM scheduler);
* BACKGROUND only when nothing else is ready;
* a minimum share per class over a sliding window: a class below its share takes the next slot;
* per-engine credits that keep the hardware queue shallow while latency work exists;
* a time slice for throughput jobs, deadline admission, a watchdog per running job.

Policy ``fifo``: arrival order over every class with a deep hardware queue: the raw driver.

The package follows the DRM scheduler's parts:

* :mod:`~npud.core.sched.scheduler`: the facade core drives (contexts, submit, cancel);
* :mod:`~npud.core.sched.admission`: whether a batch may enter, and the durations it is held to;
* :mod:`~npud.core.sched.lifecycle`: every state change of a job, its accounting and events;
* :mod:`~npud.core.sched.runqueue`, :mod:`~npud.core.sched.ranked`,
  :mod:`~npud.core.sched.fairshare`: the typed run queues, one per policy;
* :mod:`~npud.core.sched.shares`: the class served next, and minimum shares;
* :mod:`~npud.core.sched.engines`: credits, recalls, the choice of engine, utilisation;
* :mod:`~npud.core.sched.dispatch`, :mod:`~npud.core.sched.completion`,
  :mod:`~npud.core.sched.watchdog`, :mod:`~npud.core.sched.loss`: the paths a job takes;
* :mod:`~npud.core.sched.statistics`: the counters and the frozen snapshots.

Ownership: the scheduler owns the READY structures and the in-flight lists of its engines; the
jobs themselves belong to their contexts. The scheduler never raises out of a device callback:
a job's failure travels on the job.
"""

from npud.core.sched.port import ResidencyPort
from npud.core.sched.scheduler import Scheduler
from npud.core.sched.statistics import (
    ClassStatistics,
    EngineStatistics,
    SchedulerStatistics,
)

__all__ = [
    "ClassStatistics",
    "EngineStatistics",
    "ResidencyPort",
    "Scheduler",
    "SchedulerStatistics",
]
