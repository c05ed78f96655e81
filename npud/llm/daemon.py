"""The daemon backend: compiled steps run by npud, through :mod:`npud.client`.

How the model maps onto npud's objects:

- one **context** per generator, with two queues: ``decode`` in the LATENCY class and
  ``prefill`` in the THROUGHPUT class, so a long prompt of one client never delays another
  client's decode step by more than one chunk;
- the **weights** as PERSISTENT buffers keyed by content (``npud-llm:sha256:<hex>`` of each
  pack): the first process creates, uploads and *seals* them (npud checks the bytes against
  the key's digest, and sealed contents are immutable); every later process, of any user,
  finds them with ``OpenPersistentBuffer`` and uploads nothing. They stay warm in the daemon
  after the last user leaves, until memory pressure evicts them, and a daemon with a state
  directory offers them again after a restart;
- the **KV cache** and the token ids as STATE buffers of the context (spilled, never dropped);
- activations in a SCRATCH buffer;
- every step over one bidirectional **SubmitStream** with its command stream inline; a step
  that ends in ARGMAX asks for a 4-byte readback of the new id, which comes back in the same
  message as the job's completion: one round trip per token. Decode steps are pipelined: the
  generator sends step p+1 before step p's result is back (the LATENCY queue is in order, and
  step p+1 reads its input id on the device), so npud's per-step round trip overlaps the
  device's work instead of adding to it.

Racing first users
------------------
Two processes may load the same new model at once. Processes of one user share one unsealed
upload: creating it again raises ``AlreadyExists`` and the loser opens the winner's buffer; an
unsealed buffer (the winner is still uploading, or died half way) is written again by the
loser with the same bytes and sealed: harmless, and simpler than waiting for another client's
upload. Uploads of different users are separate until one seals; npud then attaches the other
user's seal to the sealed buffer. Only a sealed buffer is reused as is: an unsealed one may
hold anything.
"""

from __future__ import annotations

import collections
import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from npud import errors
from npud.client import (
    Access as ClientAccess,
)
from npud.client import (
    Bind,
    BufferUsage,
    Client,
    JobResult,
    JobSpec,
    JobState,
    Persistence,
    Readback,
    SchedulingClass,
    SubmitStream,
    connect,
)
from npud.client import Buffer as ClientBuffer
from npud.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    JobFailed,
    NotFound,
    NpudError,
)
from npud.llm.backend import JOB_TIMES_KEPT, BackendStatistics, JobTimes
from npud.llm.compiler import Access, Step, StepKind
from npud.llm.plan import BufferKind, BufferSpec, MemoryPlan

KEY_PREFIX = "npud-llm:"

_USAGE = {
    BufferKind.WEIGHTS: BufferUsage.WEIGHTS,
    BufferKind.STATE: BufferUsage.STATE,
    BufferKind.SCRATCH: BufferUsage.SCRATCH,
}


def _access(access: Access) -> ClientAccess:
    if access is Access.READ:
        return ClientAccess.READ
    if access is Access.WRITE:
        return ClientAccess.WRITE
    return ClientAccess.READ_WRITE


def step_error(step: Step, result: JobResult) -> NpudError:
    """The exception for a step npud did not complete: the class it named, else JobFailed."""
    return job_error(step.label, result)


def job_error(label: str, result: JobResult) -> NpudError:
    """The exception for a job npud did not complete, its message starting with ``label``:
    the npud.errors class the daemon named, else JobFailed."""
    # The daemon names the npud.errors class of a refusal or failure (TimeSliceExceeded,
    # QueueFull, JobTimedOut, ...); raising that class lets the caller react to it.
    error = result.error
    if error is None and result.job is not None:
        error = result.job.error
    if error is None:
        state = result.job.state if result.job is not None else "unknown"
        return JobFailed(f"{label}: the job ended {state}")
    cls = getattr(errors, error.kind, None)
    if not (isinstance(cls, type) and issubclass(cls, NpudError)):
        cls = JobFailed
    return cls(f"{label}: {error.kind}: {error.message}")


UNFINISHED = (JobState.QUEUED, JobState.READY, JobState.RUNNING)
"""The states of a job that has not ended."""


@dataclass(slots=True, eq=False)
class DaemonTicket:
    """Steps sent on the submit stream, by tag."""

    steps: tuple[Step, ...]
    tags: list[int] = field(default_factory=list)


class DaemonBackend:
    """Runs steps through npud (see the module docstring for the mapping).

    Args:
        client: a connected client; the caller keeps owning it. When ``None``, the backend
            connects to ``socket_path`` (or the default socket) itself and closes the
            connection in :meth:`close`.
        socket_path: where npud listens, when the backend connects itself.
        device: the device to run on (npud's first device when empty).
        label: a label for the context and queues (shown by ``npuctl``).
        job_timeout_s: the watchdog timeout asked for each step (0: npud's per-class default,
            which is short for LATENCY work; raise it on an overloaded host).

    ``job_times`` keeps npud's queue-wait and run time of the last steps, which separates
    time spent waiting in npud's scheduler from the rest of a round trip.

    Raises:
        Unavailable: npud is not running at the socket.
    """

    def __init__(
        self,
        client: Client | None = None,
        *,
        socket_path: Path | str | None = None,
        device: str = "",
        label: str = "npud-llm",
        job_timeout_s: float = 0.0,
    ) -> None:
        self.job_timeout_s = job_timeout_s
        self._owns_client = client is None
        self.client: Client = connect(socket_path) if client is None else client
        self.device = device
        self.label = label
        self.context_id: str | None = None
        self._queues: dict[StepKind, str] = {}
        self._buffers: dict[str, ClientBuffer] = {}
        self._stream: SubmitStream | None = None
        self._submitted = 0
        self._completed = 0
        self._uploaded = 0
        self._packs_uploaded = 0
        self._packs_reused = 0
        self._written = 0
        self._read = 0
        self._busy = 0.0
        self.job_times: collections.deque[JobTimes] = collections.deque(maxlen=JOB_TIMES_KEPT)

    @property
    def name(self) -> str:
        """``daemon:<socket path>``."""
        return f"daemon:{self.client.socket_path}"

    @property
    def buffers(self) -> dict[str, ClientBuffer]:
        """The npud buffers of the plan, by plan name (a copy)."""
        return dict(self._buffers)

    def prepare(self, plan: MemoryPlan) -> None:
        """Create the context, queues and buffers; attach or upload the weights.

        Raises:
            FailedPrecondition: called twice.
            ResourceExhausted: a quota or the device's memory cannot hold the plan.
            Unavailable: npud went away.
        """
        if self.context_id is not None:
            raise FailedPrecondition("the daemon backend is already prepared")
        ctx = self.client.create_context(self.device, label=self.label)
        self.context_id = ctx.context_id
        try:
            decode = self.client.create_queue(
                ctx, SchedulingClass.LATENCY, label=f"{self.label}/decode"
            )
            prefill = self.client.create_queue(
                ctx, SchedulingClass.THROUGHPUT, label=f"{self.label}/prefill"
            )
            self._queues = {StepKind.DECODE: decode.queue_id, StepKind.PREFILL: prefill.queue_id}
            for spec in plan.buffers:
                self._buffers[spec.name] = self._materialise(spec)
            self._stream = self.client.submit_stream(ctx)
        except BaseException:
            self.close()
            raise

    def _materialise(self, spec: BufferSpec) -> ClientBuffer:
        assert self.context_id is not None
        ctx = self.context_id
        if spec.pack is None:
            return self.client.create_buffer(ctx, spec.size, usage=_USAGE[spec.kind])
        key = KEY_PREFIX + spec.pack.key
        try:
            buf = self.client.open_persistent(ctx, key)
        except NotFound:
            try:
                buf = self.client.create_buffer(
                    ctx,
                    spec.size,
                    usage=BufferUsage.WEIGHTS,
                    persistence=Persistence.PERSISTENT,
                    key=key,
                )
            except AlreadyExists:  # another process won the race: use its buffer
                buf = self.client.open_persistent(ctx, key)
        if buf.size < spec.size:
            raise InvalidArgument(
                f"persistent buffer {key} holds {buf.size} bytes, the plan needs {spec.size}"
            )
        if buf.sealed:
            self._packs_reused += 1
            return buf
        try:
            buf = self.client.write_buffer(ctx, buf, spec.pack.data, seal=True)
        except FailedPrecondition:  # another process of this user sealed it meanwhile
            buf = self.client.open_persistent(ctx, key)
            if not buf.sealed:
                raise
            self._packs_reused += 1
            return buf
        self._uploaded += spec.pack.size
        self._packs_uploaded += 1
        return buf

    def _buffer(self, name: str) -> ClientBuffer:
        try:
            return self._buffers[name]
        except KeyError:
            raise InvalidArgument(f"no buffer {name!r} in the prepared plan") from None

    def write(self, buffer: str, offset: int, data: bytes) -> None:
        """Write ``data`` into the plan's buffer ``buffer`` at ``offset``.

        Raises:
            InvalidArgument: unknown buffer or the bytes run past its end.
        """
        if self.context_id is None:
            raise FailedPrecondition("prepare() the daemon backend before writing")
        self.client.write_buffer(self.context_id, self._buffer(buffer), data, offset=offset)
        self._written += len(data)

    def submit(self, steps: Sequence[Step]) -> DaemonTicket:
        """Send ``steps`` on the submit stream: decode steps to the LATENCY queue, prefill
        chunks to the THROUGHPUT queue, each with its command stream inline.

        Raises:
            FailedPrecondition: the backend is not prepared.
        """
        if self._stream is None:
            raise FailedPrecondition("prepare() the daemon backend before submitting")
        ticket = DaemonTicket(tuple(steps))
        for step in ticket.steps:
            spec = JobSpec(
                queue=self._queues[step.kind],
                command=step.command,
                bindings=tuple(
                    Bind(self._buffer(name), _access(access)) for name, access in step.bindings
                ),
                kind=step.tag or step.kind.value,
                label=step.label,
                timeout_s=self.job_timeout_s,
            )
            readbacks: tuple[Readback, ...] = ()
            if step.readback is not None:
                rb = step.readback
                readbacks = (Readback(self._buffer(rb.buffer), rb.offset, rb.size),)
            ticket.tags.append(self._stream.submit(spec, readbacks))
            self._submitted += 1
        return ticket

    def wait(self, ticket: DaemonTicket) -> bytes | None:
        """Wait for every step of ``ticket``; the last step's readback bytes (or ``None``).

        Raises:
            NpudError: a step did not complete: the class npud named (``TimeSliceExceeded``,
                ``QueueFull``, ``JobTimedOut``, ...; ``JobFailed`` for device failures), with
                the step's label and npud's reason.
            Unavailable: npud went away.
        """
        if self._stream is None:
            raise FailedPrecondition("prepare() the daemon backend before waiting")
        data: bytes | None = None
        failure: NpudError | None = None
        for step, tag in zip(ticket.steps, ticket.tags, strict=True):
            result = self._stream.result(tag)  # every result is consumed, even after a failure
            self._record(step, result)
            if not result.ok and failure is None:
                failure = step_error(step, result)
            data = result.readbacks[0] if result.readbacks else None
        if failure is not None:
            raise failure
        if data is not None:
            self._read += len(data)
        return data

    def abandon(self, tickets: Sequence[DaemonTicket], *, cancel: bool) -> None:
        """Let ``tickets`` end and drop their results (npud's job times are still recorded).

        With ``cancel``, every job of this backend's context that has not ended is cancelled
        first (npud aborts a running one where the device can): one generator per context, so
        those are exactly the steps in flight. Then each step's result is read off the stream,
        so none is left to be mistaken for a later step's. Errors are swallowed (the daemon
        may be the thing that failed): the caller is reporting its own.
        """
        if self._stream is None:
            return
        if cancel and self.context_id is not None:
            self._cancel_unfinished(self.context_id)
        for ticket in tickets:
            for step, tag in zip(ticket.steps, ticket.tags, strict=True):
                try:
                    result = self._stream.result(tag)
                except NpudError:
                    continue  # the stream ended: nothing more will arrive
                self._record(step, result)

    def _cancel_unfinished(self, ctx: str) -> None:
        try:
            jobs = self.client.jobs(ctx, states=UNFINISHED)
        except NpudError:
            return
        for job in jobs:
            if not job.terminal:
                with contextlib.suppress(NpudError):  # it may have ended meanwhile
                    self.client.cancel(ctx, job.job_id)

    def _record(self, step: Step, result: JobResult) -> None:
        self._completed += 1
        if result.job is not None:
            self._busy += result.job.run_s
            job = result.job
            self.job_times.append(JobTimes(step.kind, job.queue_wait_s, job.run_s, job.modelled_s))

    def now(self) -> float:
        """``time.monotonic()``."""
        return time.monotonic()

    def close(self) -> None:
        """End the stream and destroy the context (its state and scratch buffers die with it;
        the persistent weights stay warm in npud). Idempotent."""
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        if self.context_id is not None:
            ctx, self.context_id = self.context_id, None
            try:
                self.client.destroy_context(ctx)
            except (NotFound, FailedPrecondition):
                pass
            except Exception:
                if not self._owns_client:
                    raise
        self._buffers.clear()
        if self._owns_client:
            self._owns_client = False
            self.client.close()

    def statistics(self) -> BackendStatistics:
        """Counters so far; ``device_busy_s`` sums the run times npud reported."""
        return BackendStatistics(
            backend=self.name,
            steps_submitted=self._submitted,
            steps_completed=self._completed,
            weight_bytes_uploaded=self._uploaded,
            weight_packs_uploaded=self._packs_uploaded,
            weight_packs_reused=self._packs_reused,
            bytes_written=self._written,
            bytes_read=self._read,
            device_busy_s=self._busy,
        )
