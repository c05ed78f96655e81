"""JobService: queues, batch submission, the decode submit stream, wait, cancel, watch, list.

Inline command streams
----------------------
A job may carry its command stream inline (``JobSpec.command_inline``): the decode fast path
sends a few hundred bytes per step and should not pay an extra CreateBuffer/WriteBuffer round
trip. The servicer then creates an EPHEMERAL COMMAND buffer in the job's context through core,
writes the bytes, submits the job against it, and releases the buffer when the job ends. If
admission fails the buffer is released at once, so a refused submission leaves nothing behind.
The buffer is created with ``recycle=True``: its device allocation is kept (per context, a
few at most) for the context's next inline stream, so a decode step does not pay a device
allocation and free (see "Recycled command allocations" in :mod:`npud.core.residency`).
On ``SubmitStream`` the buffers themselves outlive their jobs: the stream keeps them for its
next inline streams (:mod:`npud.api.command_pool`), so a decode step does not pay a buffer's
creation and release in core either.
"""

# ruff: noqa: N802 - servicer methods carry the rpc names of the .proto

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

from npud.api.command_pool import CommandPool
from npud.api.convert import (
    bindings_from_wire,
    class_from_wire,
    error_to_wire,
    job_to_wire,
    queue_to_wire,
    state_from_wire,
)
from npud.api.state import ApiState, Caller, EventFeed
from npud.api.status import code_number, kind_of, message_of, status_of, streaming, unary
from npud.core.events import JobEvent
from npud.core.ids import BufferId, ContextId, JobId, QueueId
from npud.core.job import Job
from npud.core.limits import Limits, bounded
from npud.core.service import JobSpec
from npud.errors import InvalidArgument, NotFound, NpudError, PermissionDenied
from npud.v1 import job_pb2, job_pb2_grpc, types_pb2
from npud.vocab import BufferUsage, JobState, SchedulingClass


def _error_info(exc: BaseException) -> types_pb2.ErrorInfo:
    return types_pb2.ErrorInfo(
        code=code_number(status_of(exc)), kind=kind_of(exc), message=message_of(exc)
    )


class JobServicer(job_pb2_grpc.JobServiceServicer):
    """Validates and converts job requests and hands them to core."""

    def __init__(self, state: ApiState) -> None:
        self._state = state

    # ---- queues -------------------------------------------------------------------------

    @unary
    async def CreateQueue(
        self, request: job_pb2.CreateQueueRequest, context: Any
    ) -> job_pb2.CreateQueueResponse:
        """Add a queue to a context."""
        state = self._state
        caller = state.caller(context)
        state.require_serving()
        sched_class = class_from_wire(request.scheduling_class, "scheduling_class", default=None)
        queue = state.core.create_queue(
            caller.owner,
            ContextId(request.context_id),
            sched_class=sched_class,
            priority=request.priority,
            depth_limit=request.depth_limit or state.defaults.queue_depth_limit,
            in_order=not request.out_of_order,
            label=request.label,
        )
        return job_pb2.CreateQueueResponse(queue=queue_to_wire(queue))

    @unary
    async def DestroyQueue(
        self, request: job_pb2.DestroyQueueRequest, context: Any
    ) -> job_pb2.DestroyQueueResponse:
        """Cancel a queue's jobs and remove it."""
        caller = self._state.caller(context)
        self._state.core.destroy_queue(
            caller.owner, ContextId(request.context_id), QueueId(request.queue_id)
        )
        return job_pb2.DestroyQueueResponse()

    @unary
    async def ListQueues(
        self, request: job_pb2.ListQueuesRequest, context: Any
    ) -> job_pb2.ListQueuesResponse:
        """A context's queues, or those of every context the caller may list."""
        caller = self._state.caller(context)
        everyone = _check_all(caller, request.all, "queues")
        queues = self._state.core.queues(
            caller.owner, _context_or_none(request.context_id), all_users=everyone
        )
        return job_pb2.ListQueuesResponse(queues=[queue_to_wire(q) for q in queues])

    # ---- submission ---------------------------------------------------------------------

    def _convert(
        self,
        caller: Caller,
        ctx_id: ContextId,
        msg: job_pb2.JobSpec,
        index: int,
        inline: list[tuple[BufferId, bool]],
        *,
        pool: CommandPool | None,
    ) -> JobSpec:
        """A core JobSpec from a wire JobSpec; inline streams become COMMAND buffers (from
        ``pool`` when given; each is appended to ``inline`` with whether it was created)."""
        core = self._state.core
        where = f"jobs[{index}]"
        bounds = core.limits.bounds
        # 0 (none) is the common case and needs no check; NaN and infinities are not 0
        if msg.deadline_s:
            bounded(f"{where}.deadline_s", msg.deadline_s, high=bounds.max_deadline_s, why=_ZERO)
        if msg.timeout_s:
            ceiling = max(bounds.timeout_ceiling(c) for c in SchedulingClass)
            bounded(f"{where}.timeout_s", msg.timeout_s, high=ceiling, why=_ZERO)
        if msg.estimate_s:
            bounded(f"{where}.estimate_s", msg.estimate_s, high=bounds.max_estimate_s, why=_ZERO)
        which = msg.WhichOneof("command")
        if which is None:
            raise InvalidArgument(f"{where}: a job needs command_inline or command_buffer")
        bindings = bindings_from_wire(msg.bindings, where)
        if which == "command_inline":
            data = msg.command_inline
            if not data:
                raise InvalidArgument(f"{where}: command_inline is empty")
            if pool is not None:
                buf_id, new = pool.take(ctx_id, data)
                inline.append((buf_id, new))
            else:
                buf = core.create_buffer(
                    caller.owner, ctx_id, len(data), usage=BufferUsage.COMMAND, recycle=True
                )
                inline.append((buf.id, True))
                core.write_buffer(caller.owner, ctx_id, buf.id, 0, data)
            command, offset = inline[-1][0], 0
            size: int | None = len(data)
        else:
            ref = msg.command_buffer
            command, offset = BufferId(ref.buffer_id), ref.offset
            size = ref.size or None
        return JobSpec(
            queue_id=QueueId(msg.queue_id),
            command=command,
            command_offset=offset,
            command_size=size,
            bindings=bindings,
            depends_on=tuple(JobId(d) for d in msg.depends_on),
            kind=msg.kind,
            label=msg.label,
            deadline=core.now() + msg.deadline_s if msg.deadline_s > 0 else None,
            timeout_s=msg.timeout_s or None,
            estimate_s=msg.estimate_s or None,
        )

    def _release_later(self, caller: Caller, ctx_id: ContextId, buf_id: BufferId) -> None:
        def release() -> None:
            # the context may have closed meanwhile: closing released the buffer already
            with contextlib.suppress(NpudError):
                self._state.core.release_buffer(caller.owner, ctx_id, buf_id)

        asyncio.get_running_loop().call_soon(release)

    def _submit(
        self,
        caller: Caller,
        ctx_id: ContextId,
        specs: list[job_pb2.JobSpec],
        pool: CommandPool | None = None,
    ) -> list[Job]:
        """Submit a batch all-or-nothing; inline command buffers live as long as their job,
        or go back to ``pool`` when it ends."""
        core = self._state.core
        self._state.require_serving()
        inline: list[tuple[BufferId, bool]] = []
        inline_of: list[BufferId | None] = []
        try:
            converted = []
            for i, msg in enumerate(specs):
                before = len(inline)
                converted.append(self._convert(caller, ctx_id, msg, i, inline, pool=pool))
                inline_of.append(inline[-1][0] if len(inline) > before else None)
            jobs = core.submit(caller.owner, ctx_id, converted)
        except BaseException:
            for buf_id, new in inline:
                if pool is None:
                    with contextlib.suppress(NpudError):
                        core.release_buffer(caller.owner, ctx_id, buf_id, undo=True)
                elif new:
                    pool.drop_new(ctx_id, buf_id)
                else:
                    pool.give_back(ctx_id, buf_id)
            raise
        for job, cmd in zip(jobs, inline_of, strict=True):
            if cmd is None:
                continue
            if pool is None:
                job.add_done_callback(partial(self._inline_done, caller, ctx_id, cmd))
            else:
                job.add_done_callback(partial(_give_back, pool, ctx_id, cmd))
        return jobs

    def _inline_done(self, caller: Caller, ctx_id: ContextId, cmd: BufferId, _job: Job) -> None:
        self._release_later(caller, ctx_id, cmd)

    @unary
    async def SubmitJobs(
        self, request: job_pb2.SubmitJobsRequest, context: Any
    ) -> job_pb2.SubmitJobsResponse:
        """Submit a batch: all admitted or none."""
        caller = self._state.caller(context)
        jobs = self._submit(caller, ContextId(request.context_id), list(request.jobs))
        now = self._state.core.now()
        return job_pb2.SubmitJobsResponse(jobs=[job_to_wire(j, now) for j in jobs])

    @streaming
    async def SubmitStream(
        self, request_iterator: Any, context: Any
    ) -> AsyncIterator[job_pb2.SubmitStreamResponse]:
        """One response per request, when its job has ended, with the readbacks' bytes."""
        state = self._state
        caller = state.caller(context)
        out: asyncio.Queue[job_pb2.SubmitStreamResponse | None] = asyncio.Queue()
        pool = CommandPool(state.core, caller.owner)
        pending = 0
        reading = True

        def finished(req: job_pb2.SubmitStreamRequest) -> Callable[[Job], None]:
            def done(job: Job) -> None:
                nonlocal pending
                pending -= 1
                resp = job_pb2.SubmitStreamResponse(tag=req.tag)
                job_to_wire(job, state.core.now(), into=resp.job)
                if job.state is JobState.COMPLETED:
                    try:
                        for rb in req.readbacks:
                            data = state.core.read_buffer(
                                caller.owner,
                                ContextId(req.context_id),
                                BufferId(rb.buffer_id),
                                rb.offset,
                                rb.size,
                            )
                            resp.readbacks.add(buffer_id=rb.buffer_id, offset=rb.offset, data=data)
                    except NpudError as exc:
                        resp.error.CopyFrom(_error_info(exc))
                elif job.error is not None:
                    resp.error.CopyFrom(error_to_wire(job.error))
                out.put_nowait(resp)
                if not reading and pending == 0:
                    out.put_nowait(None)

            return done

        async def read_requests() -> None:
            nonlocal pending, reading
            try:
                async for req in request_iterator:
                    try:
                        if req.readbacks:
                            _check_readbacks(req, state.core.limits.bounds)
                        [job] = self._submit(caller, ContextId(req.context_id), [req.job], pool)
                    except NpudError as exc:
                        out.put_nowait(
                            job_pb2.SubmitStreamResponse(tag=req.tag, error=_error_info(exc))
                        )
                        continue
                    pending += 1
                    job.add_done_callback(finished(req))
            finally:
                reading = False
                if pending == 0:
                    out.put_nowait(None)

        reader = asyncio.get_running_loop().create_task(read_requests())
        try:
            while True:
                resp = await out.get()
                if resp is None:
                    break
                yield resp
            await reader  # a request that did not decode ends the stream INVALID_ARGUMENT
        finally:
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            pool.close()

    # ---- waiting, cancelling, listing ---------------------------------------------------

    @unary
    async def WaitJob(
        self, request: job_pb2.WaitJobRequest, context: Any
    ) -> job_pb2.WaitJobResponse:
        """Wait for a job to end (or the timeout), then return it."""
        caller = self._state.caller(context)
        core = self._state.core
        bounded("timeout_s", request.timeout_s, high=core.limits.bounds.max_wait_s, why=_ZERO)
        job = core.job(caller.owner, ContextId(request.context_id), JobId(request.job_id))
        if not job.done:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

            def done(_job: Job) -> None:
                if not fut.done():
                    fut.set_result(None)

            job.add_done_callback(done)
            try:
                await asyncio.wait_for(fut, request.timeout_s or None)
            except TimeoutError:
                pass
            finally:
                job.remove_done_callback(done)
        return job_pb2.WaitJobResponse(job=job_to_wire(job, core.now()))

    @unary
    async def CancelJob(
        self, request: job_pb2.CancelJobRequest, context: Any
    ) -> job_pb2.CancelJobResponse:
        """Cancel (or abort) a job; a finished job is returned unchanged."""
        caller = self._state.caller(context)
        core = self._state.core
        job = core.job(caller.owner, _context_or_none(request.context_id), JobId(request.job_id))
        core.cancel(caller.owner, job.context_id, job.id)
        return job_pb2.CancelJobResponse(job=job_to_wire(job, core.now()))

    @unary
    async def GetJob(self, request: job_pb2.GetJobRequest, context: Any) -> job_pb2.GetJobResponse:
        """One job, from its context or from whichever context the caller may reach holds it."""
        caller = self._state.caller(context)
        core = self._state.core
        job = core.job(caller.owner, _context_or_none(request.context_id), JobId(request.job_id))
        return job_pb2.GetJobResponse(job=job_to_wire(job, core.now()))

    @unary
    async def ListJobs(
        self, request: job_pb2.ListJobsRequest, context: Any
    ) -> job_pb2.ListJobsResponse:
        """A context's (or every listable context's) live and recent jobs, filtered by queue
        and state."""
        caller = self._state.caller(context)
        core = self._state.core
        everyone = _check_all(caller, request.all, "jobs")
        states = {state_from_wire(s) for s in request.states}
        now = core.now()
        jobs = [
            job_to_wire(j, now)
            for j in core.jobs(
                caller.owner, _context_or_none(request.context_id), all_users=everyone
            )
            if (not request.queue_id or j.queue_id == request.queue_id)
            and (not states or j.state in states)
        ]
        return job_pb2.ListJobsResponse(jobs=jobs)

    @streaming
    async def WatchJobs(
        self, request: job_pb2.WatchJobsRequest, context: Any
    ) -> AsyncIterator[job_pb2.WatchJobsResponse]:
        """Every state change of the jobs the caller may see."""
        caller = self._state.caller(context)
        core = self._state.core
        if request.all and not caller.admin:
            raise PermissionDenied(
                f"watching every owner's jobs is for admins; {caller.owner} is not one"
            )
        only = ContextId(request.context_id) if request.context_id else None
        if only is not None:
            core.context(caller.owner, only)  # NOT_FOUND for someone else's context
        with EventFeed(core) as feed:
            while True:
                event = await feed.get()
                if not isinstance(event, JobEvent):
                    continue
                if only is not None and event.context_id != only:
                    continue
                msg = self._job_of_event(caller, event, everyone=request.all)
                if msg is not None:
                    yield job_pb2.WatchJobsResponse(job=msg)

    def _job_of_event(
        self, caller: Caller, event: JobEvent, *, everyone: bool
    ) -> job_pb2.Job | None:
        core = self._state.core
        try:
            ctx = core.context(caller.owner, event.context_id)
        except NotFound:
            return None  # not the caller's (or already gone)
        if not everyone and not caller.owner.owns(ctx.owner):
            return None
        try:
            job = core.job(caller.owner, event.context_id, event.job_id)
        except NotFound:
            return None
        msg = job_to_wire(job, core.now())
        # the state this very event reports (the job may have moved on since)
        msg.state = _STATE_BY_NAME.get(event.state, types_pb2.JOB_STATE_UNSPECIFIED)
        return msg


_ZERO = "0 means none"


def _give_back(pool: CommandPool, ctx_id: ContextId, buf_id: BufferId, _job: Job) -> None:
    pool.give_back(ctx_id, buf_id)


_STATE_BY_NAME = {s.value: types_pb2.JobState.Value(f"JOB_STATE_{s.name}") for s in JobState}


def _check_readbacks(req: job_pb2.SubmitStreamRequest, bounds: Limits) -> None:
    """A SubmitStream request's readbacks within ``bounds`` (count and bytes together).

    Raises:
        InvalidArgument: too many readbacks, or too many bytes, naming the limit.
    """
    if len(req.readbacks) > bounds.max_readbacks:
        raise InvalidArgument(
            f"readbacks: {len(req.readbacks)} in one request; the limit is {bounds.max_readbacks}"
        )
    total = sum(rb.size for rb in req.readbacks)
    if total > bounds.max_readback_bytes:
        raise InvalidArgument(
            f"readbacks: {total} bytes in one request; the limit is {bounds.max_readback_bytes} "
            "(read large results with ReadBuffer)"
        )


def _context_or_none(context_id: str) -> ContextId | None:
    """A request's context id; ``None`` (every context the caller may see) when empty."""
    return ContextId(context_id) if context_id else None


def _check_all(caller: Caller, everyone: bool, what: str) -> bool:
    """Whether a listing covers every owner (``all = true``).

    Raises:
        PermissionDenied: a non-admin asked for every owner's objects.
    """
    if everyone and not caller.admin:
        raise PermissionDenied(
            f"listing every owner's {what} is for admins; {caller.owner} is not one"
        )
    return everyone
