"""JobService: queues, batch submission, the decode submit stream, wait, cancel, watch, list.

Submission itself (inline command streams, bounds, the submit stream's responses) is
:mod:`npud.api.submission`, shared with the submit socket; this module is its gRPC face.
"""

# ruff: noqa: N802 - servicer methods carry the rpc names of the .proto

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from npud.api.convert import (
    class_from_wire,
    job_to_wire,
    queue_to_wire,
    state_from_wire,
)
from npud.api.state import ApiState, Caller, EventFeed
from npud.api.status import streaming, unary
from npud.api.submission import ZERO_IS_NONE, SubmitSession, Submitter
from npud.core.events import JobEvent
from npud.core.ids import ContextId, JobId, QueueId
from npud.core.job import Job
from npud.core.limits import bounded
from npud.errors import NotFound, PermissionDenied
from npud.v1 import job_pb2, job_pb2_grpc, types_pb2
from npud.vocab import JobState


class JobServicer(job_pb2_grpc.JobServiceServicer):
    """Validates and converts job requests and hands them to core."""

    def __init__(self, state: ApiState) -> None:
        self._state = state
        self._submitter = Submitter(state)

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

    @unary
    async def SubmitJobs(
        self, request: job_pb2.SubmitJobsRequest, context: Any
    ) -> job_pb2.SubmitJobsResponse:
        """Submit a batch: all admitted or none."""
        caller = self._state.caller(context)
        jobs = self._submitter.submit(caller, ContextId(request.context_id), list(request.jobs))
        now = self._state.core.now()
        return job_pb2.SubmitJobsResponse(jobs=[job_to_wire(j, now) for j in jobs])

    @streaming
    async def SubmitStream(
        self, request_iterator: Any, context: Any
    ) -> AsyncIterator[job_pb2.SubmitStreamResponse]:
        """One response per request, when its job has ended, with the readbacks' bytes."""
        caller = self._state.caller(context)
        out: asyncio.Queue[job_pb2.SubmitStreamResponse | None] = asyncio.Queue()
        reading = True

        def send(resp: job_pb2.SubmitStreamResponse) -> None:
            out.put_nowait(resp)
            if not reading and session.pending == 0:
                out.put_nowait(None)

        session = SubmitSession(self._submitter, caller, send)

        async def read_requests() -> None:
            nonlocal reading
            try:
                async for req in request_iterator:
                    session.request(req)
            finally:
                reading = False
                if session.pending == 0:
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
            session.close()

    # ---- waiting, cancelling, listing ---------------------------------------------------

    @unary
    async def WaitJob(
        self, request: job_pb2.WaitJobRequest, context: Any
    ) -> job_pb2.WaitJobResponse:
        """Wait for a job to end (or the timeout), then return it."""
        caller = self._state.caller(context)
        core = self._state.core
        bounded(
            "timeout_s", request.timeout_s, high=core.limits.bounds.max_wait_s, why=ZERO_IS_NONE
        )
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


_STATE_BY_NAME = {s.value: types_pb2.JobState.Value(f"JOB_STATE_{s.name}") for s in JobState}


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
