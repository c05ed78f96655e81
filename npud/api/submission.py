"""Job submission as every transport does it: wire job specs in, core jobs out.

Two transports submit jobs: gRPC (``SubmitJobs`` and the bidirectional ``SubmitStream``) and,
for local clients, the submit socket (:mod:`npud.api.submit_socket`), which carries the very
same ``SubmitStreamRequest``/``SubmitStreamResponse`` messages without gRPC. Both run the code
here, so a job means the same whichever way it came: the same bounds, the same errors, the same
inline command buffers.

Inline command streams
----------------------
A job may carry its command stream inline (``JobSpec.command_inline``): the decode fast path
sends a few hundred bytes per step and should not pay an extra CreateBuffer/WriteBuffer round
trip. The submitter then creates an EPHEMERAL COMMAND buffer in the job's context through core,
writes the bytes, submits the job against it, and releases the buffer when the job ends. If
admission fails the buffer is released at once, so a refused submission leaves nothing behind.
The buffer is created with ``recycle=True``: its device allocation is kept (per context, a
few at most) for the context's next inline stream, so a decode step does not pay a device
allocation and free (see "Recycled command allocations" in :mod:`npud.core.residency`).
On a submit stream the buffers themselves outlive their jobs: the stream keeps them for its
next inline streams (:mod:`npud.api.command_pool`), so a decode step does not pay a buffer's
creation and release in core either.

A submit stream
---------------
:class:`SubmitSession` is one stream's server side: each request is submitted at once, and
its response (the job as it ended, the readbacks' bytes, or the error that refused it) goes to
the transport's ``send`` when the job ends. A refused request is answered at once and changes
nothing; the stream goes on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from functools import partial

from npud.api.command_pool import CommandPool
from npud.api.convert import (
    JobWirePrefix,
    bindings_from_wire,
    error_to_wire,
    job_prefix_to_wire,
    job_to_wire,
)
from npud.api.state import ApiState, Caller
from npud.api.status import code_number, kind_of, message_of, status_of
from npud.core.ids import BufferId, ContextId, JobId, QueueId
from npud.core.job import Job
from npud.core.limits import Limits, bounded
from npud.core.service import JobSpec
from npud.errors import InvalidArgument, NotFound, NpudError, Unavailable
from npud.v1 import job_pb2, types_pb2
from npud.vocab import BufferUsage, JobState, SchedulingClass

ZERO_IS_NONE = "0 means none"


def error_info(exc: BaseException, *, shutting_down: bool = False) -> types_pb2.ErrorInfo:
    """``exc`` as the ErrorInfo of a response; while the daemon drains, NOT_FOUND reads
    UNAVAILABLE (the shutdown closed the context, not the caller)."""
    if shutting_down and isinstance(exc, NotFound):
        exc = Unavailable(f"npud is shutting down: {exc}")
    return types_pb2.ErrorInfo(
        code=code_number(status_of(exc)), kind=kind_of(exc), message=message_of(exc)
    )


class Submitter:
    """Validates and converts wire job specs and hands them to core."""

    def __init__(self, state: ApiState) -> None:
        self._state = state

    @property
    def state(self) -> ApiState:
        """The API state the jobs go to."""
        return self._state

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
            bounded(
                f"{where}.deadline_s",
                msg.deadline_s,
                high=bounds.max_deadline_s,
                why=ZERO_IS_NONE,
            )
        if msg.timeout_s:
            ceiling = max(bounds.timeout_ceiling(c) for c in SchedulingClass)
            bounded(f"{where}.timeout_s", msg.timeout_s, high=ceiling, why=ZERO_IS_NONE)
        if msg.estimate_s:
            bounded(
                f"{where}.estimate_s",
                msg.estimate_s,
                high=bounds.max_estimate_s,
                why=ZERO_IS_NONE,
            )
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
            written: bytes | None = data
        else:
            ref = msg.command_buffer
            command, offset = BufferId(ref.buffer_id), ref.offset
            size = ref.size or None
            written = None
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
            command_bytes=written,
        )

    def submit(
        self,
        caller: Caller,
        ctx_id: ContextId,
        specs: list[job_pb2.JobSpec],
        pool: CommandPool | None = None,
    ) -> list[Job]:
        """Submit a batch all-or-nothing; inline command buffers live as long as their job,
        or go back to ``pool`` when it ends.

        Raises:
            Unavailable: the daemon is shutting down.
            NpudError: a spec is invalid or core refused the batch; nothing was submitted
                and every inline buffer made for it is gone again.
        """
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
        def release() -> None:
            # the context may have closed meanwhile: closing released the buffer already
            with contextlib.suppress(NpudError):
                self._state.core.release_buffer(caller.owner, ctx_id, cmd)

        asyncio.get_running_loop().call_soon(release)


class SubmitSession:
    """One submit stream's server side, whatever carries it (module docstring).

    ``send`` receives every response, on the loop, in the order the jobs end; after
    :meth:`close` nothing more is sent. The session owns its command pool: closing releases
    the free buffers, and a job still running then releases its own when it ends.
    """

    def __init__(
        self,
        submitter: Submitter,
        caller: Caller,
        send: Callable[[job_pb2.SubmitStreamResponse], None],
    ) -> None:
        self._submitter = submitter
        self._state = submitter.state
        self._caller = caller
        self._send = send
        self._pool = CommandPool(self._state.core, caller.owner)
        self._closed = False
        self.pending = 0
        """Jobs submitted whose responses have not been sent yet."""
        self.owed = 0
        """Readback bytes those jobs' responses will carry (what a transport must make room
        for)."""

    @property
    def caller(self) -> Caller:
        """Whose stream this is."""
        return self._caller

    def request(self, req: job_pb2.SubmitStreamRequest) -> None:
        """Submit one request's job; its response goes to ``send`` when the job ends, or at
        once (with the error) when it was refused. Raises nothing for a refused request."""
        state = self._state
        try:
            if req.readbacks:
                _check_readbacks(req, state.core.limits.bounds)
            [job] = self._submitter.submit(
                self._caller, ContextId(req.context_id), [req.job], self._pool
            )
        except NpudError as exc:
            info = error_info(exc, shutting_down=state.shutting_down)
            self._reply(job_pb2.SubmitStreamResponse(tag=req.tag, error=info))
            return
        self.pending += 1
        if req.readbacks:
            self.owed += sum(rb.size for rb in req.readbacks)
        # the answer's fixed part is written now, while the job runs (job_prefix_to_wire)
        resp = job_pb2.SubmitStreamResponse(tag=req.tag)
        prefix = job_prefix_to_wire(job, state.core.now(), resp.job)
        job.add_done_callback(partial(self._finished, req, resp, prefix))

    def _finished(
        self,
        req: job_pb2.SubmitStreamRequest,
        resp: job_pb2.SubmitStreamResponse,
        prefix: JobWirePrefix,
        job: Job,
    ) -> None:
        self.pending -= 1
        if req.readbacks:
            self.owed -= sum(rb.size for rb in req.readbacks)
        if self._closed:
            return
        core = self._state.core
        job_to_wire(job, core.now(), into=resp.job, prefix=prefix)
        if job.state is JobState.COMPLETED:
            try:
                for rb in req.readbacks:
                    data = core.read_buffer(
                        self._caller.owner,
                        ContextId(req.context_id),
                        BufferId(rb.buffer_id),
                        rb.offset,
                        rb.size,
                    )
                    resp.readbacks.add(buffer_id=rb.buffer_id, offset=rb.offset, data=data)
            except NpudError as exc:
                resp.error.CopyFrom(error_info(exc))
        elif job.error is not None:
            resp.error.CopyFrom(error_to_wire(job.error))
        self._reply(resp)

    def _reply(self, resp: job_pb2.SubmitStreamResponse) -> None:
        if not self._closed:
            self._send(resp)

    def close(self) -> None:
        """End the stream: no more responses; the pool's free buffers are released
        (idempotent)."""
        if not self._closed:
            self._closed = True
            self._pool.close()


def _give_back(pool: CommandPool, ctx_id: ContextId, buf_id: BufferId, _job: Job) -> None:
    pool.give_back(ctx_id, buf_id)


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


__all__ = ["SubmitSession", "Submitter", "error_info"]
