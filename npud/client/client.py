"""The synchronous client: what an application imports to use npud from plain Python.

::

    import npud.client
    from npud.client import JobSpec, Bind, Access, SchedulingClass

    with npud.client.connect() as npu:               # handshake + session, on $NPUD_SOCKET
        ctx = npu.create_context(label="demo")
        q = npu.create_queue(ctx, SchedulingClass.LATENCY)
        buf = npu.create_buffer(ctx, 4096)
        npu.write_buffer(ctx, buf, b"\\0" * 4096)
        job = npu.submit(ctx, JobSpec(queue=q, command=program_bytes, bindings=(Bind(buf),)))
        job = npu.wait(ctx, job)                     # a typed Job; job.state, job.run_s ...

Every method converts npud's wire messages into frozen dataclasses (:mod:`npud.client.types`)
and failed rpcs into :mod:`npud.errors` exceptions (``QueueFull``, ``NotFound``, ...).

Lifetime: :func:`connect` opens a *session* (``ContextService.Session``) that stays open until
:meth:`Client.close`; when the process exits or dies, the daemon destroys the contexts it
created after a short grace period, so nothing leaks even after ``kill -9``.

A ``Client`` is safe to share between threads for unary calls; a :class:`SubmitStream` belongs
to one thread.
"""

from __future__ import annotations

import itertools
import os
import queue as queue_mod
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import grpc

from npud.client import requests as rq
from npud.client.channel import CHANNEL_OPTIONS, channel_target
from npud.client.channel import call as _call
from npud.client.channel import stream as _stream
from npud.client.descriptors import DescriptorChannel, MappedBuffer, sealed_memfd
from npud.client.errors import from_rpc_error
from npud.client.events import DeviceEvent, Event, event_from_wire
from npud.client.identity import Identity, handshake, tenant_credential
from npud.client.stats import Stats
from npud.client.submit_socket import SocketLine
from npud.client.types import (
    Buffer,
    Context,
    Device,
    Job,
    JobResult,
    JobSpec,
    Owner,
    Queue,
    Quotas,
    Readback,
    id_of,
    job_result_from_wire,
)
from npud.config import default_socket_path
from npud.errors import (
    FailedPrecondition,
    NpudError,
    OutOfDeviceMemory,
    Unavailable,
    Unsupported,
)
from npud.v1 import (
    buffer_pb2,
    buffer_pb2_grpc,
    context_pb2,
    context_pb2_grpc,
    device_pb2,
    device_pb2_grpc,
    job_pb2,
    job_pb2_grpc,
    stats_pb2,
    stats_pb2_grpc,
    system_pb2,
    system_pb2_grpc,
    tenant_pb2,
    tenant_pb2_grpc,
)
from npud.vocab import (
    TOKEN_KEY,
    BufferUsage,
    JobState,
    Persistence,
    SchedulingClass,
    TierPreference,
)
from npud.vocab.wire import PREFERENCE, USAGE

DESCRIPTOR_MIN_BYTES = 1 << 20
"""Below this, one gRPC message is cheaper than an export round trip and a mapping."""
_FALLBACK = (Unavailable, Unsupported, FailedPrecondition, OutOfDeviceMemory)
"""What sends a transfer back to gRPC bytes when descriptors are not insisted on."""


class _RpcLine:
    """The submit stream as the ``JobService.SubmitStream`` rpc (the portable line)."""

    def __init__(self, stub: job_pb2_grpc.JobServiceStub, md: Any) -> None:
        self._requests: queue_mod.SimpleQueue[job_pb2.SubmitStreamRequest | None] = (
            queue_mod.SimpleQueue()
        )
        self._responses = stub.SubmitStream(iter(self._requests.get, None), metadata=md)

    def send(self, req: job_pb2.SubmitStreamRequest) -> None:
        self._requests.put(req)

    def receive(self) -> job_pb2.SubmitStreamResponse:
        try:
            msg: job_pb2.SubmitStreamResponse = next(self._responses)
        except StopIteration:
            raise Unavailable("the submit stream ended (daemon shutting down?)") from None
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        return msg

    def close(self) -> None:
        self._requests.put(None)
        self._responses.cancel()


class SubmitStream:
    """The decode fast path: ``JobService.SubmitStream`` (one thread at a time).

    :meth:`run` submits one job and returns when it has finished, with the bytes of its
    readbacks: one round trip per decode step. :meth:`submit` + :meth:`next_result` pipeline
    several jobs; results come back in completion order, each with its tag. The stream goes
    over the daemon's submit socket when it is local (:mod:`npud.client.submit_socket`, the
    same messages without gRPC), else over the rpc; :attr:`via` says which.
    """

    def __init__(
        self,
        stub: job_pb2_grpc.JobServiceStub,
        ctx: rq.ContextRef,
        md: Any,
        *,
        line: SocketLine | None = None,
    ) -> None:
        self._ctx = ctx
        self._line: SocketLine | _RpcLine = line if line is not None else _RpcLine(stub, md)
        self.via = "socket" if line is not None else "grpc"
        self._tags = itertools.count(1)
        self._early: dict[int, JobResult] = {}
        self._closed = False

    def submit(self, spec: JobSpec, readbacks: Iterable[Readback] = ()) -> int:
        """Send one job; returns its tag (see :meth:`next_result`).

        Raises:
            Unavailable: the stream has ended.
        """
        tag = next(self._tags)
        self._line.send(rq.stream_entry(tag, self._ctx, spec, readbacks))
        return tag

    def next_result(self) -> tuple[int, JobResult]:
        """The next finished job (any tag), waiting for it.

        Raises:
            Unavailable: the stream ended (the daemon went away or shut down).
        """
        if self._early:
            tag = next(iter(self._early))
            return tag, self._early.pop(tag)
        return self._receive()

    def _receive(self) -> tuple[int, JobResult]:
        """The next result off the stream itself (never one already set aside)."""
        msg = self._line.receive()
        return msg.tag, job_result_from_wire(msg)

    def result(self, tag: int) -> JobResult:
        """Wait for the job submitted with ``tag``; results for other tags that arrive
        meanwhile are set aside for their own :meth:`result` (or :meth:`next_result`).

        Raises:
            Unavailable: the stream ended before ``tag``'s result came.
        """
        if tag in self._early:
            return self._early.pop(tag)
        while True:
            # Why _receive and not next_result: next_result hands back a set-aside result
            # first, so with any set aside (a refused job answers at once, before the jobs
            # submitted ahead of it finish) this loop took one out, put it back and took the
            # next, forever, without reading the stream again: a client waiting for an
            # admitted job behind refused ones spun until killed.
            got, res = self._receive()
            if got == tag:
                return res
            self._early[got] = res

    def run(self, spec: JobSpec, readbacks: Iterable[Readback] = ()) -> JobResult:
        """Submit one job and wait for it; the readbacks' bytes are in ``result.readbacks``."""
        return self.result(self.submit(spec, readbacks))

    def close(self) -> None:
        """End the stream (jobs already sent still run; their results are dropped)."""
        if not self._closed:
            self._closed = True
            self._line.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Client:
    """A connection to npud (see the module docstring). Use :func:`connect` to make one."""

    def __init__(
        self,
        socket_path: Path | str | None = None,
        *,
        session: bool = True,
        tenant: str | None = None,
        descriptors: bool | None = None,
        submit_socket: bool | None = None,
    ) -> None:
        """Connect: identity handshake, channel, the tenant (``tenant``, a credential, or the
        one :func:`~npud.client.identity.tenant_credential` finds in the environment) and
        (unless ``session=False``) a session.

        ``descriptors``: move bulk data as file descriptors over npud's descriptor socket
        (:mod:`npud.client.descriptors`): ``None`` (default) when the socket is there and the
        daemon can hand out the buffer, else gRPC bytes; ``False`` always gRPC bytes (the
        portable path); ``True`` insists (errors instead of falling back).

        ``submit_socket``: run submit streams over npud's submit socket
        (:mod:`npud.client.submit_socket`): ``None`` (default) when the socket is there, else
        the rpc; ``False`` always the rpc; ``True`` insists (Unavailable without the socket).

        Raises:
            Unavailable: npud is not running at the socket, or refuses us.
            Unauthenticated: the identity handshake failed, or the tenant credential is unknown.
        """
        self.socket_path = Path(socket_path) if socket_path else default_socket_path()
        self.descriptors = descriptors
        self.submit_socket = submit_socket
        self._channel_fds: DescriptorChannel | None = None
        self.identity: Identity = handshake(self.socket_path)
        self._md = ((TOKEN_KEY, self.identity.token),)
        self._channel = grpc.insecure_channel(
            channel_target(self.socket_path), options=CHANNEL_OPTIONS
        )
        self.system = system_pb2_grpc.SystemServiceStub(self._channel)
        self.device_stub = device_pb2_grpc.DeviceServiceStub(self._channel)
        self.context_stub = context_pb2_grpc.ContextServiceStub(self._channel)
        self.buffer_stub = buffer_pb2_grpc.BufferServiceStub(self._channel)
        self.job_stub = job_pb2_grpc.JobServiceStub(self._channel)
        self.stats_stub = stats_pb2_grpc.StatsServiceStub(self._channel)
        self.tenant_stub = tenant_pb2_grpc.TenantServiceStub(self._channel)
        self.tenant = ""  # the tenant joined ("" when acting as the user)
        self._session_stop = threading.Event()
        self._session: Any = None
        self.owner: Owner | None = None
        self.session_grace_s = 0.0
        try:
            credential = tenant_credential(tenant)
            if credential is not None:
                joined = _call(
                    lambda: self.tenant_stub.JoinTenant(
                        tenant_pb2.JoinTenantRequest(credential=credential), metadata=self._md
                    )
                )
                self.tenant = joined.tenant.name
            if session:
                self._open_session()
        except BaseException:
            self._channel.close()
            raise

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata carrying this client's token (for callers using raw stubs)."""
        return self._md

    def _open_session(self) -> None:
        stop = self._session_stop

        def requests() -> Iterator[context_pb2.SessionRequest]:
            yield context_pb2.SessionRequest(ping=1)
            stop.wait()

        self._session = self.context_stub.Session(requests(), metadata=self._md)
        first = _call(lambda: next(self._session))
        self.owner = Owner.from_wire(first.owner)
        self.session_grace_s = first.grace_period_s

    def close(self) -> None:
        """End the session (the daemon then releases this client's contexts) and the channel."""
        if self._channel_fds is not None:
            self._channel_fds.close()
            self._channel_fds = None
        self._session_stop.set()
        if self._session is not None:
            self._session.cancel()
            self._session = None
        self._channel.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # ---- system and devices -------------------------------------------------------------

    def version(self) -> str:
        """The daemon's version."""
        return _call(
            lambda: self.system.GetVersion(system_pb2.GetVersionRequest(), metadata=self._md)
        ).version

    def devices(self) -> list[Device]:
        """Every device (simulated ones have ``simulated=True``)."""
        resp = _call(
            lambda: self.device_stub.ListDevices(device_pb2.ListDevicesRequest(), metadata=self._md)
        )
        return [Device.from_wire(d) for d in resp.devices]

    def device(self, name: str) -> Device:
        """One device by name. Raises NotFound."""
        resp = _call(
            lambda: self.device_stub.GetDevice(
                device_pb2.GetDeviceRequest(name=name), metadata=self._md
            )
        )
        return Device.from_wire(resp.device)

    def watch_devices(self) -> Iterator[DeviceEvent]:
        """Every device once (ADDED), then each change, until the iterator is closed."""
        call = self.device_stub.WatchDevices(device_pb2.WatchDevicesRequest(), metadata=self._md)
        for msg in _stream(call):
            yield DeviceEvent.from_wire(msg)

    # ---- contexts -----------------------------------------------------------------------

    def create_context(
        self,
        device: str = "",
        *,
        default_class: SchedulingClass | None = None,
        weight: float = 1.0,
        quotas: Quotas | None = None,
        label: str = "",
    ) -> Context:
        """Open an execution context (on the first device unless ``device`` names one).

        Raises:
            NotFound: unknown device. QuotaExceeded: too many contexts for this user.
        """
        req = rq.create_context(device, default_class, weight, quotas, label)
        resp = _call(lambda: self.context_stub.CreateContext(req, metadata=self._md))
        return Context.from_wire(resp.context)

    def destroy_context(self, ctx: rq.ContextRef) -> None:
        """Cancel the context's queued jobs and release everything it holds. Raises NotFound."""
        req = context_pb2.DestroyContextRequest(context_id=id_of(ctx))
        _call(lambda: self.context_stub.DestroyContext(req, metadata=self._md))

    def contexts(self, *, all_owners: bool = False) -> list[Context]:
        """This user's contexts (every owner's with ``all_owners``, admins only)."""
        req = context_pb2.ListContextsRequest(all=all_owners)
        resp = _call(lambda: self.context_stub.ListContexts(req, metadata=self._md))
        return [Context.from_wire(c) for c in resp.contexts]

    def context(self, ctx: rq.ContextRef) -> Context:
        """A fresh snapshot of one context. Raises NotFound."""
        req = context_pb2.GetContextRequest(context_id=id_of(ctx))
        resp = _call(lambda: self.context_stub.GetContext(req, metadata=self._md))
        return Context.from_wire(resp.context)

    # ---- buffers ------------------------------------------------------------------------

    def create_buffer(
        self,
        ctx: rq.ContextRef,
        size: int,
        *,
        usage: BufferUsage = BufferUsage.SCRATCH,
        persistence: Persistence = Persistence.EPHEMERAL,
        tier: TierPreference = TierPreference.ANY,
        key: str = "",
    ) -> Buffer:
        """Allocate a buffer in a context (a PERSISTENT one needs ``key``).

        Raises:
            AlreadyExists: a persistent buffer with ``key`` exists (use :meth:`open_persistent`).
            QuotaExceeded / OutOfDeviceMemory: no room.
        """
        req = rq.create_buffer(ctx, size, usage=usage, persistence=persistence, tier=tier, key=key)
        resp = _call(lambda: self.buffer_stub.CreateBuffer(req, metadata=self._md))
        return Buffer.from_wire(resp.buffer)

    def write_buffer(
        self,
        ctx: rq.ContextRef,
        buf: rq.BufferRef,
        data: bytes | memoryview,
        *,
        offset: int = 0,
        chunk_size: int = rq.CHUNK_SIZE,
        seal: bool = False,
    ) -> Buffer:
        """Write ``data`` at ``offset``, streamed in chunks; ``seal`` then freezes a persistent
        buffer's contents and registers them under its key (other processes can open it).

        Raises:
            InvalidArgument: a range past the end. FailedPrecondition: the buffer is sealed.
        """
        view = memoryview(data).cast("B")
        if (
            not seal
            and view.nbytes >= DESCRIPTOR_MIN_BYTES
            and isinstance(buf, Buffer)
            and buf.persistence is Persistence.EPHEMERAL
            and self._may_map(buf)
        ):
            try:
                with self.map_buffer(ctx, buf, writable=True) as mapped:
                    if offset + view.nbytes <= mapped.size:
                        mapped.view[offset : offset + view.nbytes] = view
                        return Buffer.from_wire(mapped.buffer)
            except _FALLBACK as exc:
                if self.descriptors:
                    raise exc from None
        chunks = rq.write_chunks(ctx, buf, data, offset, chunk_size, seal=seal)
        resp = _call(lambda: self.buffer_stub.WriteBuffer(chunks, metadata=self._md))
        return Buffer.from_wire(resp.buffer)

    # ---- buffers as descriptors ---------------------------------------------------------

    def _may_map(self, buf: rq.BufferRef) -> bool:
        if self.descriptors is False:
            return False
        return not (
            isinstance(buf, Buffer) and buf.persistence is Persistence.PERSISTENT and not buf.sealed
        )

    def descriptor_channel(self) -> DescriptorChannel:
        """This client's connection to the descriptor socket (opened on first use).

        Raises:
            Unavailable: no descriptor socket (a remote or older npud); use gRPC bytes.
            Unsupported: descriptors were turned off (``descriptors=False``).
        """
        if self.descriptors is False:
            raise Unsupported("this client was made with descriptors=False")
        if self._channel_fds is None:
            self._channel_fds = DescriptorChannel(self.socket_path, self.identity.token)
        return self._channel_fds

    def map_buffer(
        self, ctx: rq.ContextRef, buf: rq.BufferRef, *, writable: bool = False
    ) -> MappedBuffer:
        """Map a buffer's memory into this process (zero copy); close the result (or use it
        as a context manager) to unmap it and unpin the buffer. Writable for EPHEMERAL
        buffers; a sealed persistent buffer maps read-only (writing it is impossible).

        Raises:
            Unavailable: no descriptor socket. NotFound: no such buffer in the context.
            FailedPrecondition: writable asked of a persistent buffer, or an unsealed one.
            Unsupported: the device cannot hand out this buffer's memory.
        """
        return self.descriptor_channel().map(id_of(ctx), id_of(buf), writable=writable)

    def upload(
        self,
        ctx: rq.ContextRef,
        data: bytes | memoryview,
        *,
        key: str = "",
        usage: BufferUsage = BufferUsage.WEIGHTS,
        tier: TierPreference = TierPreference.ANY,
    ) -> Buffer:
        """Create a sealed PERSISTENT buffer holding ``data`` under ``key`` (``""``: keyed
        by its sha256) in one step. Locally, ``data`` is written once into a sealed memfd
        whose pages become the buffer (the daemon copies nothing); otherwise, or when the
        device cannot take a client's memory, it is created and streamed over gRPC.

        Raises:
            AlreadyExists: ``key`` exists (open it instead). QuotaExceeded.
            InvalidArgument: a content key that does not match ``data``.
        """
        view = memoryview(data).cast("B")
        if self.descriptors is not False:
            try:
                channel = self.descriptor_channel()
                fd = sealed_memfd(view)
                try:
                    wire = channel.import_sealed(
                        id_of(ctx),
                        fd,
                        view.nbytes,
                        usage=USAGE.to_wire(usage),
                        tier=PREFERENCE.to_wire(tier),
                        key=key,
                    )
                finally:
                    os.close(fd)
                return Buffer.from_wire(wire)
            except _FALLBACK as exc:
                if self.descriptors:
                    raise exc from None
        created = self.create_buffer(
            ctx, view.nbytes, usage=usage, persistence=Persistence.PERSISTENT, tier=tier, key=key
        )
        return self.write_buffer(ctx, created, view, seal=True)

    def read_buffer(
        self, ctx: rq.ContextRef, buf: rq.BufferRef, *, offset: int = 0, size: int = 0
    ) -> bytes:
        """Read ``size`` bytes at ``offset`` (``size=0``: to the end). A large read of an
        EPHEMERAL or sealed buffer is one copy out of its mapped memory when descriptors are
        in use (see :class:`Client`)."""
        known = buf.size if isinstance(buf, Buffer) else 0
        want = size or max(0, known - offset)
        if want >= DESCRIPTOR_MIN_BYTES and self._may_map(buf):
            try:
                with self.map_buffer(ctx, buf) as mapped:
                    if offset + want <= mapped.size:
                        return bytes(mapped.view[offset : offset + want])
            except _FALLBACK as exc:
                if self.descriptors:
                    raise exc from None
        req = buffer_pb2.ReadBufferRequest(
            context_id=id_of(ctx), buffer_id=id_of(buf), offset=offset, size=size
        )
        return b"".join(
            m.data for m in _stream(self.buffer_stub.ReadBuffer(req, metadata=self._md))
        )

    def open_persistent(self, ctx: rq.ContextRef, key: str) -> Buffer:
        """Attach the persistent buffer ``key`` to a context. Raises NotFound."""
        req = buffer_pb2.OpenPersistentBufferRequest(context_id=id_of(ctx), key=key)
        resp = _call(lambda: self.buffer_stub.OpenPersistentBuffer(req, metadata=self._md))
        return Buffer.from_wire(resp.buffer)

    def pin_buffer(self, ctx: rq.ContextRef, buf: rq.BufferRef) -> Buffer:
        """Keep a buffer resident until :meth:`unpin_buffer`."""
        req = buffer_pb2.PinBufferRequest(context_id=id_of(ctx), buffer_id=id_of(buf))
        return Buffer.from_wire(
            _call(lambda: self.buffer_stub.PinBuffer(req, metadata=self._md)).buffer
        )

    def unpin_buffer(self, ctx: rq.ContextRef, buf: rq.BufferRef) -> Buffer:
        """Drop one pin. Raises FailedPrecondition when not pinned."""
        req = buffer_pb2.UnpinBufferRequest(context_id=id_of(ctx), buffer_id=id_of(buf))
        return Buffer.from_wire(
            _call(lambda: self.buffer_stub.UnpinBuffer(req, metadata=self._md)).buffer
        )

    def release_buffer(self, ctx: rq.ContextRef, buf: rq.BufferRef) -> None:
        """Drop the context's reference (ephemeral: freed; persistent: kept warm)."""
        req = buffer_pb2.ReleaseBufferRequest(context_id=id_of(ctx), buffer_id=id_of(buf))
        _call(lambda: self.buffer_stub.ReleaseBuffer(req, metadata=self._md))

    def buffers(
        self, ctx: rq.ContextRef | None = None, *, all_owners: bool = False
    ) -> list[Buffer]:
        """The buffers a context holds (``ctx`` ``None``: every context of this user, or of
        every owner with ``all_owners``, admins only; a shared buffer once per holder)."""
        req = rq.list_buffers(ctx, all_owners)
        resp = _call(lambda: self.buffer_stub.ListBuffers(req, metadata=self._md))
        return [Buffer.from_wire(b) for b in resp.buffers]

    # ---- queues and jobs ----------------------------------------------------------------

    def create_queue(
        self,
        ctx: rq.ContextRef,
        scheduling_class: SchedulingClass | None = None,
        *,
        priority: int = 0,
        depth_limit: int = 0,
        in_order: bool = True,
        label: str = "",
    ) -> Queue:
        """Add a job queue (the context's default class unless given). Raises QuotaExceeded."""
        req = rq.create_queue(
            ctx,
            scheduling_class=scheduling_class,
            priority=priority,
            depth_limit=depth_limit,
            in_order=in_order,
            label=label,
        )
        resp = _call(lambda: self.job_stub.CreateQueue(req, metadata=self._md))
        return Queue.from_wire(resp.queue)

    def destroy_queue(self, ctx: rq.ContextRef, q: rq.QueueRef) -> None:
        """Cancel the queue's queued jobs and remove it."""
        req = job_pb2.DestroyQueueRequest(context_id=id_of(ctx), queue_id=id_of(q))
        _call(lambda: self.job_stub.DestroyQueue(req, metadata=self._md))

    def queues(self, ctx: rq.ContextRef | None = None, *, all_owners: bool = False) -> list[Queue]:
        """A context's queues (``ctx`` ``None``: every context of this user, or of every
        owner with ``all_owners``, admins only)."""
        req = rq.list_queues(ctx, all_owners)
        resp = _call(lambda: self.job_stub.ListQueues(req, metadata=self._md))
        return [Queue.from_wire(q) for q in resp.queues]

    def submit_many(self, ctx: rq.ContextRef, specs: Iterable[JobSpec]) -> list[Job]:
        """Submit a batch: all admitted or none (QueueFull, DeadlineInfeasible, ...)."""
        req = rq.submit_jobs(ctx, specs)
        resp = _call(lambda: self.job_stub.SubmitJobs(req, metadata=self._md))
        return [Job.from_wire(j) for j in resp.jobs]

    def submit(self, ctx: rq.ContextRef, spec: JobSpec) -> Job:
        """Submit one job; returns it as admitted (QUEUED). See :meth:`submit_many`."""
        return self.submit_many(ctx, (spec,))[0]

    def wait(self, ctx: rq.ContextRef, job: rq.JobRef, *, timeout_s: float = 0.0) -> Job:
        """Wait until the job finishes (or ``timeout_s`` passes: then it is returned as is)."""
        req = job_pb2.WaitJobRequest(context_id=id_of(ctx), job_id=id_of(job), timeout_s=timeout_s)
        return Job.from_wire(_call(lambda: self.job_stub.WaitJob(req, metadata=self._md)).job)

    def cancel(self, ctx: rq.ContextRef | None, job: rq.JobRef) -> Job:
        """Cancel a queued job, or abort a running one where the device can (``ctx`` ``None``:
        wherever the job is among the contexts this user may reach)."""
        req = rq.cancel_job(ctx, job)
        return Job.from_wire(_call(lambda: self.job_stub.CancelJob(req, metadata=self._md)).job)

    def job(self, ctx: rq.ContextRef | None, job: rq.JobRef) -> Job:
        """A fresh snapshot of one job (``ctx`` ``None``: wherever it is among the contexts
        this user may reach). Raises NotFound."""
        req = rq.get_job(ctx, job)
        return Job.from_wire(_call(lambda: self.job_stub.GetJob(req, metadata=self._md)).job)

    def jobs(
        self,
        ctx: rq.ContextRef | None = None,
        *,
        queue: rq.QueueRef | None = None,
        states: Iterable[JobState] = (),
        all_owners: bool = False,
    ) -> list[Job]:
        """A context's live and recently finished jobs, optionally filtered (``ctx`` ``None``:
        every context of this user, or of every owner with ``all_owners``, admins only)."""
        req = rq.list_jobs(ctx, queue, states, all_owners)
        resp = _call(lambda: self.job_stub.ListJobs(req, metadata=self._md))
        return [Job.from_wire(j) for j in resp.jobs]

    def watch_jobs(
        self, ctx: rq.ContextRef | None = None, *, all_owners: bool = False
    ) -> Iterator[Job]:
        """Every state change of this user's jobs (one context's if given) until closed."""
        req = job_pb2.WatchJobsRequest(context_id="" if ctx is None else id_of(ctx), all=all_owners)
        for msg in _stream(self.job_stub.WatchJobs(req, metadata=self._md)):
            yield Job.from_wire(msg.job)

    def submit_stream(self, ctx: rq.ContextRef) -> SubmitStream:
        """Open the decode fast path for one context (a context manager): over the submit
        socket when npud is local (see ``submit_socket`` in :class:`Client`), else the rpc.

        Raises:
            Unavailable: ``submit_socket=True`` and there is no submit socket to use.
            Unauthenticated: the submit socket refused this client's session token.
        """
        line = None
        if self.submit_socket is not False:
            line = SocketLine.connect(self.socket_path, self.identity.token)
            if line is None and self.submit_socket:
                raise Unavailable(
                    f"no submit socket beside {self.socket_path} that this process may open"
                )
        return SubmitStream(self.job_stub, ctx, self._md, line=line)

    def run(
        self, ctx: rq.ContextRef, spec: JobSpec, readbacks: Iterable[Readback] = ()
    ) -> JobResult:
        """Submit one job over a short-lived submit stream and wait for it, with readbacks."""
        with self.submit_stream(ctx) as stream:
            return stream.run(spec, readbacks)

    # ---- statistics ---------------------------------------------------------------------

    def stats(self, device: str = "") -> Stats:
        """A statistics snapshot of every device (or one)."""
        req = stats_pb2.GetStatsRequest(device=device)
        return Stats.from_wire(_call(lambda: self.stats_stub.GetStats(req, metadata=self._md)))

    def events(self, *, interval_s: float = 1.0, all_owners: bool = False) -> Iterator[Event]:
        """Statistics every ``interval_s`` and job/context/device events in between."""
        req = stats_pb2.StreamEventsRequest(interval_s=interval_s, all=all_owners)
        for msg in _stream(self.stats_stub.StreamEvents(req, metadata=self._md)):
            event = event_from_wire(msg)
            if event is not None:
                yield event


def connect(
    socket_path: Path | str | None = None,
    *,
    session: bool = True,
    tenant: str | None = None,
    descriptors: bool | None = None,
    submit_socket: bool | None = None,
) -> Client:
    """Connect to npud (``$NPUD_SOCKET`` or the default socket unless given), as the tenant
    whose credential is ``tenant`` or in the environment (``$NPUD_TENANT_FILE``), if any.

    Use as a context manager: ``with npud.client.connect() as npu: ...``. ``descriptors``
    and ``submit_socket``: see :class:`Client` (bulk data as file descriptors, and submit
    streams without gRPC, when local).

    Raises:
        Unavailable: npud is not running at the socket, or refuses us.
        Unauthenticated: the tenant credential is unknown to the daemon.
    """
    return Client(
        socket_path,
        session=session,
        tenant=tenant,
        descriptors=descriptors,
        submit_socket=submit_socket,
    )


__all__ = ["Client", "NpudError", "SubmitStream", "connect"]
