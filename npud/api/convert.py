"""Core objects and snapshots to npud.v1 messages, and wire enums to core enums.

The API layer only validates, converts and calls core; this module is the converting part.
Every ``*_to_wire`` function reads a core object or its frozen ``statistics()`` snapshot and
builds a message; every ``*_from_wire`` function turns a request field into core's type or
raises :class:`~npud.errors.InvalidArgument` naming the field and the value.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import islice
from typing import TypeVar

from npud.core.buffers import Buffer
from npud.core.context import Context
from npud.core.distribution import Distribution
from npud.core.events import DEVICE_ADDED, DeviceEvent
from npud.core.events import ContextEvent as CoreContextEvent
from npud.core.ids import BufferId
from npud.core.job import Job, JobError
from npud.core.owner import Owner
from npud.core.queue import Queue
from npud.core.residency import ResidencyStatistics
from npud.core.service import Core, DeviceReport
from npud.devices.base import BufferUse, Device
from npud.errors import InvalidArgument
from npud.v1 import (
    buffer_pb2,
    context_pb2,
    device_pb2,
    job_pb2,
    stats_pb2,
    types_pb2,
)
from npud.vocab import (
    BufferUsage,
    DeviceHealth,
    JobState,
    MemoryTier,
    Persistence,
    SchedulingClass,
    TierPreference,
)
from npud.vocab.wire import (
    CLASS,
    HEALTH,
    PERSISTENCE,
    PREFERENCE,
    STATE,
    TIER,
    USAGE,
    UnknownWireValue,
    WireEnum,
)

from .status import STATUS_OF, code_number

_E = TypeVar("_E", bound=enum.Enum)
_W = TypeVar("_W", bound=int)

# BufferUse is the device contract's flag (READWRITE is READ | WRITE), not a vocabulary enum:
# its pairing with the wire's BufferAccess is spelled out here, where only the daemon needs it.
ACCESS: WireEnum[BufferUse, types_pb2.BufferAccess.ValueType] = WireEnum.explicit(
    types_pb2.BufferAccess,
    {
        BufferUse.READ: types_pb2.BUFFER_ACCESS_READ,
        BufferUse.WRITE: types_pb2.BUFFER_ACCESS_WRITE,
        BufferUse.READWRITE: types_pb2.BUFFER_ACCESS_READ_WRITE,
    },
    "BUFFER_ACCESS_",
)


def _required(
    converter: WireEnum[_E, _W], value: int, field: str, expected: str | None = None
) -> _E:
    """The member ``value`` names; UNSPECIFIED and unknown numbers are the caller's mistake.

    Raises:
        InvalidArgument: UNSPECIFIED or a number the enum does not have, naming ``field`` (and
            what was ``expected``, where given).
    """
    try:
        member = converter.from_wire(value)
    except UnknownWireValue:
        member = None
    if member is None:
        if expected is not None:
            raise InvalidArgument(f"{field}: {expected}, got {value}")
        raise InvalidArgument(f"{field}: {value} is not a valid {converter.name}")
    return member


def _defaulted(converter: WireEnum[_E, _W], value: int, field: str, default: _E) -> _E:
    """The member ``value`` names, ``default`` for UNSPECIFIED.

    Raises:
        InvalidArgument: a number the enum does not have, naming ``field``.
    """
    try:
        return converter.from_wire_or(value, default)
    except UnknownWireValue as exc:
        raise InvalidArgument(f"{field}: {exc}") from None


def class_from_wire(
    value: int, field: str, *, default: SchedulingClass | None
) -> SchedulingClass | None:
    """A wire SchedulingClass (UNSPECIFIED -> ``default``).

    Raises:
        InvalidArgument: an unknown value.
    """
    if value == CLASS.unspecified:
        return default
    return _required(CLASS, value, field)


def state_from_wire(value: int) -> JobState:
    """A wire JobState. Raises InvalidArgument for UNSPECIFIED or an unknown value."""
    return _required(STATE, value, "states")


def usage_from_wire(value: int) -> BufferUsage:
    """A wire BufferUsage (UNSPECIFIED -> SCRATCH). Raises InvalidArgument."""
    return _defaulted(USAGE, value, "usage", BufferUsage.SCRATCH)


def persistence_from_wire(value: int) -> Persistence:
    """A wire Persistence (UNSPECIFIED -> EPHEMERAL). Raises InvalidArgument."""
    return _defaulted(PERSISTENCE, value, "persistence", Persistence.EPHEMERAL)


def preference_from_wire(value: int) -> TierPreference:
    """A wire TierPreference (UNSPECIFIED -> ANY). Raises InvalidArgument."""
    return _defaulted(PREFERENCE, value, "tier_preference", TierPreference.ANY)


def access_from_wire(value: int, field: str) -> BufferUse:
    """A wire BufferAccess. Raises InvalidArgument for UNSPECIFIED or an unknown value."""
    return _required(ACCESS, value, field, "access must be READ, WRITE or READ_WRITE")


def bindings_from_wire(
    bindings: Iterable[job_pb2.Binding], where: str
) -> tuple[tuple[BufferId, BufferUse], ...]:
    """A job's wire bindings as (buffer, use) pairs, in slot order.

    Raises:
        InvalidArgument: a binding's access is UNSPECIFIED or unknown (naming ``where`` and
            the binding's index).
    """
    convert = ACCESS.from_wire
    pairs = []
    for i, b in enumerate(bindings):
        try:
            use = convert(b.access)
        except UnknownWireValue:
            use = None
        if use is None:  # the field name is built only for the error
            access_from_wire(b.access, f"{where}.bindings[{i}]")
            raise AssertionError("access_from_wire accepted what ACCESS refused")  # unreachable
        pairs.append((BufferId(b.buffer_id), use))
    return tuple(pairs)


def owner_to_wire(owner: Owner, *, admin: bool) -> context_pb2.Owner:
    """An Owner message."""
    return context_pb2.Owner(
        uid=owner.uid,
        gid=owner.gid,
        pid=owner.pid,
        name=owner.name or "",
        admin=admin,
        tenant=owner.tenant or "",
    )


def distribution_to_wire(d: Distribution) -> types_pb2.Distribution:
    """A Distribution message."""
    return types_pb2.Distribution(
        count=d.count, p50_s=d.p50_s, p99_s=d.p99_s, mean_s=d.mean_s, max_s=d.max_s
    )


def state_counts_to_wire(ended: Mapping[str, int]) -> list[types_pb2.StateCount]:
    """StateCount messages for a ``final state name -> count`` table, in state order."""
    return [
        types_pb2.StateCount(state=STATE.to_wire(JobState(name)), count=count)
        for name, count in sorted(ended.items())
    ]


def device_change_to_wire(event: DeviceEvent) -> device_pb2.DeviceChange.ValueType:
    """What a device event means to a watcher: REMOVED when lost, ADDED when the device starts
    being served (hot-plugged, or back after recovery), CHANGED otherwise."""
    if event.health is DeviceHealth.LOST:
        return device_pb2.DEVICE_CHANGE_REMOVED
    if event.reason == DEVICE_ADDED:
        return device_pb2.DEVICE_CHANGE_ADDED
    return device_pb2.DEVICE_CHANGE_CHANGED


def device_to_wire(
    device: Device, health: DeviceHealth, report: DeviceReport | None = None, *, node: str = ""
) -> device_pb2.Device:
    """A Device message from the device's capabilities (and, if given, its usage); ``node``
    is the device node it was opened on ("" for the simulated NPU)."""
    caps = device.capabilities
    util = {}
    used: Mapping[MemoryTier, int] = {}
    budget: Mapping[MemoryTier, int] = {}
    if report is not None:
        util = {e.index: e.recent_utilisation for e in report.scheduler.engines}
        used = {t.tier: t.used_bytes for t in report.residency.tiers}
        budget = {t.tier: t.budget_bytes for t in report.residency.tiers}
    return device_pb2.Device(
        name=device.name,
        driver=caps.driver,
        driver_version=".".join(str(v) for v in caps.driver_version),
        description=caps.description,
        board=caps.board,
        engines=[
            device_pb2.Engine(index=e.index, name=e.name, utilisation=util.get(e.index, 0.0))
            for e in caps.engines
        ],
        tiers=[
            device_pb2.TierMemory(
                tier=TIER.to_wire(t.tier),
                capacity_bytes=t.capacity_bytes,
                used_bytes=used.get(t.tier, 0),
                bandwidth_bytes_per_s=t.bandwidth_bytes_per_s or 0.0,
                budget_bytes=budget.get(t.tier, t.capacity_bytes),
            )
            for t in caps.tiers
        ],
        native_priorities=caps.native_priorities,
        has_syncobj=caps.has_syncobj,
        has_hw_contexts=caps.has_hw_contexts,
        max_hw_contexts=caps.max_hw_contexts,
        has_preemption=caps.has_preemption,
        simulated=caps.simulated,
        health=HEALTH.to_wire(health),
        node=node,
    )


def context_to_wire(core: Core, ctx: Context, *, admin: bool) -> context_pb2.Context:
    """A Context message with its current usage."""
    stats = ctx.statistics()
    residency = core.device(ctx.device).residency
    quotas = stats.quotas
    return context_pb2.Context(
        context_id=stats.id,
        device=stats.device,
        owner=owner_to_wire(stats.owner, admin=admin),
        default_class=CLASS.to_wire(stats.default_class),
        weight=stats.weight,
        quotas=context_pb2.Quotas(
            memory_bytes=quotas.memory_bytes or 0,
            max_queued_jobs=quotas.max_queued_jobs,
            max_queues=quotas.max_queues,
        ),
        label=stats.label,
        queues=stats.queues,
        queued_jobs=stats.live_jobs - stats.running_jobs,
        running_jobs=stats.running_jobs,
        memory_bytes=residency.context_usage(ctx.id),
        buffers=stats.buffers,
        age_s=max(0.0, core.now() - stats.created_at),
        submitted=stats.submitted,
        ended=state_counts_to_wire(stats.ended),
        wait=distribution_to_wire(stats.queue_wait),
        run=distribution_to_wire(stats.run),
        device_time_s=stats.device_time_s,
    )


def buffer_to_wire(buf: Buffer, ctx_id: str) -> buffer_pb2.Buffer:
    """A Buffer message as context ``ctx_id`` sees it."""
    tier = buf.resident_tier
    return buffer_pb2.Buffer(
        buffer_id=buf.id,
        context_id=ctx_id,
        size=buf.size,
        usage=USAGE.to_wire(buf.usage),
        persistence=PERSISTENCE.to_wire(buf.persistence),
        tier_preference=PREFERENCE.to_wire(buf.tier_preference),
        key=buf.key or "",
        resident_tier=TIER.to_wire(tier),
        pins=buf.pins,
        users=len(buf.users),
        valid=buf.valid,
        sealed=bool(getattr(buf, "sealed", False)),
    )


def queue_to_wire(queue: Queue) -> job_pb2.Queue:
    """A Queue message."""
    s = queue.statistics()
    return job_pb2.Queue(
        queue_id=s.id,
        context_id=s.context_id,
        scheduling_class=CLASS.to_wire(s.sched_class),
        priority=s.priority,
        depth_limit=s.depth_limit,
        in_order=s.in_order,
        label=s.label,
        depth=s.depth,
        submitted=s.submitted,
        ended=state_counts_to_wire(s.ended),
        wait=distribution_to_wire(s.queue_wait),
        run=distribution_to_wire(s.run),
    )


def error_to_wire(error: JobError) -> types_pb2.ErrorInfo:
    """An ErrorInfo message for a job's error."""
    code = STATUS_OF.get(error.type)
    if code is None:
        for cls in error.type.__mro__:
            if cls in STATUS_OF:
                code = STATUS_OF[cls]
                break
    number = code_number(code) if code is not None else 13
    return types_pb2.ErrorInfo(code=number, kind=error.kind, message=error.message)


_STATE_NUMBER = {s: STATE.to_wire(s) for s in JobState}
_CLASS_NUMBER = {c: CLASS.to_wire(c) for c in SchedulingClass}


@dataclass(frozen=True, slots=True)
class JobWirePrefix:
    """What :func:`job_prefix_to_wire` wrote ahead into a Job message: the times of the
    transitions it stamped, in order, and the wall-clock offset it placed them with."""

    stamped: tuple[float, ...]
    wall_offset: float


def job_prefix_to_wire(job: Job, now: float, into: job_pb2.Job) -> JobWirePrefix:
    """Fill ``into`` with what a job's answer will say whatever happens next: its ids, kind,
    labels and class, and the transitions it has made by ``now``. :func:`job_to_wire` with
    the returned prefix completes the message when the job has ended.

    Why ahead: a submit stream answers every job with this message. Written while the job
    runs on the device (the daemon has nothing else to do then), only the end of the job is
    left to write between the device's reply and the response.
    """
    _fixed(job, into)
    wall_offset = time.time() - now
    _stamp(into, job.times.items(), wall_offset)
    return JobWirePrefix(tuple(job.times.values()), wall_offset)


def _fixed(job: Job, msg: job_pb2.Job) -> None:
    """The fields of a job's message that never change once it is submitted."""
    queue = job.queue
    msg.job_id = job.id
    msg.context_id = job.context_id
    msg.queue_id = queue.id
    msg.kind = job.kind
    msg.label = job.label
    msg.scheduling_class = _CLASS_NUMBER[queue.sched_class]
    msg.context_label = job.context_label


def _stamp(
    msg: job_pb2.Job, transitions: Iterable[tuple[JobState, float]], wall_offset: float
) -> None:
    # core's clock is monotonic; each transition is placed on the wall clock by ``wall_offset``
    add = msg.transitions.add
    for entered, at in transitions:
        stamp = add(state=_STATE_NUMBER[entered]).time
        stamp.seconds, stamp.nanos = divmod(round((wall_offset + at) * 1e9), 1_000_000_000)


def job_to_wire(
    job: Job,
    now: float,
    into: job_pb2.Job | None = None,
    *,
    prefix: JobWirePrefix | None = None,
) -> job_pb2.Job:
    """A Job message for a live or ended job; times still running are measured up to ``now``.

    Filled into ``into`` (a field of a response being built) when given, else into a new
    message, which is returned either way. With ``prefix``, ``into`` already holds what
    :func:`job_prefix_to_wire` wrote and only the rest is written (all the transitions again
    if the job has re-entered a state since, as a job recalled from its engine does).

    Why it reads the job field by field: every job a submit stream runs is answered with
    this message, so it is on the per-job path; building it straight from the job (no
    :class:`~npud.core.job.JobInfo` snapshot, enum numbers from a table, timestamps set as
    seconds and nanoseconds) costs about a third of going through the snapshot.
    """
    msg = job_pb2.Job() if into is None else into
    times = job.times
    submitted = times[JobState.QUEUED]
    state = job.state
    end = times.get(state) if state.terminal else None
    started = job.started_at
    if started is None:
        wait = (now if end is None else end) - submitted
        run = 0.0
    else:
        wait = started - submitted
        run = (now if end is None else end) - started
    age = now - submitted
    msg.state = _STATE_NUMBER[state]
    msg.queue_wait_s = wait if wait > 0.0 else 0.0
    msg.run_s = run if run > 0.0 else 0.0
    msg.engine = -1 if job.engine is None else job.engine
    msg.age_s = age if age > 0.0 else 0.0
    if prefix is None:
        _fixed(job, msg)
        _stamp(msg, times.items(), time.time() - now)
    else:
        done = len(prefix.stamped)
        if tuple(islice(times.values(), done)) != prefix.stamped:
            del msg.transitions[:]
            done = 0
        _stamp(msg, islice(times.items(), done, None), prefix.wall_offset)
    completion = job.completion
    if completion is not None:
        msg.modelled_s = completion.modelled_s
        msg.bytes_read = completion.bytes_read
        msg.bytes_written = completion.bytes_written
    if job.error is not None:
        msg.error.CopyFrom(error_to_wire(job.error))
    return msg


def residency_to_wire(res: ResidencyStatistics) -> stats_pb2.ResidencyStats:
    """A ResidencyStats message: every counter of core's residency snapshot, with the bytes
    moved per tier and the bytes uploaded per buffer usage."""
    by_usage = res.uploaded_by_usage
    tiers = [t.tier for t in res.tiers]
    return stats_pb2.ResidencyStats(
        buffers=res.buffers,
        persistent_buffers=res.persistent,
        warm_buffers=res.warm_pool_buffers,
        evictions=res.evictions,
        spilled_bytes=sum(res.spilled_bytes.values()),
        restored_bytes=sum(res.restored_bytes.values()),
        uploaded_bytes=sum(res.uploaded_bytes.values()),
        uploaded_weight_bytes=by_usage.get(BufferUsage.WEIGHTS, 0),
        attaches=res.attaches,
        hits=res.hits,
        misses=res.misses,
        holds=res.holds,
        drops=res.drops,
        spills=res.spills,
        forgotten=res.forgotten,
        restores=res.restores,
        promotions=res.promotions,
        demotions=res.demotions,
        dedups=res.dedups,
        quota_refusals=res.quota_refusals,
        warm_bytes=res.warm_pool_bytes,
        dormant_registrations=res.dormant_registrations,
        recycled=res.recycled,
        traffic=[
            stats_pb2.TierTraffic(
                tier=TIER.to_wire(tier),
                uploaded_bytes=res.uploaded_bytes.get(tier, 0),
                spilled_bytes=res.spilled_bytes.get(tier, 0),
                restored_bytes=res.restored_bytes.get(tier, 0),
                migrated_bytes=res.migrated_bytes.get(tier, 0),
            )
            for tier in tiers
        ],
        uploaded_by_usage=[
            stats_pb2.UsageBytes(usage=USAGE.to_wire(usage), bytes=by_usage.get(usage, 0))
            for usage in USAGE.members()
        ],
    )


def device_stats_to_wire(report: DeviceReport, health: DeviceHealth) -> stats_pb2.DeviceStats:
    """A DeviceStats message from core's device report."""
    sched = report.scheduler
    res = report.residency
    caps = report.capabilities
    engine_names = {e.index: e.name for e in caps.engines}
    return stats_pb2.DeviceStats(
        device=report.name,
        simulated=caps.simulated,
        health=HEALTH.to_wire(health),
        policy=str(sched.policy),
        contexts=report.contexts,
        queues=report.queues,
        classes=[
            stats_pb2.ClassStats(
                scheduling_class=CLASS.to_wire(c.sched_class),
                queued=c.queued + c.ready,
                running=c.running,
                wait=distribution_to_wire(c.queue_wait),
                run=distribution_to_wire(c.run),
                share=c.share,
            )
            for c in sched.classes
        ],
        engines=[
            device_pb2.Engine(
                index=e.index,
                name=engine_names.get(e.index, str(e.index)),
                utilisation=e.recent_utilisation,
            )
            for e in sched.engines
        ],
        memory=[
            device_pb2.TierMemory(
                tier=TIER.to_wire(t.tier),
                capacity_bytes=t.capacity_bytes,
                used_bytes=t.used_bytes,
                bandwidth_bytes_per_s=caps.tier(t.tier).bandwidth_bytes_per_s or 0.0,
                budget_bytes=t.budget_bytes,
            )
            for t in res.tiers
        ],
        states=state_counts_to_wire(sched.ended),
        residency=residency_to_wire(res),
        submitted=sched.submitted,
        device_resets=sched.watchdog_resets,
    )


def context_event_to_wire(event: CoreContextEvent) -> stats_pb2.ContextEvent:
    """A ContextEvent message (without a snapshot: the context may be gone)."""
    return stats_pb2.ContextEvent(
        change=stats_pb2.CONTEXT_CHANGE_CREATED
        if event.change == "created"
        else stats_pb2.CONTEXT_CHANGE_DESTROYED,
        context_id=event.context_id,
        device=event.device,
        reason=event.reason,
    )
