"""What the caller can see, gathered across contexts and filtered: npuctl's view of the daemon.

An operator asks "which jobs are running?" or "show me job-1234" without knowing the context.
The list and lookup rpcs take an empty ``context_id`` to mean every context the caller may
see (every owner's, for an admin, with ``all = true`` on the lists), so each listing or lookup
is one rpc whatever the number of contexts. Only ``--context`` asks context by context (an
unknown one is NOT_FOUND), and ``--device`` adds one ListContexts to learn which contexts live
on the device, since queues, jobs and buffers name their context, not its device.

Filters the API can apply (job states, one queue) are sent with the request; the others
(device, class, several queues) are applied here, so every noun accepts the same flags.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from npud.cli.connection import Connection
from npud.cli.exit_codes import CliError, ExitCode
from npud.v1 import buffer_pb2, context_pb2, device_pb2, job_pb2, stats_pb2, types_pb2

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Filters:
    """What the user narrowed a listing to; an empty tuple means "any"."""

    devices: tuple[str, ...] = ()
    contexts: tuple[str, ...] = ()
    classes: tuple[int, ...] = ()
    states: tuple[int, ...] = ()
    queues: tuple[str, ...] = ()


def _keep(selected: tuple[T, ...], value: T) -> bool:
    return not selected or value in selected


class Inventory:
    """Fan-out listings and lookups by id over one :class:`Connection` (borrowed, not owned)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn
        self._client = conn.client

    # ---- daemon-wide ---------------------------------------------------------------------

    def stats(self, device: str = "") -> stats_pb2.GetStatsResponse:
        """The daemon's statistics snapshot (every device, or one).

        Raises:
            CliError: NOT_FOUND for an unknown device, or any failed rpc.
        """
        return self._conn.call(
            self._client.stats_stub.GetStats, stats_pb2.GetStatsRequest(device=device)
        )

    def devices(self, f: Filters = Filters()) -> list[device_pb2.Device]:
        """Every device, or those named in ``f.devices``.

        Raises:
            CliError: a failed rpc.
        """
        resp = self._conn.call(
            self._client.device_stub.ListDevices, device_pb2.ListDevicesRequest()
        )
        return [d for d in resp.devices if _keep(f.devices, d.name)]

    def device(self, name: str) -> device_pb2.Device:
        """One device by name.

        Raises:
            CliError: NOT_FOUND for an unknown name.
        """
        return self._conn.call(
            self._client.device_stub.GetDevice, device_pb2.GetDeviceRequest(name=name)
        ).device

    # ---- contexts ------------------------------------------------------------------------

    def contexts(
        self, f: Filters = Filters(), *, by_class: bool = True
    ) -> list[context_pb2.Context]:
        """The contexts the caller may see (all of them for an admin), filtered.

        ``by_class`` applies ``f.classes`` to a context's default class; listings of queues
        and jobs filter their own class instead.

        Raises:
            CliError: NOT_FOUND for a ``--context`` that does not exist, or a failed rpc.
        """
        if f.contexts:
            found = [self.context(cid) for cid in f.contexts]
        else:
            req = context_pb2.ListContextsRequest(all=self._conn.admin)
            found = list(self._conn.call(self._client.context_stub.ListContexts, req).contexts)
        return [
            c
            for c in found
            if _keep(f.devices, c.device) and (not by_class or _keep(f.classes, c.default_class))
        ]

    def context(self, context_id: str) -> context_pb2.Context:
        """One context by id.

        Raises:
            CliError: NOT_FOUND for an unknown id (or another user's, for a non-admin).
        """
        req = context_pb2.GetContextRequest(context_id=context_id)
        return self._conn.call(self._client.context_stub.GetContext, req).context

    def _scoped(
        self, f: Filters, fetch: Callable[[str], list[T]], owner_ctx: Callable[[T], str]
    ) -> list[T]:
        """``fetch(context_id)`` over the contexts ``f`` names, or once with "" (every context
        the caller may see), then narrowed to ``f.devices``' contexts.

        Raises:
            CliError: a failed rpc (NOT_FOUND for an unknown ``--context``).
        """
        if f.contexts:
            out: list[T] = []
            for ctx in self.contexts(f, by_class=False):
                out.extend(fetch(ctx.context_id))
            return out
        items = fetch("")
        if f.devices:
            on_device = {c.context_id for c in self.contexts(f, by_class=False)}
            items = [i for i in items if owner_ctx(i) in on_device]
        return items

    # ---- queues, jobs, buffers -----------------------------------------------------------

    def _queues_of(self, context_id: str) -> list[job_pb2.Queue]:
        req = job_pb2.ListQueuesRequest(context_id=context_id, all=self._all(context_id))
        return list(self._conn.call(self._client.job_stub.ListQueues, req).queues)

    def _all(self, context_id: str) -> bool:
        # every owner's objects for an admin, as ListContexts(all) shows every owner's contexts
        return not context_id and self._conn.admin

    def queues(self, f: Filters = Filters()) -> list[job_pb2.Queue]:
        """Every visible queue, filtered by device, context, class and queue id.

        Raises:
            CliError: a failed rpc (NOT_FOUND for an unknown ``--context``).
        """
        return [
            q
            for q in self._scoped(f, self._queues_of, lambda q: q.context_id)
            if _keep(f.classes, q.scheduling_class) and _keep(f.queues, q.queue_id)
        ]

    def jobs(self, f: Filters = Filters()) -> list[job_pb2.Job]:
        """Every visible live or recently finished job, filtered.

        Raises:
            CliError: a failed rpc (NOT_FOUND for an unknown ``--context``).
        """

        def fetch(context_id: str) -> list[job_pb2.Job]:
            req = job_pb2.ListJobsRequest(
                context_id=context_id,
                queue_id=f.queues[0] if len(f.queues) == 1 else "",
                states=[types_pb2.JobState.ValueType(s) for s in f.states],
                all=self._all(context_id),
            )
            return list(self._conn.call(self._client.job_stub.ListJobs, req).jobs)

        return [
            j
            for j in self._scoped(f, fetch, lambda j: j.context_id)
            if _keep(f.classes, j.scheduling_class) and _keep(f.queues, j.queue_id)
        ]

    def buffers(self, f: Filters = Filters()) -> list[buffer_pb2.Buffer]:
        """Every buffer each visible context holds (a shared buffer once per holder).

        Raises:
            CliError: a failed rpc (NOT_FOUND for an unknown ``--context``).
        """

        def fetch(context_id: str) -> list[buffer_pb2.Buffer]:
            req = buffer_pb2.ListBuffersRequest(context_id=context_id, all=self._all(context_id))
            return list(self._conn.call(self._client.buffer_stub.ListBuffers, req).buffers)

        return self._scoped(f, fetch, lambda b: b.context_id)

    # ---- lookups by id -------------------------------------------------------------------

    def _not_found(self, noun: str, ident: str, f: Filters) -> CliError:
        where = f"context {f.contexts[0]}" if f.contexts else "any context you can see"
        scope = "" if self._conn.admin else " (you see only your own contexts; root sees all)"
        return CliError(f"no {noun} {ident!r} in {where}{scope}", ExitCode.NOT_FOUND)

    def find_queue(self, queue_id: str, f: Filters = Filters()) -> job_pb2.Queue:
        """The queue with id ``queue_id``.

        Raises:
            CliError: NOT_FOUND when no visible context has it.
        """
        for q in self._scoped(f, self._queues_of, lambda q: q.context_id):
            if q.queue_id == queue_id:
                return q
        raise self._not_found("queue", queue_id, f)

    def _get_job(self, context_id: str, job_id: str) -> job_pb2.Job | None:
        req = job_pb2.GetJobRequest(context_id=context_id, job_id=job_id)
        try:
            return self._conn.call(self._client.job_stub.GetJob, req).job
        except CliError as exc:
            if exc.code is ExitCode.NOT_FOUND:
                return None
            raise

    def _on_devices(self, job: job_pb2.Job, f: Filters) -> bool:
        if not f.devices:
            return True
        return job.context_id in {c.context_id for c in self.contexts(f, by_class=False)}

    def find_job(self, job_id: str, f: Filters = Filters()) -> job_pb2.Job:
        """The job with id ``job_id``, from whichever visible context holds it (one GetJob
        without a context id, or one per ``--context``).

        Raises:
            CliError: NOT_FOUND when no visible context has it.
        """
        if f.contexts:
            for ctx in self.contexts(f, by_class=False):
                job = self._get_job(ctx.context_id, job_id)
                if job is not None:
                    return job
        else:
            job = self._get_job("", job_id)
            if job is not None and self._on_devices(job, f):
                return job
        raise self._not_found("job", job_id, f)

    def find_buffer(self, buffer_id: str, f: Filters = Filters()) -> buffer_pb2.Buffer:
        """The buffer with id ``buffer_id`` as the first visible context holding it sees it.

        Raises:
            CliError: NOT_FOUND when no visible context holds it.
        """
        for b in self.buffers(f):
            if b.buffer_id == buffer_id:
                return b
        raise self._not_found("buffer", buffer_id, f)

    def cancel_job(self, job_id: str, f: Filters = Filters()) -> job_pb2.Job:
        """Cancel a job (queued: at once; running: aborted where the device can).

        Returns the job as the daemon reports it after the cancel (a finished job unchanged).
        Without ``--context`` or ``--device`` that is one CancelJob rpc, the daemon finding
        the job's context.

        Raises:
            CliError: NOT_FOUND when no visible context has it, or a failed rpc.
        """
        context_id = ""
        if f.contexts or f.devices:
            context_id = self.find_job(job_id, f).context_id
        req = job_pb2.CancelJobRequest(context_id=context_id, job_id=job_id)
        try:
            return self._conn.call(self._client.job_stub.CancelJob, req).job
        except CliError as exc:
            if exc.code is ExitCode.NOT_FOUND and not context_id:
                raise self._not_found("job", job_id, f) from None
            raise


__all__ = ["Filters", "Inventory"]
