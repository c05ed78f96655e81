"""Typed results of the client library: frozen dataclasses and enums, never raw messages.

Every wire message a user sees is converted here into a value object (``@dataclass(frozen=True,
slots=True)``) with Python enums; requests are built from the same enums. Field names follow the
proto field names, so ``npuctl -o json`` and these objects read alike. Durations are seconds
(``float``), sizes bytes (``int``).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Final

from google.protobuf.timestamp_pb2 import Timestamp

from npud.v1 import buffer_pb2, context_pb2, device_pb2, job_pb2, types_pb2
from npud.vocab import (
    BufferUsage,
    DeviceHealth,
    JobState,
    MemoryTier,
    Persistence,
    SchedulingClass,
    TierPreference,
)
from npud.vocab.wire import CLASS, HEALTH, PERSISTENCE, PREFERENCE, STATE, TIER, USAGE, WireEnum


class Access(enum.StrEnum):
    """How a job uses a bound buffer."""

    READ = "read"
    WRITE = "write"
    READ_WRITE = "read_write"


ACCESS: WireEnum[Access, types_pb2.BufferAccess.ValueType] = WireEnum.pair(
    Access, types_pb2.BufferAccess, "BUFFER_ACCESS_"
)


@dataclass(frozen=True, slots=True)
class Distribution:
    """Recent durations in seconds: count, p50, p99, mean, max."""

    count: int = 0
    p50_s: float = 0.0
    p99_s: float = 0.0
    mean_s: float = 0.0
    max_s: float = 0.0

    @classmethod
    def from_wire(cls, msg: types_pb2.Distribution) -> Distribution:
        """Convert a wire Distribution."""
        return cls(msg.count, msg.p50_s, msg.p99_s, msg.mean_s, msg.max_s)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _utc(stamp: Timestamp) -> datetime:
    """A wire Timestamp as an aware UTC datetime (to the microsecond, as ``ToDatetime``; a
    third cheaper, and a submit stream converts four per job)."""
    return _EPOCH + timedelta(seconds=stamp.seconds, microseconds=stamp.nanos // 1000)


def _state(value: int) -> JobState:
    """A wire JobState; a daemon never sends UNSPECIFIED, and a job it names is at least QUEUED.

    Raises:
        UnknownWireValue: a state this client does not know (a newer daemon).
    """
    member = _STATE_OF.get(value)  # the common case, without the checks' calls
    return member if member is not None else STATE.from_wire_or(value, JobState.QUEUED)


_STATE_OF: dict[int, JobState] = {int(STATE.to_wire(s)): s for s in STATE.members()}


def state_counts_from_wire(counts: Iterable[types_pb2.StateCount]) -> dict[JobState, int]:
    """A ``final state -> jobs`` table from StateCount messages."""
    return {_state(c.state): c.count for c in counts}


@dataclass(frozen=True, slots=True)
class JobError:
    """Why a job did not complete: the npud.errors class name, the status code and a message."""

    kind: str
    code: int
    message: str

    @classmethod
    def from_wire(cls, msg: types_pb2.ErrorInfo) -> JobError:
        """Convert a wire ErrorInfo."""
        return cls(kind=msg.kind, code=msg.code, message=msg.message)


@dataclass(frozen=True, slots=True)
class Engine:
    """One execution unit of a device."""

    index: int
    name: str
    utilisation: float = 0.0


@dataclass(frozen=True, slots=True)
class TierMemory:
    """One memory tier of a device (capacity 0: the device has none)."""

    tier: MemoryTier | None
    capacity_bytes: int
    used_bytes: int
    bandwidth_bytes_per_s: float
    budget_bytes: int = 0  # what npud lets itself hold there (default: the capacity)


def engines_from_wire(items: Iterable[device_pb2.Engine]) -> tuple[Engine, ...]:
    """Engine values from wire Engine messages."""
    return tuple(Engine(e.index, e.name, e.utilisation) for e in items)


def tiers_from_wire(items: Iterable[device_pb2.TierMemory]) -> tuple[TierMemory, ...]:
    """TierMemory values from wire TierMemory messages."""
    return tuple(
        TierMemory(
            TIER.from_wire(t.tier),
            t.capacity_bytes,
            t.used_bytes,
            t.bandwidth_bytes_per_s,
            t.budget_bytes,
        )
        for t in items
    )


@dataclass(frozen=True, slots=True)
class Device:
    """One NPU the daemon owns (``simulated`` is True for the simulated NPU)."""

    name: str
    driver: str
    driver_version: str
    description: str
    board: str
    engines: tuple[Engine, ...]
    tiers: tuple[TierMemory, ...]
    native_priorities: int
    has_syncobj: bool
    has_hw_contexts: bool
    max_hw_contexts: int
    has_preemption: bool
    simulated: bool
    health: DeviceHealth | None
    node: str

    @classmethod
    def from_wire(cls, msg: device_pb2.Device) -> Device:
        """Convert a wire Device."""
        return cls(
            name=msg.name,
            driver=msg.driver,
            driver_version=msg.driver_version,
            description=msg.description,
            board=msg.board,
            engines=engines_from_wire(msg.engines),
            tiers=tiers_from_wire(msg.tiers),
            native_priorities=msg.native_priorities,
            has_syncobj=msg.has_syncobj,
            has_hw_contexts=msg.has_hw_contexts,
            max_hw_contexts=msg.max_hw_contexts,
            has_preemption=msg.has_preemption,
            simulated=msg.simulated,
            health=HEALTH.from_wire(msg.health),
            node=msg.node,
        )


@dataclass(frozen=True, slots=True)
class Owner:
    """Who the daemon thinks a caller is (from kernel-verified peer credentials)."""

    uid: int
    gid: int
    pid: int
    name: str
    admin: bool
    tenant: str = ""  # the tenant the caller acts as ("" for a plain user)

    @classmethod
    def from_wire(cls, msg: context_pb2.Owner) -> Owner:
        """Convert a wire Owner."""
        return cls(msg.uid, msg.gid, msg.pid, msg.name, msg.admin, msg.tenant)


@dataclass(frozen=True, slots=True)
class Quotas:
    """Limits of one context; 0 in a request means the daemon's default."""

    memory_bytes: int = 0
    max_queued_jobs: int = 0
    max_queues: int = 0

    def to_wire(self) -> context_pb2.Quotas:
        """The wire message."""
        return context_pb2.Quotas(
            memory_bytes=self.memory_bytes,
            max_queued_jobs=self.max_queued_jobs,
            max_queues=self.max_queues,
        )


@dataclass(frozen=True, slots=True)
class Context:
    """A snapshot of one execution context."""

    context_id: str
    device: str
    owner: Owner
    default_class: SchedulingClass | None
    weight: float
    quotas: Quotas
    label: str
    queues: int
    queued_jobs: int
    running_jobs: int
    memory_bytes: int
    buffers: int
    age_s: float
    submitted: int = 0
    ended: dict[JobState, int] = field(default_factory=dict)  # final state -> jobs
    wait: Distribution = Distribution()  # queue wait of its recent jobs
    run: Distribution = Distribution()  # run time of its recent jobs
    device_time_s: float = 0.0

    @classmethod
    def from_wire(cls, msg: context_pb2.Context) -> Context:
        """Convert a wire Context."""
        return cls(
            context_id=msg.context_id,
            device=msg.device,
            owner=Owner.from_wire(msg.owner),
            default_class=CLASS.from_wire(msg.default_class),
            weight=msg.weight,
            quotas=Quotas(
                msg.quotas.memory_bytes, msg.quotas.max_queued_jobs, msg.quotas.max_queues
            ),
            label=msg.label,
            queues=msg.queues,
            queued_jobs=msg.queued_jobs,
            running_jobs=msg.running_jobs,
            memory_bytes=msg.memory_bytes,
            buffers=msg.buffers,
            age_s=msg.age_s,
            submitted=msg.submitted,
            ended=state_counts_from_wire(msg.ended),
            wait=Distribution.from_wire(msg.wait),
            run=Distribution.from_wire(msg.run),
            device_time_s=msg.device_time_s,
        )


@dataclass(frozen=True, slots=True)
class Buffer:
    """A snapshot of one buffer as a context sees it."""

    buffer_id: str
    context_id: str
    size: int
    usage: BufferUsage | None
    persistence: Persistence | None
    tier_preference: TierPreference | None
    key: str
    resident_tier: MemoryTier | None
    pins: int
    users: int
    valid: bool
    sealed: bool = False

    @classmethod
    def from_wire(cls, msg: buffer_pb2.Buffer) -> Buffer:
        """Convert a wire Buffer."""
        return cls(
            buffer_id=msg.buffer_id,
            context_id=msg.context_id,
            size=msg.size,
            usage=USAGE.from_wire(msg.usage),
            persistence=PERSISTENCE.from_wire(msg.persistence),
            tier_preference=PREFERENCE.from_wire(msg.tier_preference),
            key=msg.key,
            resident_tier=TIER.from_wire(msg.resident_tier),
            pins=msg.pins,
            users=msg.users,
            valid=msg.valid,
            sealed=msg.sealed,
        )


@dataclass(frozen=True, slots=True)
class Queue:
    """A snapshot of one job queue."""

    queue_id: str
    context_id: str
    scheduling_class: SchedulingClass | None
    priority: int
    depth_limit: int
    in_order: bool
    label: str
    depth: int
    submitted: int = 0
    ended: dict[JobState, int] = field(default_factory=dict)  # final state -> jobs
    wait: Distribution = Distribution()  # queue wait of its recent jobs
    run: Distribution = Distribution()  # run time of its recent jobs

    @classmethod
    def from_wire(cls, msg: job_pb2.Queue) -> Queue:
        """Convert a wire Queue."""
        return cls(
            queue_id=msg.queue_id,
            context_id=msg.context_id,
            scheduling_class=CLASS.from_wire(msg.scheduling_class),
            priority=msg.priority,
            depth_limit=msg.depth_limit,
            in_order=msg.in_order,
            label=msg.label,
            depth=msg.depth,
            submitted=msg.submitted,
            ended=state_counts_from_wire(msg.ended),
            wait=Distribution.from_wire(msg.wait),
            run=Distribution.from_wire(msg.run),
        )


@dataclass(frozen=True, slots=True)
class Job:
    """A snapshot of one job: its state, error, and the first numbers users ask for."""

    job_id: str
    context_id: str
    queue_id: str
    state: JobState
    kind: str
    label: str
    scheduling_class: SchedulingClass | None
    error: JobError | None
    queue_wait_s: float
    run_s: float
    modelled_s: float
    bytes_read: int
    bytes_written: int
    engine: int
    age_s: float
    context_label: str = ""  # the label its context was created with
    # every state it entered, in order, with the wall-clock time (UTC) it entered it
    transitions: tuple[tuple[JobState, datetime], ...] = ()

    @property
    def terminal(self) -> bool:
        """Whether the job has finished."""
        return self.state.terminal

    def entered(self, state: JobState) -> datetime | None:
        """When the job entered ``state`` (UTC), or None if it has not."""
        for seen, at in self.transitions:
            if seen is state:
                return at
        return None

    @classmethod
    def from_wire(cls, msg: job_pb2.Job) -> Job:
        """Convert a wire Job."""
        return cls(
            job_id=msg.job_id,
            context_id=msg.context_id,
            queue_id=msg.queue_id,
            state=_state(msg.state),
            kind=msg.kind,
            label=msg.label,
            scheduling_class=CLASS.from_wire(msg.scheduling_class),
            error=JobError.from_wire(msg.error) if msg.HasField("error") else None,
            queue_wait_s=msg.queue_wait_s,
            run_s=msg.run_s,
            modelled_s=msg.modelled_s,
            bytes_read=msg.bytes_read,
            bytes_written=msg.bytes_written,
            engine=msg.engine,
            age_s=msg.age_s,
            context_label=msg.context_label,
            transitions=tuple((_state(t.state), _utc(t.time)) for t in msg.transitions),
        )


@dataclass(frozen=True, slots=True)
class Bind:
    """One buffer bound to a job; the i-th Bind of a job is slot i of its command stream."""

    buffer: str | Buffer
    access: Access = Access.READ

    def to_wire(self) -> job_pb2.Binding:
        """The wire message."""
        return job_pb2.Binding(buffer_id=_id(self.buffer), access=ACCESS.to_wire(self.access))


@dataclass(frozen=True, slots=True)
class CommandRef:
    """A command stream held in a buffer (``size`` 0: to the end of the buffer)."""

    buffer: str | Buffer
    offset: int = 0
    size: int = 0


@dataclass(frozen=True, slots=True)
class Readback:
    """Bytes to return with a job's completion on the submit stream."""

    buffer: str | Buffer
    offset: int
    size: int

    def to_wire(self) -> job_pb2.Readback:
        """The wire message."""
        return job_pb2.Readback(buffer_id=_id(self.buffer), offset=self.offset, size=self.size)


def _id(obj: str | Buffer | Queue | Context | Job) -> str:
    if isinstance(obj, str):
        return obj
    if isinstance(obj, Buffer):
        return obj.buffer_id
    if isinstance(obj, Queue):
        return obj.queue_id
    if isinstance(obj, Context):
        return obj.context_id
    return obj.job_id


@dataclass(frozen=True, slots=True)
class JobSpec:
    """Everything needed to submit one job.

    ``command`` is the command stream itself (``bytes``, sent inline) or a :class:`CommandRef`
    to one already in a buffer. ``bindings`` are in slot order. ``deadline_s`` (finish within
    this many seconds of submission) and ``timeout_s`` (watchdog) are 0 for "none/default".
    """

    queue: str | Queue
    command: bytes | CommandRef
    bindings: tuple[Bind, ...] = ()
    kind: str = ""
    deadline_s: float = 0.0
    timeout_s: float = 0.0
    depends_on: tuple[str | Job, ...] = ()
    label: str = ""
    estimate_s: float = 0.0

    def to_wire(self, into: job_pb2.JobSpec | None = None) -> job_pb2.JobSpec:
        """The wire message, filled into ``into`` (a field of a request being built) when
        given, else into a new one; returned either way."""
        spec = job_pb2.JobSpec() if into is None else into
        spec.queue_id = _id(self.queue)
        if self.bindings:
            spec.bindings.extend(b.to_wire() for b in self.bindings)
        spec.kind = self.kind
        spec.label = self.label
        if self.deadline_s:
            spec.deadline_s = self.deadline_s
        if self.timeout_s:
            spec.timeout_s = self.timeout_s
        if self.estimate_s:
            spec.estimate_s = self.estimate_s
        if self.depends_on:
            spec.depends_on.extend(_id(d) for d in self.depends_on)
        command = self.command
        if isinstance(command, CommandRef):
            ref = spec.command_buffer
            ref.buffer_id = _id(command.buffer)
            ref.offset = command.offset
            ref.size = command.size
        else:
            spec.command_inline = bytes(command)
        return spec


@dataclass(frozen=True, slots=True)
class JobResult:
    """A finished job from the submit stream, with the bytes of its readbacks in request order."""

    job: Job | None
    readbacks: tuple[bytes, ...]
    error: JobError | None

    @property
    def ok(self) -> bool:
        """Whether the job completed."""
        return self.error is None and self.job is not None and self.job.state is JobState.COMPLETED


class _WireJobResult(JobResult):
    """A :class:`JobResult` straight off the submit stream, whose ``job`` snapshot is converted
    from the wire on first access.

    Why: a decode loop reads a step's readbacks and ``ok`` and seldom the snapshot, whose
    conversion (a dozen fields and a timestamp per state it went through) cost more of the
    client's time per step than everything else it did. It is still a JobResult dataclass
    (``fields``, ``asdict`` and ``replace`` see ``job``, converted when they read it).
    """

    __slots__ = ("_cache", "_wire")

    _cache: Job | None
    _wire: job_pb2.Job | None

    @classmethod
    def of(
        cls, wire: job_pb2.Job | None, readbacks: tuple[bytes, ...], error: JobError | None
    ) -> JobResult:
        """A result whose job is ``wire``, converted when first read."""
        result = object.__new__(cls)
        setattr_ = object.__setattr__
        setattr_(result, "_cache", None)
        setattr_(result, "_wire", wire)
        setattr_(result, "readbacks", readbacks)
        setattr_(result, "error", error)
        return result

    @property
    def job(self) -> Job | None:
        """The job as it ended (None when the request was refused before it became one)."""
        if self._cache is None and self._wire is not None:
            object.__setattr__(self, "_cache", Job.from_wire(self._wire))
            object.__setattr__(self, "_wire", None)
        return self._cache

    @job.setter
    def job(self, value: Job | None) -> None:  # the dataclass __init__ (``replace``) sets it
        object.__setattr__(self, "_cache", value)
        object.__setattr__(self, "_wire", None)

    @property
    def ok(self) -> bool:
        """Whether the job completed (read from the wire: no conversion)."""
        if self.error is not None:
            return False
        if self._wire is not None:
            return self._wire.state == _COMPLETED_ON_WIRE
        return self._cache is not None and self._cache.state is JobState.COMPLETED

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JobResult):
            return NotImplemented
        return (self.job, self.readbacks, self.error) == (other.job, other.readbacks, other.error)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"JobResult(job={self.job!r}, readbacks={self.readbacks!r}, error={self.error!r})"


_COMPLETED_ON_WIRE: Final = STATE.to_wire(JobState.COMPLETED)


def id_of(obj: str | Buffer | Queue | Context | Job) -> str:
    """The id string of a client object (or the string itself)."""
    return _id(obj)


def job_result_from_wire(msg: job_pb2.SubmitStreamResponse) -> JobResult:
    """Convert one SubmitStream response."""
    return _WireJobResult.of(
        msg.job if msg.HasField("job") else None,
        tuple(r.data for r in msg.readbacks),
        JobError.from_wire(msg.error) if msg.HasField("error") else None,
    )
