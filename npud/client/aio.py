"""The asyncio client: the same API as :class:`npud.client.Client`, with ``await``.

::

    import npud.client.aio

    async with npud.client.aio.connect() as npu:
        ctx = await npu.create_context(label="decoder")
        q = await npu.create_queue(ctx, SchedulingClass.LATENCY)
        async with npu.submit_stream(ctx) as stream:
            res = await stream.run(JobSpec(q, step_bytes, bindings), [Readback(out, 0, 4)])
            token = int.from_bytes(res.readbacks[0], "little")

An :class:`AsyncClient` and its streams belong to the event loop that created them.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

import grpc
import grpc.aio

from npud.client import requests as rq
from npud.client.channel import CHANNEL_OPTIONS, channel_target
from npud.client.errors import from_rpc_error
from npud.client.events import DeviceEvent, Event, event_from_wire
from npud.client.identity import Identity, handshake_async, tenant_credential
from npud.client.stats import Stats
from npud.client.submit_socket import AsyncSocketLine
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
from npud.errors import Unavailable
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

T = TypeVar("T")


async def _call(awaitable: Awaitable[T]) -> T:
    try:
        return await awaitable
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from None


async def _stream(call: Any) -> AsyncIterator[Any]:
    try:
        async for msg in call:
            yield msg
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from None
    finally:
        call.cancel()


class _AsyncRpcLine:
    """The submit stream as the ``JobService.SubmitStream`` rpc (the portable line)."""

    def __init__(
        self,
        stub: Any,
        md: Any,
        deliver: Callable[[job_pb2.SubmitStreamResponse], None],
        fail: Callable[[BaseException], None],
    ) -> None:
        self._call = stub.SubmitStream(metadata=md)
        self._deliver = deliver
        self._fail = fail
        self._write_lock = asyncio.Lock()  # grpc.aio allows one write in flight per call
        self._reader = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                msg = await self._call.read()
                if msg is grpc.aio.EOF:
                    raise Unavailable("the submit stream ended (daemon shutting down?)")
                self._deliver(msg)
        except grpc.RpcError as exc:
            self._fail(from_rpc_error(exc))
        except Unavailable as exc:
            self._fail(exc)

    async def write(self, req: job_pb2.SubmitStreamRequest) -> None:
        try:
            async with self._write_lock:
                await self._call.write(req)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None

    async def close(self) -> None:
        self._call.cancel()
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)


class AsyncSubmitStream:
    """The decode fast path on asyncio: ``JobService.SubmitStream``, over the daemon's submit
    socket when it is local (:mod:`npud.client.submit_socket`), else over the rpc.

    Several coroutines may :meth:`run` jobs on one stream at once: each result goes to the
    coroutine waiting for its tag. The line is opened by the first :meth:`submit`;
    :attr:`via` then says which it is (``"socket"`` or ``"grpc"``).
    """

    def __init__(
        self,
        stub: Any,
        ctx: rq.ContextRef,
        md: Any,
        *,
        socket_path: Path | None = None,
        token: str = "",
        use_socket: bool | None = None,
    ) -> None:
        self._stub = stub
        self._ctx = ctx
        self._md = md
        self._socket_path = socket_path
        self._token = token
        self._use_socket = use_socket if socket_path is not None else False
        self._line: AsyncSocketLine | _AsyncRpcLine | None = None
        self._opening = asyncio.Lock()
        self._tags = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[JobResult]] = {}
        self._failure: BaseException | None = None
        self.via = ""

    async def _open(self) -> AsyncSocketLine | _AsyncRpcLine:
        async with self._opening:
            if self._line is not None:
                return self._line
            line: AsyncSocketLine | _AsyncRpcLine | None = None
            if self._use_socket is not False:
                assert self._socket_path is not None
                line = await AsyncSocketLine.open(
                    self._socket_path, self._token, self._deliver, self._fail
                )
                if line is None and self._use_socket:
                    raise Unavailable(
                        f"no submit socket beside {self._socket_path} that this process may open"
                    )
            if line is None:
                line = _AsyncRpcLine(self._stub, self._md, self._deliver, self._fail)
            self.via = "socket" if isinstance(line, AsyncSocketLine) else "grpc"
            self._line = line
            return line

    def _deliver(self, msg: job_pb2.SubmitStreamResponse) -> None:
        fut = self._waiting.pop(msg.tag, None)
        if fut is not None and not fut.done():
            fut.set_result(job_result_from_wire(msg))

    def _fail(self, exc: BaseException) -> None:
        self._failure = exc
        for fut in self._waiting.values():
            if not fut.done():
                fut.set_exception(exc)
        self._waiting.clear()

    async def submit(
        self, spec: JobSpec, readbacks: Iterable[Readback] = ()
    ) -> asyncio.Future[JobResult]:
        """Send one job; the returned future resolves when it has finished.

        Raises:
            Unavailable: the stream has ended (or ``submit_socket=True`` and there is no
                submit socket to use).
            NpudError: the daemon ended the stream, or refused its handshake.
        """
        if self._failure is not None:
            raise self._failure
        line = self._line if self._line is not None else await self._open()
        tag = next(self._tags)
        fut: asyncio.Future[JobResult] = asyncio.get_running_loop().create_future()
        self._waiting[tag] = fut
        try:
            await line.write(rq.stream_entry(tag, self._ctx, spec, readbacks))
        except BaseException:
            self._waiting.pop(tag, None)
            raise
        return fut

    async def run(self, spec: JobSpec, readbacks: Iterable[Readback] = ()) -> JobResult:
        """Submit one job and wait for it; the readbacks' bytes are in ``result.readbacks``."""
        return await (await self.submit(spec, readbacks))

    async def close(self) -> None:
        """End the stream; results not yet received are dropped."""
        line, self._line = self._line, None
        if isinstance(line, _AsyncRpcLine):
            await line.close()
        elif line is not None:
            line.close()
        if self._failure is None:
            self._failure = Unavailable("the submit stream was closed")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class AsyncClient:
    """A connection to npud on asyncio. Use :func:`connect` to make one."""

    def __init__(
        self,
        socket_path: Path | str | None = None,
        *,
        tenant: str | None = None,
        submit_socket: bool | None = None,
    ) -> None:
        """``submit_socket``: as for the sync :class:`~npud.client.Client` (submit streams
        over the daemon's submit socket when it is there, ``False`` always the rpc, ``True``
        insists)."""
        self.socket_path = Path(socket_path) if socket_path else default_socket_path()
        self.submit_socket = submit_socket
        self._tenant_credential = tenant
        self.tenant = ""  # the tenant joined ("" when acting as the user)
        self.identity: Identity | None = None
        self.owner: Owner | None = None
        self.session_grace_s = 0.0
        self._md: tuple[tuple[str, str], ...] = ()
        self._channel: grpc.aio.Channel | None = None
        self._session: Any = None

    async def open(self, *, session: bool = True) -> Self:
        """Handshake, open the channel, join the tenant (see the sync :class:`Client`) and
        (unless ``session=False``) open the session.

        Raises:
            Unavailable: npud is not running at the socket, or refuses us.
            Unauthenticated: the tenant credential is unknown to the daemon.
        """
        self.identity = await handshake_async(self.socket_path)
        self._md = ((TOKEN_KEY, self.identity.token),)
        self._channel = grpc.aio.insecure_channel(
            channel_target(self.socket_path), options=CHANNEL_OPTIONS
        )
        ch = self._channel
        self.system = system_pb2_grpc.SystemServiceStub(ch)
        self.device_stub = device_pb2_grpc.DeviceServiceStub(ch)
        self.context_stub = context_pb2_grpc.ContextServiceStub(ch)
        self.buffer_stub = buffer_pb2_grpc.BufferServiceStub(ch)
        self.job_stub = job_pb2_grpc.JobServiceStub(ch)
        self.stats_stub = stats_pb2_grpc.StatsServiceStub(ch)
        self.tenant_stub = tenant_pb2_grpc.TenantServiceStub(ch)
        try:
            credential = tenant_credential(self._tenant_credential)
            if credential is not None:
                req = tenant_pb2.JoinTenantRequest(credential=credential)
                joined = await _call(self.tenant_stub.JoinTenant(req, metadata=self._md))
                self.tenant = joined.tenant.name
        except BaseException:
            await self.close()
            raise
        if session:
            try:
                self._session = self.context_stub.Session(metadata=self._md)
                await self._session.write(context_pb2.SessionRequest(ping=1))
                first = await _call(self._session.read())
                if first is grpc.aio.EOF:
                    raise Unavailable("npud closed the session at once (shutting down?)")
                self.owner = Owner.from_wire(first.owner)
                self.session_grace_s = first.grace_period_s
            except BaseException:
                await self.close()
                raise
        return self

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """The call metadata carrying this client's token (for callers using raw stubs)."""
        return self._md

    async def close(self) -> None:
        """End the session (the daemon then releases this client's contexts) and the channel."""
        if self._session is not None:
            self._session.cancel()
            self._session = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # ---- system and devices -------------------------------------------------------------

    async def version(self) -> str:
        """The daemon's version."""
        req = system_pb2.GetVersionRequest()
        return (await _call(self.system.GetVersion(req, metadata=self._md))).version

    async def devices(self) -> list[Device]:
        """Every device (simulated ones have ``simulated=True``)."""
        req = device_pb2.ListDevicesRequest()
        resp = await _call(self.device_stub.ListDevices(req, metadata=self._md))
        return [Device.from_wire(d) for d in resp.devices]

    async def device(self, name: str) -> Device:
        """One device by name. Raises NotFound."""
        req = device_pb2.GetDeviceRequest(name=name)
        return Device.from_wire(
            (await _call(self.device_stub.GetDevice(req, metadata=self._md))).device
        )

    async def watch_devices(self) -> AsyncIterator[DeviceEvent]:
        """Every device once (ADDED), then each change."""
        call = self.device_stub.WatchDevices(device_pb2.WatchDevicesRequest(), metadata=self._md)
        async for msg in _stream(call):
            yield DeviceEvent.from_wire(msg)

    # ---- contexts -----------------------------------------------------------------------

    async def create_context(
        self,
        device: str = "",
        *,
        default_class: SchedulingClass | None = None,
        weight: float = 1.0,
        quotas: Quotas | None = None,
        label: str = "",
    ) -> Context:
        """Open an execution context (see :meth:`npud.client.Client.create_context`)."""
        req = rq.create_context(device, default_class, weight, quotas, label)
        resp = await _call(self.context_stub.CreateContext(req, metadata=self._md))
        return Context.from_wire(resp.context)

    async def destroy_context(self, ctx: rq.ContextRef) -> None:
        """Cancel the context's queued jobs and release everything it holds."""
        req = context_pb2.DestroyContextRequest(context_id=id_of(ctx))
        await _call(self.context_stub.DestroyContext(req, metadata=self._md))

    async def contexts(self, *, all_owners: bool = False) -> list[Context]:
        """This user's contexts (every owner's with ``all_owners``, admins only)."""
        req = context_pb2.ListContextsRequest(all=all_owners)
        resp = await _call(self.context_stub.ListContexts(req, metadata=self._md))
        return [Context.from_wire(c) for c in resp.contexts]

    async def context(self, ctx: rq.ContextRef) -> Context:
        """A fresh snapshot of one context."""
        req = context_pb2.GetContextRequest(context_id=id_of(ctx))
        resp = await _call(self.context_stub.GetContext(req, metadata=self._md))
        return Context.from_wire(resp.context)

    # ---- buffers ------------------------------------------------------------------------

    async def create_buffer(
        self,
        ctx: rq.ContextRef,
        size: int,
        *,
        usage: BufferUsage = BufferUsage.SCRATCH,
        persistence: Persistence = Persistence.EPHEMERAL,
        tier: TierPreference = TierPreference.ANY,
        key: str = "",
    ) -> Buffer:
        """Allocate a buffer (see :meth:`npud.client.Client.create_buffer`)."""
        req = rq.create_buffer(ctx, size, usage=usage, persistence=persistence, tier=tier, key=key)
        resp = await _call(self.buffer_stub.CreateBuffer(req, metadata=self._md))
        return Buffer.from_wire(resp.buffer)

    async def write_buffer(
        self,
        ctx: rq.ContextRef,
        buf: rq.BufferRef,
        data: bytes | memoryview,
        *,
        offset: int = 0,
        chunk_size: int = rq.CHUNK_SIZE,
        seal: bool = False,
    ) -> Buffer:
        """Write ``data`` at ``offset``, streamed in chunks."""
        chunks = rq.write_chunks(ctx, buf, data, offset, chunk_size, seal=seal)
        resp = await _call(self.buffer_stub.WriteBuffer(iter(chunks), metadata=self._md))
        return Buffer.from_wire(resp.buffer)

    async def read_buffer(
        self, ctx: rq.ContextRef, buf: rq.BufferRef, *, offset: int = 0, size: int = 0
    ) -> bytes:
        """Read ``size`` bytes at ``offset`` (``size=0``: to the end)."""
        req = buffer_pb2.ReadBufferRequest(
            context_id=id_of(ctx), buffer_id=id_of(buf), offset=offset, size=size
        )
        parts = [m.data async for m in _stream(self.buffer_stub.ReadBuffer(req, metadata=self._md))]
        return b"".join(parts)

    async def open_persistent(self, ctx: rq.ContextRef, key: str) -> Buffer:
        """Attach the persistent buffer ``key`` to a context. Raises NotFound."""
        req = buffer_pb2.OpenPersistentBufferRequest(context_id=id_of(ctx), key=key)
        resp = await _call(self.buffer_stub.OpenPersistentBuffer(req, metadata=self._md))
        return Buffer.from_wire(resp.buffer)

    async def pin_buffer(self, ctx: rq.ContextRef, buf: rq.BufferRef) -> Buffer:
        """Keep a buffer resident until :meth:`unpin_buffer`."""
        req = buffer_pb2.PinBufferRequest(context_id=id_of(ctx), buffer_id=id_of(buf))
        return Buffer.from_wire(
            (await _call(self.buffer_stub.PinBuffer(req, metadata=self._md))).buffer
        )

    async def unpin_buffer(self, ctx: rq.ContextRef, buf: rq.BufferRef) -> Buffer:
        """Drop one pin."""
        req = buffer_pb2.UnpinBufferRequest(context_id=id_of(ctx), buffer_id=id_of(buf))
        return Buffer.from_wire(
            (await _call(self.buffer_stub.UnpinBuffer(req, metadata=self._md))).buffer
        )

    async def release_buffer(self, ctx: rq.ContextRef, buf: rq.BufferRef) -> None:
        """Drop the context's reference (ephemeral: freed; persistent: kept warm)."""
        req = buffer_pb2.ReleaseBufferRequest(context_id=id_of(ctx), buffer_id=id_of(buf))
        await _call(self.buffer_stub.ReleaseBuffer(req, metadata=self._md))

    async def buffers(
        self, ctx: rq.ContextRef | None = None, *, all_owners: bool = False
    ) -> list[Buffer]:
        """The buffers a context holds (``ctx`` ``None``: every context of this user, or of
        every owner with ``all_owners``, admins only; a shared buffer once per holder)."""
        req = rq.list_buffers(ctx, all_owners)
        resp = await _call(self.buffer_stub.ListBuffers(req, metadata=self._md))
        return [Buffer.from_wire(b) for b in resp.buffers]

    # ---- queues and jobs ----------------------------------------------------------------

    async def create_queue(
        self,
        ctx: rq.ContextRef,
        scheduling_class: SchedulingClass | None = None,
        *,
        priority: int = 0,
        depth_limit: int = 0,
        in_order: bool = True,
        label: str = "",
    ) -> Queue:
        """Add a job queue (the context's default class unless given)."""
        req = rq.create_queue(
            ctx,
            scheduling_class=scheduling_class,
            priority=priority,
            depth_limit=depth_limit,
            in_order=in_order,
            label=label,
        )
        resp = await _call(self.job_stub.CreateQueue(req, metadata=self._md))
        return Queue.from_wire(resp.queue)

    async def destroy_queue(self, ctx: rq.ContextRef, q: rq.QueueRef) -> None:
        """Cancel the queue's queued jobs and remove it."""
        req = job_pb2.DestroyQueueRequest(context_id=id_of(ctx), queue_id=id_of(q))
        await _call(self.job_stub.DestroyQueue(req, metadata=self._md))

    async def queues(
        self, ctx: rq.ContextRef | None = None, *, all_owners: bool = False
    ) -> list[Queue]:
        """A context's queues (``ctx`` ``None``: every context of this user, or of every
        owner with ``all_owners``, admins only)."""
        req = rq.list_queues(ctx, all_owners)
        resp = await _call(self.job_stub.ListQueues(req, metadata=self._md))
        return [Queue.from_wire(q) for q in resp.queues]

    async def submit_many(self, ctx: rq.ContextRef, specs: Iterable[JobSpec]) -> list[Job]:
        """Submit a batch: all admitted or none."""
        req = rq.submit_jobs(ctx, specs)
        resp = await _call(self.job_stub.SubmitJobs(req, metadata=self._md))
        return [Job.from_wire(j) for j in resp.jobs]

    async def submit(self, ctx: rq.ContextRef, spec: JobSpec) -> Job:
        """Submit one job; returns it as admitted."""
        return (await self.submit_many(ctx, (spec,)))[0]

    async def wait(self, ctx: rq.ContextRef, job: rq.JobRef, *, timeout_s: float = 0.0) -> Job:
        """Wait until the job finishes (or ``timeout_s`` passes: then it is returned as is)."""
        req = job_pb2.WaitJobRequest(context_id=id_of(ctx), job_id=id_of(job), timeout_s=timeout_s)
        return Job.from_wire((await _call(self.job_stub.WaitJob(req, metadata=self._md))).job)

    async def cancel(self, ctx: rq.ContextRef | None, job: rq.JobRef) -> Job:
        """Cancel a queued job, or abort a running one where the device can (``ctx`` ``None``:
        wherever the job is among the contexts this user may reach)."""
        req = rq.cancel_job(ctx, job)
        return Job.from_wire((await _call(self.job_stub.CancelJob(req, metadata=self._md))).job)

    async def job(self, ctx: rq.ContextRef | None, job: rq.JobRef) -> Job:
        """A fresh snapshot of one job (``ctx`` ``None``: wherever it is among the contexts
        this user may reach)."""
        req = rq.get_job(ctx, job)
        return Job.from_wire((await _call(self.job_stub.GetJob(req, metadata=self._md))).job)

    async def jobs(
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
        resp = await _call(self.job_stub.ListJobs(req, metadata=self._md))
        return [Job.from_wire(j) for j in resp.jobs]

    async def watch_jobs(
        self, ctx: rq.ContextRef | None = None, *, all_owners: bool = False
    ) -> AsyncIterator[Job]:
        """Every state change of this user's jobs (one context's if given)."""
        req = job_pb2.WatchJobsRequest(context_id="" if ctx is None else id_of(ctx), all=all_owners)
        async for msg in _stream(self.job_stub.WatchJobs(req, metadata=self._md)):
            yield Job.from_wire(msg.job)

    def submit_stream(self, ctx: rq.ContextRef) -> AsyncSubmitStream:
        """Open the decode fast path for one context (``async with``): over the submit socket
        when npud is local (see ``submit_socket``), else the rpc; the first submit opens it."""
        assert self.identity is not None, "open() the client first"
        return AsyncSubmitStream(
            self.job_stub,
            ctx,
            self._md,
            socket_path=self.socket_path,
            token=self.identity.token,
            use_socket=self.submit_socket,
        )

    # ---- statistics ---------------------------------------------------------------------

    async def stats(self, device: str = "") -> Stats:
        """A statistics snapshot of every device (or one)."""
        req = stats_pb2.GetStatsRequest(device=device)
        return Stats.from_wire(await _call(self.stats_stub.GetStats(req, metadata=self._md)))

    async def events(
        self, *, interval_s: float = 1.0, all_owners: bool = False
    ) -> AsyncIterator[Event]:
        """Statistics every ``interval_s`` and job/context/device events in between."""
        req = stats_pb2.StreamEventsRequest(interval_s=interval_s, all=all_owners)
        async for msg in _stream(self.stats_stub.StreamEvents(req, metadata=self._md)):
            event = event_from_wire(msg)
            if event is not None:
                yield event


class _Connect:
    """``await connect()`` or ``async with connect() as npu``."""

    def __init__(
        self,
        socket_path: Path | str | None,
        session: bool,
        tenant: str | None,
        submit_socket: bool | None,
    ) -> None:
        self._client = AsyncClient(socket_path, tenant=tenant, submit_socket=submit_socket)
        self._session = session

    def __await__(self) -> Any:
        return self._client.open(session=self._session).__await__()

    async def __aenter__(self) -> AsyncClient:
        return await self._client.open(session=self._session)

    async def __aexit__(self, *exc: object) -> None:
        await self._client.close()


def connect(
    socket_path: Path | str | None = None,
    *,
    session: bool = True,
    tenant: str | None = None,
    submit_socket: bool | None = None,
) -> _Connect:
    """Connect to npud on asyncio: ``async with npud.client.aio.connect() as npu: ...``
    (as the tenant whose credential is ``tenant`` or in the environment, if any;
    ``submit_socket``: see :class:`AsyncClient`).

    Raises:
        Unavailable: npud is not running at the socket, or refuses us.
        Unauthenticated: the tenant credential is unknown to the daemon.
    """
    return _Connect(socket_path, session, tenant, submit_socket)


__all__ = ["AsyncClient", "AsyncSubmitStream", "connect"]
