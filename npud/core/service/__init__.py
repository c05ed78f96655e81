"""Core's facade for the API layer: devices, contexts, queues, buffers, jobs, statistics, events.

:class:`Core` is the one object the daemon builds and the gRPC servicers call. It holds the
device registry (name -> device, scheduler, residency manager), the contexts by id, and the
event bus. Every call takes the caller's :class:`~npud.core.owner.Owner` and checks ownership:
an id belonging to another user is reported as :class:`~npud.errors.NotFound` (its existence
does not leak) unless the caller is an admin. Core is single-threaded: call it only from the
core thread (the daemon's event loop); it never blocks.

Typical use from the API layer::

    ctx = core.create_context(owner, device="sim0")
    q = core.create_queue(owner, ctx.id, sched_class=SchedulingClass.LATENCY)
    cmd = core.create_buffer(owner, ctx.id, len(stream), usage=BufferUsage.COMMAND)
    core.write_buffer(owner, ctx.id, cmd.id, 0, stream)
    [job] = core.submit(owner, ctx.id, [JobSpec(q.id, cmd.id, kind="decode")])
    job.add_done_callback(lambda j: ...)  # or core.wait(owner, ctx.id, job.id, callback)

The facade is built in parts, each its own module: :mod:`~npud.core.service.base` (state and
lookups), :mod:`~npud.core.service.contexts` (contexts and queues),
:mod:`~npud.core.service.devices`, :mod:`~npud.core.service.buffers`,
:mod:`~npud.core.service.jobs` and :mod:`~npud.core.service.facade` (statistics, and
:class:`Core` itself).
"""

from npud.core.service.base import CoreLimits, DeviceEntry
from npud.core.service.facade import Core, CoreStatistics, DeviceReport
from npud.core.service.jobs import JobSpec

__all__ = ["Core", "CoreLimits", "CoreStatistics", "DeviceEntry", "DeviceReport", "JobSpec"]
