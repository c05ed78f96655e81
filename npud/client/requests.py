"""Request messages built from typed arguments, shared by the sync and asyncio clients.

Both :class:`npud.client.Client` and :class:`npud.client.aio.AsyncClient` build every request
here, so the two flavours cannot drift apart in what they send.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Final

from npud.client.types import (
    Buffer,
    Context,
    Job,
    JobSpec,
    Queue,
    Quotas,
    Readback,
    id_of,
)
from npud.v1 import buffer_pb2, context_pb2, job_pb2
from npud.vocab import BufferUsage, JobState, Persistence, SchedulingClass, TierPreference
from npud.vocab.wire import CLASS, PERSISTENCE, PREFERENCE, STATE, USAGE

CHUNK_SIZE: Final = 1 << 20
"""Bytes per WriteBuffer chunk (well under grpc's 4 MiB default message limit)."""

ContextRef = str | Context
BufferRef = str | Buffer
QueueRef = str | Queue
JobRef = str | Job


def _class(value: SchedulingClass | None) -> SchedulingClass | None:
    """A class from a member or its name ("latency"); None stays None (the daemon's default).

    Raises:
        ValueError: a string that names no class.
    """
    return None if value is None else SchedulingClass(value)


def create_context(
    device: str,
    default_class: SchedulingClass | None,
    weight: float,
    quotas: Quotas | None,
    label: str,
) -> context_pb2.CreateContextRequest:
    """CreateContextRequest."""
    return context_pb2.CreateContextRequest(
        device=device,
        default_class=CLASS.to_wire(_class(default_class)),
        weight=weight,
        quotas=(quotas or Quotas()).to_wire(),
        label=label,
    )


def create_buffer(
    ctx: ContextRef,
    size: int,
    *,
    usage: BufferUsage,
    persistence: Persistence,
    tier: TierPreference,
    key: str,
) -> buffer_pb2.CreateBufferRequest:
    """CreateBufferRequest."""
    return buffer_pb2.CreateBufferRequest(
        context_id=id_of(ctx),
        size=size,
        usage=USAGE.to_wire(BufferUsage(usage)),
        persistence=PERSISTENCE.to_wire(Persistence(persistence)),
        tier_preference=PREFERENCE.to_wire(TierPreference(tier)),
        key=key,
    )


def write_chunks(
    ctx: ContextRef,
    buf: BufferRef,
    data: bytes | memoryview,
    offset: int,
    chunk_size: int,
    *,
    seal: bool = False,
) -> Iterator[buffer_pb2.WriteBufferRequest]:
    """WriteBufferRequests covering ``data`` at ``offset`` (one empty chunk for empty data);
    ``seal`` asks the daemon to seal the buffer once every chunk is written."""
    view = memoryview(data).cast("B")
    first = True
    pos = 0
    while first or pos < len(view):
        chunk = bytes(view[pos : pos + chunk_size])
        yield buffer_pb2.WriteBufferRequest(
            context_id=id_of(ctx) if first else "",
            buffer_id=id_of(buf) if first else "",
            offset=offset + pos,
            data=chunk,
            seal=seal and first,
        )
        first = False
        pos += len(chunk)
        if not chunk:
            break


def create_queue(
    ctx: ContextRef,
    *,
    scheduling_class: SchedulingClass | None,
    priority: int,
    depth_limit: int,
    in_order: bool,
    label: str,
) -> job_pb2.CreateQueueRequest:
    """CreateQueueRequest."""
    return job_pb2.CreateQueueRequest(
        context_id=id_of(ctx),
        scheduling_class=CLASS.to_wire(_class(scheduling_class)),
        priority=priority,
        depth_limit=depth_limit,
        out_of_order=not in_order,
        label=label,
    )


def submit_jobs(ctx: ContextRef, specs: Iterable[JobSpec]) -> job_pb2.SubmitJobsRequest:
    """SubmitJobsRequest."""
    return job_pb2.SubmitJobsRequest(context_id=id_of(ctx), jobs=[s.to_wire() for s in specs])


def stream_entry(
    tag: int, ctx: ContextRef, spec: JobSpec, readbacks: Iterable[Readback]
) -> job_pb2.SubmitStreamRequest:
    """One SubmitStreamRequest (built in place: one per decode step)."""
    msg = job_pb2.SubmitStreamRequest(tag=tag, context_id=id_of(ctx))
    spec.to_wire(into=msg.job)
    for r in readbacks:
        msg.readbacks.append(r.to_wire())
    return msg


def context_or_all(ctx: ContextRef | None) -> str:
    """A request's context_id: the context's id, or "" (every context the caller may see)."""
    return "" if ctx is None else id_of(ctx)


def list_jobs(
    ctx: ContextRef | None,
    queue: QueueRef | None,
    states: Iterable[JobState],
    all_owners: bool = False,
) -> job_pb2.ListJobsRequest:
    """ListJobsRequest (``ctx`` ``None``: every context of the caller, or every owner's)."""
    return job_pb2.ListJobsRequest(
        context_id=context_or_all(ctx),
        queue_id="" if queue is None else id_of(queue),
        states=[STATE.to_wire(JobState(s)) for s in states],
        all=all_owners,
    )


def list_queues(ctx: ContextRef | None, all_owners: bool = False) -> job_pb2.ListQueuesRequest:
    """ListQueuesRequest (``ctx`` ``None``: every context of the caller, or every owner's)."""
    return job_pb2.ListQueuesRequest(context_id=context_or_all(ctx), all=all_owners)


def list_buffers(ctx: ContextRef | None, all_owners: bool = False) -> buffer_pb2.ListBuffersRequest:
    """ListBuffersRequest (``ctx`` ``None``: every context of the caller, or every owner's)."""
    return buffer_pb2.ListBuffersRequest(context_id=context_or_all(ctx), all=all_owners)


def get_job(ctx: ContextRef | None, job: JobRef) -> job_pb2.GetJobRequest:
    """GetJobRequest (``ctx`` ``None``: look in every context the caller may reach)."""
    return job_pb2.GetJobRequest(context_id=context_or_all(ctx), job_id=id_of(job))


def cancel_job(ctx: ContextRef | None, job: JobRef) -> job_pb2.CancelJobRequest:
    """CancelJobRequest (``ctx`` ``None``: look in every context the caller may reach)."""
    return job_pb2.CancelJobRequest(context_id=context_or_all(ctx), job_id=id_of(job))
