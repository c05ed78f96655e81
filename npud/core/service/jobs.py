"""Jobs: a batch of :class:`JobSpec` checked, built and submitted all or nothing; looked up,
listed, cancelled and waited for."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from npud.core.buffers import Buffer
from npud.core.context import Context
from npud.core.ids import (
    BufferId,
    ContextId,
    JobId,
    QueueId,
    new_job_id,
)
from npud.core.job import DoneCallback, Job
from npud.core.limits import bounded, check_text
from npud.core.owner import Owner
from npud.core.residency import ResidencyManager
from npud.core.service.buffers import CoreBuffers
from npud.devices.base import BindingShape, BufferUse
from npud.errors import (
    InvalidArgument,
    NotFound,
    QuotaExceeded,
)
from npud.vocab import (
    SchedulingClass,
)


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What a client asks to run (a value object; ids, not objects).

    Attributes:
        queue_id: the queue (of the submitting context) the job goes to.
        command: the buffer holding the command stream.
        command_offset: where the stream starts in ``command``.
        command_size: its length (``None``: to the end of the buffer).
        bindings: buffers in SLOT order with how the job uses each.
        depends_on: jobs that must complete first: a :data:`JobId` of the same context, or an
            ``int`` index of another spec in the same batch.
        kind: the duration-estimate tag ("decode", "prefill", ...).
        label: free text for people.
        deadline: absolute, on the core clock (:meth:`Core.now`).
        timeout_s: the watchdog timeout (``None``: the class default).
        engine: a specific engine (``None``: the least loaded).
        estimate_s: the client's estimate, used until the kind has measurements.
        command_bytes: the command range's bytes when the caller has them at hand (an inline
            stream it has just written): the device's cost model reads them instead of
            reading the buffer back. They must be what the range holds.
    """

    queue_id: QueueId
    command: BufferId
    command_offset: int = 0
    command_size: int | None = None
    bindings: tuple[tuple[BufferId, BufferUse], ...] = ()
    depends_on: tuple[JobId | int, ...] = ()
    kind: str = ""
    label: str = ""
    deadline: float | None = None
    timeout_s: float | None = None
    engine: int | None = None
    estimate_s: float | None = None
    command_bytes: bytes | None = None


class CoreJobs(CoreBuffers):
    """The jobs part of core's facade."""

    def submit(self, owner: Owner, ctx_id: ContextId, specs: Sequence[JobSpec]) -> list[Job]:
        """Submit a batch of jobs to a context, all or nothing.

        On success the returned jobs are QUEUED (or further along) and belong to the context;
        on any error nothing was admitted.

        Raises:
            NotFound: no such context for ``owner``; an unknown queue or buffer id.
            InvalidArgument: an empty batch, a bad command range, a dependency that is not a
                job of this context (or a batch index out of range), a dependency cycle, an
                engine out of range, more bindings than the device takes per job
                (``Capabilities.max_bindings``); a number that is not finite or over its
                bound, a kind or label over its length (:class:`~npud.core.limits.Limits`).
            FailedPrecondition: the context is closing; a write binding to a sealed buffer.
            QueueFull, QuotaExceeded: a queue depth, context or user quota would be exceeded.
            TimeSliceExceeded, DeadlineInfeasible: from the scheduler's admission control.
            DeviceLost: the device is gone.
        """
        ctx = self._open_context(owner, ctx_id)
        if not specs:
            raise InvalidArgument("a submission needs at least one job")
        account = ctx.owner.account
        have = self._user_jobs.get(account, 0)
        quota = ctx.owner.quota
        limit = quota.max_live_jobs if quota is not None else self.limits.max_live_jobs_per_user
        if have + len(specs) > limit:
            per = "tenant" if quota is not None else "user"
            raise QuotaExceeded(
                f"{ctx.owner} has {have} live jobs and the batch adds {len(specs)}; the limit "
                f"per {per} is {limit}"
            )
        residency = self._residency(ctx)
        jobs = [self._build(ctx, residency, spec) for spec in specs]
        for job, spec in zip(jobs, specs, strict=True):
            job.depends_on = tuple(self._dependency(ctx, jobs, d) for d in spec.depends_on)
        self._devices[ctx.device].scheduler.submit(ctx, jobs)
        self._user_jobs[account] = self._user_jobs.get(account, 0) + len(jobs)
        return jobs

    def _build(self, ctx: Context, residency: ResidencyManager, spec: JobSpec) -> Job:
        queue = ctx.queues.get(spec.queue_id)
        if queue is None:
            raise NotFound(f"no queue {spec.queue_id} in context {ctx.id}")
        command = residency.get(ctx.id, spec.command)
        offset = spec.command_offset
        size = command.size - offset if spec.command_size is None else spec.command_size
        if offset < 0 or size <= 0 or offset + size > command.size:
            raise InvalidArgument(
                f"command range [{offset}, {offset + size}) is empty or outside buffer "
                f"{command.id} ({command.size} bytes)"
            )
        limit = self._devices[ctx.device].device.capabilities.max_bindings
        if len(spec.bindings) > limit:
            raise InvalidArgument(
                f"a job binds {len(spec.bindings)} buffers; device {ctx.device} takes at most "
                f"{limit} per job"
            )
        bindings = []
        for buffer_id, use in spec.bindings:
            buf = residency.get(ctx.id, buffer_id)
            residency.check_use(buf, use)
            bindings.append((buf, use))
        self._check_numbers(queue.sched_class, spec)
        modelled = self._model(
            ctx,
            residency,
            command,
            offset=offset,
            size=size,
            bindings=bindings,
            stream=spec.command_bytes,
        )
        return Job(
            id=new_job_id(),
            context_id=ctx.id,
            queue=queue,
            command=command,
            command_offset=offset,
            command_size=size,
            bindings=tuple(bindings),
            kind=spec.kind,
            label=spec.label,
            deadline=spec.deadline,
            timeout_s=spec.timeout_s,
            engine_request=spec.engine,
            estimate_s=spec.estimate_s,
            context_label=ctx.label,
            modelled_s=modelled,
        )

    def _model(
        self,
        ctx: Context,
        residency: ResidencyManager,
        command: Buffer,
        *,
        offset: int,
        size: int,
        bindings: Sequence[tuple[Buffer, BufferUse]],
        stream: bytes | None = None,
    ) -> float | None:
        """The device's model of a job's duration from its command stream as it is now (read
        from the buffer unless ``stream`` holds the range already), where the device models
        jobs (``Capabilities.models_jobs``); ``None`` elsewhere."""
        device = self._devices[ctx.device].device
        if not device.capabilities.models_jobs:
            return None
        if stream is None or len(stream) != size:
            stream = residency.read(command, offset, size)
        shapes = [BindingShape(b.size, use, b.resident_tier) for b, use in bindings]
        return device.modelled_s(stream, shapes)

    def _check_numbers(self, sched_class: SchedulingClass, spec: JobSpec) -> None:
        """Every float of ``spec`` finite and within :class:`Limits` (no NaN reaches a heap),
        its kind and label no longer than the limits.

        Raises:
            InvalidArgument: naming the field, its value and the range.
        """
        bounds = self.limits.bounds
        check_text("kind", spec.kind, bounds.max_kind_chars)
        check_text("label", spec.label, bounds.max_label_chars)
        if spec.timeout_s is not None:
            bounded(
                "timeout_s",
                spec.timeout_s,
                low=0.0,
                low_open=True,
                high=bounds.timeout_ceiling(sched_class),
                why=f"the ceiling of a {sched_class} job's timeout",
            )
        if spec.estimate_s is not None:
            bounded("estimate_s", spec.estimate_s, low=0.0, high=bounds.max_estimate_s)
        if spec.deadline is not None:
            now = self.now()
            bounded(
                "deadline",
                spec.deadline,
                low=-math.inf,
                high=now + bounds.max_deadline_s,
                why=f"at most {bounds.max_deadline_s:g} s ahead",
            )

    def _dependency(self, ctx: Context, batch: list[Job], ref: JobId | int) -> Job:
        if isinstance(ref, int):
            if not 0 <= ref < len(batch):
                raise InvalidArgument(
                    f"dependency index {ref} is outside the batch of {len(batch)} jobs"
                )
            return batch[ref]
        job = self._find_job(ctx, ref)
        if job is None:
            raise NotFound(
                f"dependency {ref} is not a job of context {ctx.id}: jobs may only depend on "
                "jobs of their own context"
            )
        return job

    def job(self, owner: Owner, ctx_id: ContextId | None, job_id: JobId) -> Job:
        """A live job, or an ended one still in its context's history; with ``ctx_id``
        ``None``, found in whichever context ``owner`` may reach holds it.

        Raises:
            NotFound: no such context for ``owner``, or no such job in it (in any of them).
        """
        if not ctx_id:
            for ctx in self._reachable(owner):
                job = self._find_job(ctx, job_id)
                if job is not None:
                    return job
            raise NotFound(f"no job {job_id} in any context you can see")
        ctx = self._context(owner, ctx_id)
        job = self._find_job(ctx, job_id)
        if job is None:
            raise NotFound(f"no job {job_id} in context {ctx_id}")
        return job

    def jobs(
        self,
        owner: Owner,
        ctx_id: ContextId | None,
        *,
        include_ended: bool = True,
        all_users: bool = False,
    ) -> list[Job]:
        """A context's live jobs in submission order, then (optionally) its recent history;
        with ``ctx_id`` ``None``, the same for every open context ``owner`` may list, context
        after context (every owner's with ``all_users`` for an admin).

        Raises:
            NotFound: no such context for ``owner``.
        """
        out: list[Job] = []
        for ctx in self._scope(owner, ctx_id, all_users=all_users):
            out.extend(sorted(ctx.jobs.values(), key=lambda j: j.seq))
            if include_ended:
                out.extend(ctx.history)
        return out

    def cancel(self, owner: Owner, ctx_id: ContextId | None, job_id: JobId) -> bool:
        """Cancel a job (see ``Scheduler.cancel``); ``False`` if it had already ended. With
        ``ctx_id`` ``None`` the job is found as :meth:`job` finds it.

        Raises:
            NotFound: no such context for ``owner``, or no such job in it (in any of them).
        """
        job = self.job(owner, ctx_id, job_id)
        ctx = self._context(owner, job.context_id)
        return self._devices[ctx.device].scheduler.cancel(job)

    def wait(self, owner: Owner, ctx_id: ContextId, job_id: JobId, callback: DoneCallback) -> Job:
        """Run ``callback(job)`` when the job ends (at once if it has); returns the job.

        Raises:
            NotFound: no such context for ``owner``, or no such job in it.
        """
        job = self.job(owner, ctx_id, job_id)
        job.add_done_callback(callback)
        return job
