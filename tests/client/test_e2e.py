"""End to end: the real daemon (--device sim) driven through every rpc by the client library."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import npud.client
import npud.client.aio
from npud.client import (
    Access,
    Bind,
    BufferUsage,
    CommandRef,
    ContextEvent,
    DeviceEvent,
    Job,
    JobSpec,
    JobState,
    Persistence,
    Readback,
    SchedulingClass,
    Stats,
)
from npud.errors import AlreadyExists, NotFound, QueueFull
from npud.isa import Program, T
from npud.testing.daemon import DaemonProcess, start_daemon

pytestmark = pytest.mark.slow

N = 64  # floats per vector


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = start_daemon(tmp_path_factory.mktemp("npud-client"))
    yield d
    assert d.stop() == 0


@pytest.fixture(scope="module")
def npu(daemon: DaemonProcess) -> Iterator[npud.client.Client]:
    with npud.client.connect(daemon.socket) as client:
        yield client


def _add_program() -> bytes:
    """out(slot 2) = a(slot 0) + b(slot 1), N float32 each."""
    return Program().add(out=T(2, 0, (N,)), a=T(0, 0, (N,)), b=T(1, 0, (N,))).encode()


def _vectors(npu: npud.client.Client, ctx: npud.client.Context) -> tuple[object, ...]:
    a = np.arange(N, dtype=np.float32)
    b = np.full(N, 0.5, dtype=np.float32)
    bufs = []
    for data in (a, b, np.zeros(N, dtype=np.float32)):
        buf = npu.create_buffer(ctx, N * 4)
        npu.write_buffer(ctx, buf, data.tobytes())
        bufs.append(buf)
    return (*bufs, a + b)


def test_devices_are_announced_as_simulated(npu: npud.client.Client) -> None:
    """ListDevices/GetDevice report the simulated NPU with simulated=true and its engines."""
    devices = npu.devices()
    assert [d.name for d in devices] == ["sim0"]
    dev = npu.device("sim0")
    assert dev.simulated
    assert dev.driver == "sim"
    assert len(dev.engines) >= 1
    assert any(t.capacity_bytes > 0 for t in dev.tiers)
    with pytest.raises(NotFound, match="nope"):
        npu.device("nope")
    assert npu.version() == npud.__version__
    assert npu.owner is not None
    assert npu.owner.pid > 0


def test_context_lifecycle(npu: npud.client.Client) -> None:
    """Create, get, list and destroy a context; destroyed ids are NOT_FOUND."""
    ctx = npu.create_context(default_class=SchedulingClass.LATENCY, weight=2.0, label="life")
    assert ctx.default_class is SchedulingClass.LATENCY
    assert ctx.weight == 2.0
    assert ctx.quotas.max_queues > 0
    assert npu.context(ctx).label == "life"
    assert ctx.context_id in [c.context_id for c in npu.contexts()]
    npu.destroy_context(ctx)
    with pytest.raises(NotFound):
        npu.context(ctx)


def test_buffers_write_read_pin_release(npu: npud.client.Client) -> None:
    """Chunked writes and reads round-trip; pin/unpin count; release drops the buffer."""
    ctx = npu.create_context(label="bufs")
    payload = bytes(range(256)) * 40  # 10 KiB, written in 1 KiB chunks
    buf = npu.create_buffer(ctx, len(payload), usage=BufferUsage.STATE)
    npu.write_buffer(ctx, buf, payload, chunk_size=1024)
    assert npu.read_buffer(ctx, buf) == payload
    assert npu.read_buffer(ctx, buf, offset=100, size=7) == payload[100:107]
    assert npu.pin_buffer(ctx, buf).pins == 1
    assert npu.unpin_buffer(ctx, buf).pins == 0
    listed = npu.buffers(ctx)
    assert [b.buffer_id for b in listed] == [buf.buffer_id]
    assert listed[0].valid
    npu.release_buffer(ctx, buf)
    assert npu.buffers(ctx) == []
    npu.destroy_context(ctx)


def test_persistent_buffer_shared_between_clients(daemon: DaemonProcess) -> None:
    """A sealed persistent buffer is opened by key from another process-like client."""
    weights = np.arange(1024, dtype=np.float32).tobytes()
    with npud.client.connect(daemon.socket) as first:
        ctx = first.create_context(label="uploader")
        buf = first.create_buffer(
            ctx,
            len(weights),
            usage=BufferUsage.WEIGHTS,
            persistence=Persistence.PERSISTENT,
            key="demo-weights@1",
        )
        sealed = first.write_buffer(ctx, buf, weights, seal=True)
        assert sealed.sealed
        with pytest.raises(AlreadyExists):
            first.create_buffer(ctx, 16, persistence=Persistence.PERSISTENT, key="demo-weights@1")
        with npud.client.connect(daemon.socket) as second:
            ctx2 = second.create_context(label="reader")
            shared = second.open_persistent(ctx2, "demo-weights@1")
            assert shared.buffer_id == buf.buffer_id
            assert shared.users == 2
            assert second.read_buffer(ctx2, shared) == weights


def test_jobs_compute_for_real(npu: npud.client.Client) -> None:
    """An ADD job on the simulated NPU produces a + b; wait returns it COMPLETED with times."""
    ctx = npu.create_context(label="compute")
    q = npu.create_queue(ctx, SchedulingClass.THROUGHPUT)
    a, b, out, expected = _vectors(npu, ctx)
    spec = JobSpec(
        queue=q,
        command=_add_program(),
        bindings=(Bind(a), Bind(b), Bind(out, Access.WRITE)),  # type: ignore[arg-type]
        kind="add",
    )
    job = npu.submit(ctx, spec)
    assert job.state in (JobState.QUEUED, JobState.READY, JobState.RUNNING, JobState.COMPLETED)
    done = npu.wait(ctx, job)
    assert done.state is JobState.COMPLETED, done.error
    assert done.run_s >= 0.0
    assert done.modelled_s > 0.0
    got = np.frombuffer(npu.read_buffer(ctx, out), dtype=np.float32)  # type: ignore[arg-type]
    np.testing.assert_array_equal(got, expected)
    assert npu.job(ctx, job).state is JobState.COMPLETED
    assert [j.job_id for j in npu.jobs(ctx, states=[JobState.COMPLETED])] == [job.job_id]
    assert npu.queues(ctx)[0].queue_id == q.queue_id
    npu.destroy_queue(ctx, q)
    assert npu.queues(ctx) == []
    npu.destroy_context(ctx)


def test_batch_with_dependency_and_command_buffer(npu: npud.client.Client) -> None:
    """A batch whose second job depends on the first and reads its command from a buffer."""
    ctx = npu.create_context(label="batch")
    q = npu.create_queue(ctx, in_order=False)
    a, b, out, expected = _vectors(npu, ctx)
    blob = _add_program()
    cmd = npu.create_buffer(ctx, len(blob), usage=BufferUsage.COMMAND)
    npu.write_buffer(ctx, cmd, blob)
    first = JobSpec(q, blob, (Bind(a), Bind(b), Bind(out, Access.WRITE)))  # type: ignore[arg-type]
    [j1] = npu.submit_many(ctx, [first])
    second = JobSpec(
        q,
        CommandRef(cmd),
        (Bind(out), Bind(b), Bind(a, Access.WRITE)),  # type: ignore[arg-type]
        depends_on=(j1,),
    )
    j2 = npu.submit(ctx, second)
    assert npu.wait(ctx, j2).state is JobState.COMPLETED
    got = np.frombuffer(npu.read_buffer(ctx, a), dtype=np.float32)  # type: ignore[arg-type]
    np.testing.assert_array_equal(got, expected + 0.5)  # type: ignore[operator]
    npu.destroy_context(ctx)


def test_submit_stream_returns_readbacks(npu: npud.client.Client) -> None:
    """The decode fast path: one round trip per job, readback bytes in the response."""
    ctx = npu.create_context(label="decode")
    q = npu.create_queue(ctx, SchedulingClass.LATENCY)
    a, b, out, expected = _vectors(npu, ctx)
    spec = JobSpec(
        q,
        _add_program(),
        (Bind(a), Bind(b), Bind(out, Access.WRITE)),  # type: ignore[arg-type]
        kind="decode",
    )
    with npu.submit_stream(ctx) as stream:
        for _ in range(3):
            res = stream.run(spec, [Readback(out, 4, 8)])  # type: ignore[arg-type]
            assert res.ok, res.error
            got = np.frombuffer(res.readbacks[0], dtype=np.float32)
            np.testing.assert_array_equal(got, expected[1:3])  # type: ignore[index]
        # a rejected entry is answered in-band; the stream stays usable
        bad = JobSpec("q-unknown", _add_program())
        res = stream.run(bad)
        assert res.error is not None
        assert res.error.kind == "NotFound"
        assert stream.run(spec).ok
    # inline command buffers do not leak
    assert len(npu.buffers(ctx)) == 3
    npu.destroy_context(ctx)


def test_cancel_queue_full_and_watch(npu: npud.client.Client) -> None:
    """A queued job is cancelled with a reason; a full queue says so; watch sees transitions."""
    ctx = npu.create_context(label="cancel")
    q = npu.create_queue(ctx, SchedulingClass.LATENCY, depth_limit=2)  # 0.2 s jobs: no slice
    seen: list[Job] = []
    watch = npu.watch_jobs(ctx)
    ready = threading.Event()

    def collect() -> None:
        ready.set()
        for job in watch:
            seen.append(job)
            if job.state is JobState.CANCELLED:
                return

    t = threading.Thread(target=collect, daemon=True)
    t.start()
    ready.wait(5)
    burn = Program().burn(0.2).encode()
    slow = npu.submit(ctx, JobSpec(q, burn, timeout_s=5.0, kind="burn"))
    queued = npu.submit(ctx, JobSpec(q, burn, timeout_s=5.0, kind="burn"))
    with pytest.raises(QueueFull, match="2"):
        npu.submit(ctx, JobSpec(q, burn, timeout_s=5.0))
    cancelled = npu.cancel(ctx, queued)
    assert cancelled.state is JobState.CANCELLED
    assert cancelled.error is not None
    assert cancelled.error.kind == "Cancelled"
    assert npu.wait(ctx, slow).state is JobState.COMPLETED
    t.join(10)
    assert any(j.job_id == queued.job_id and j.state is JobState.CANCELLED for j in seen)
    watch.close()  # type: ignore[attr-defined]
    npu.destroy_context(ctx)


def test_one_call_lists_and_finds_across_contexts(daemon: DaemonProcess) -> None:
    """With no context, jobs/queues/buffers list every context of the caller in one rpc each
    (equal to the per-context lists concatenated), job() and cancel() find a job by id alone,
    and each job names its context's label."""
    with npud.client.connect(daemon.socket) as npu:
        a = npu.create_context(label="chat-alice")
        b = npu.create_context(label="chat-bob")
        qa = npu.create_queue(a, SchedulingClass.LATENCY)
        qb = npu.create_queue(b, SchedulingClass.LATENCY, depth_limit=4)  # 0.3 s jobs: no slice
        npu.create_buffer(a, 4096)
        npu.create_buffer(b, 128)
        done = npu.wait(a, npu.submit(a, JobSpec(qa, Program().burn(0.001).encode())))
        burn = Program().burn(0.3).encode()
        slow = npu.submit(b, JobSpec(qb, burn, timeout_s=5.0))
        queued = npu.submit(b, JobSpec(qb, burn, timeout_s=5.0))
        mine = {a.context_id, b.context_id}
        jobs = [j for j in npu.jobs() if j.context_id in mine]
        per_context = [*npu.jobs(a), *npu.jobs(b)]
        assert [j.job_id for j in jobs] == [j.job_id for j in per_context]
        assert {j.context_label for j in jobs} == {"chat-alice", "chat-bob"}
        queues = [q.queue_id for q in npu.queues() if q.context_id in mine]
        assert queues == [qa.queue_id, qb.queue_id]
        buffers = [
            (x.context_id, x.size)
            for x in npu.buffers()
            if x.context_id in mine and x.usage is BufferUsage.SCRATCH  # not inline commands
        ]
        assert buffers == [(a.context_id, 4096), (b.context_id, 128)]
        found = npu.job(None, done)
        assert (found.context_id, found.context_label) == (a.context_id, "chat-alice")
        cancelled = npu.cancel(None, queued)
        assert cancelled.state is JobState.CANCELLED
        assert cancelled.context_id == b.context_id
        with pytest.raises(NotFound):
            npu.job(None, "job-0000000000000000")
        everyone = {j.job_id for j in npu.jobs(all_owners=True)}  # root is an admin
        assert {j.job_id for j in jobs} <= everyone
        npu.wait(b, slow)
        npu.destroy_context(a)
        npu.destroy_context(b)


def test_stats_and_events(npu: npud.client.Client) -> None:
    """GetStats mirrors core's counters; the event stream yields stats and context events."""
    events = npu.events(interval_s=0.2)
    first = next(events)
    assert isinstance(first, Stats)
    ctx = npu.create_context(label="events")
    got_ctx = None
    for ev in events:
        if isinstance(ev, ContextEvent) and ev.context_id == ctx.context_id:
            got_ctx = ev
            break
    assert got_ctx is not None
    stats = npu.stats()
    dev = stats.devices[0]
    assert dev.simulated
    assert dev.contexts >= 1
    assert {c.scheduling_class for c in dev.classes} == set(SchedulingClass)
    assert any(m.tier is not None and m.tier.value == "sram" for m in dev.memory)
    assert dev.states.get(JobState.COMPLETED, 0) >= 1
    assert "SIMULATED" in stats.status
    events.close()  # type: ignore[attr-defined]
    devs = npu.watch_devices()
    first_dev = next(devs)
    assert isinstance(first_dev, DeviceEvent)
    assert first_dev.device.simulated
    devs.close()  # type: ignore[attr-defined]
    npu.destroy_context(ctx)


def test_asyncio_client(daemon: DaemonProcess) -> None:
    """The asyncio flavour: context manager, concurrent runs on one submit stream."""

    async def main() -> list[bytes]:
        async with npud.client.aio.connect(daemon.socket) as npu:
            ctx = await npu.create_context(label="aio")
            q = await npu.create_queue(ctx, SchedulingClass.LATENCY, in_order=False)
            out = await npu.create_buffer(ctx, N * 4)
            src = await npu.create_buffer(ctx, N * 4)
            await npu.write_buffer(ctx, src, np.ones(N, dtype=np.float32).tobytes())
            prog = Program().add(out=T(1, 0, (N,)), a=T(0, 0, (N,)), b=T(0, 0, (N,))).encode()
            spec = JobSpec(q, prog, (Bind(src), Bind(out, Access.WRITE)))
            async with npu.submit_stream(ctx) as stream:
                results = await asyncio.gather(
                    *(stream.run(spec, [Readback(out, 0, 4)]) for _ in range(4))
                )
            assert all(r.ok for r in results)
            assert (await npu.stats()).devices[0].simulated
            await npu.destroy_context(ctx)
            return [r.readbacks[0] for r in results]

    got = asyncio.run(main())
    assert got == [np.float32(2.0).tobytes()] * 4


def test_everything_created_here_is_gone(npu: npud.client.Client, daemon: DaemonProcess) -> None:
    """After the tests destroy their contexts, only contexts of live sessions remain."""
    stats = npu.stats()
    live = {c.context_id for c in npu.contexts()}
    assert stats.devices[0].contexts == len(live)
    assert Path(daemon.socket).is_socket()


def test_readbacks_up_to_the_daemons_message_limit_reach_the_client(
    npu: npud.client.Client, daemon: DaemonProcess
) -> None:
    """A 5 MiB readback in one SubmitStream answer (over gRPC's 4 MiB default) arrives intact
    through the sync and the asyncio client: both accept what the daemon may send."""
    from npud.api.server import MAX_MESSAGE_BYTES as DAEMON_LIMIT
    from npud.client.channel import MAX_MESSAGE_BYTES as CLIENT_LIMIT

    assert CLIENT_LIMIT == DAEMON_LIMIT
    size = 5 << 20
    data = bytes(range(251)) * (size // 251) + bytes(size % 251)
    ctx = npu.create_context(label="big-readback")
    q = npu.create_queue(ctx, SchedulingClass.LATENCY)
    big = npu.create_buffer(ctx, size, usage=BufferUsage.STATE)
    npu.write_buffer(ctx, big, data)
    spec = JobSpec(q, Program().burn(0.001).encode(), (Bind(big),))
    with npu.submit_stream(ctx) as stream:
        res = stream.run(spec, [Readback(big, 0, size)])
    assert res.ok, res.error
    assert res.readbacks[0] == data

    async def main() -> bytes:
        async with npud.client.aio.connect(daemon.socket) as aio:
            async with aio.submit_stream(ctx.context_id) as stream:
                got = await stream.run(spec, [Readback(big, 0, size)])
            assert got.ok, got.error
            return got.readbacks[0]

    assert asyncio.run(main()) == data
    npu.destroy_context(ctx)
