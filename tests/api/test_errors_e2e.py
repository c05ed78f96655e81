"""Every error path through the raw stubs: the status code, an actionable message, and no
state change (statistics and listings identical before and after)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from npud.client.identity import handshake
from npud.isa import Program
from npud.testing.daemon import DaemonProcess, start_daemon
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
    types_pb2,
)
from tests import ROOT

pytestmark = pytest.mark.slow

Code = grpc.StatusCode


@dataclass
class Stubs:
    channel: grpc.Channel
    md: tuple[tuple[str, str], ...]
    devices: device_pb2_grpc.DeviceServiceStub
    contexts: context_pb2_grpc.ContextServiceStub
    buffers: buffer_pb2_grpc.BufferServiceStub
    jobs: job_pb2_grpc.JobServiceStub
    stats: stats_pb2_grpc.StatsServiceStub
    ctx: str = ""
    queue: str = ""
    lat_queue: str = ""
    tp_queue: str = ""
    buf: str = ""
    busy_job: str = ""


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    # not under pytest's 0700 tmp tree: the other-uid test must reach the socket
    tmp = Path(tempfile.mkdtemp(prefix="npud-errors-"))
    tmp.chmod(0o755)
    try:
        # the busy job below holds its queue for the whole module: this operator allows it
        d = start_daemon(
            tmp,
            env={
                # the module's 600 s busy job (LATENCY: no time slice holds it)
                "NPUD_LIMITS__LATENCY_TIMEOUT_MAX_S": "1200",
            },
        )
        yield d
        assert d.stop() == 0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def s(daemon: DaemonProcess) -> Iterator[Stubs]:
    channel = grpc.insecure_channel(f"unix:{daemon.socket}")
    md = (("npud-token", handshake(daemon.socket).token),)
    st = Stubs(
        channel,
        md,
        device_pb2_grpc.DeviceServiceStub(channel),
        context_pb2_grpc.ContextServiceStub(channel),
        buffer_pb2_grpc.BufferServiceStub(channel),
        job_pb2_grpc.JobServiceStub(channel),
        stats_pb2_grpc.StatsServiceStub(channel),
    )
    ctx = st.contexts.CreateContext(
        context_pb2.CreateContextRequest(label="errors", quotas=context_pb2.Quotas(max_queues=3)),
        metadata=md,
    ).context
    st.ctx = ctx.context_id
    st.queue = st.jobs.CreateQueue(
        job_pb2.CreateQueueRequest(
            context_id=st.ctx,
            scheduling_class=types_pb2.SCHEDULING_CLASS_LATENCY,
            depth_limit=1,
        ),
        metadata=md,
    ).queue.queue_id
    st.lat_queue = st.jobs.CreateQueue(
        job_pb2.CreateQueueRequest(
            context_id=st.ctx, scheduling_class=types_pb2.SCHEDULING_CLASS_LATENCY
        ),
        metadata=md,
    ).queue.queue_id
    st.tp_queue = st.jobs.CreateQueue(
        job_pb2.CreateQueueRequest(
            context_id=st.ctx, scheduling_class=types_pb2.SCHEDULING_CLASS_THROUGHPUT
        ),
        metadata=md,
    ).queue.queue_id
    st.buf = st.buffers.CreateBuffer(
        buffer_pb2.CreateBufferRequest(context_id=st.ctx, size=256), metadata=md
    ).buffer.buffer_id
    st.buffers.CreateBuffer(
        buffer_pb2.CreateBufferRequest(
            context_id=st.ctx,
            size=64,
            persistence=types_pb2.PERSISTENCE_PERSISTENT,
            key="errors-key@1",
        ),
        metadata=md,
    )
    # one long job occupies the depth-1 queue and binds st.buf for the whole module; it is
    # cancelled at teardown, so it must outlast the module however slow the machine is
    busy = job_pb2.JobSpec(
        queue_id=st.queue,
        command_inline=Program().burn(600.0).encode(),
        bindings=[job_pb2.Binding(buffer_id=st.buf, access=types_pb2.BUFFER_ACCESS_READ)],
        timeout_s=1200.0,
    )
    st.busy_job = (
        st.jobs.SubmitJobs(job_pb2.SubmitJobsRequest(context_id=st.ctx, jobs=[busy]), metadata=md)
        .jobs[0]
        .job_id
    )
    yield st
    st.jobs.CancelJob(job_pb2.CancelJobRequest(context_id=st.ctx, job_id=st.busy_job), metadata=md)
    channel.close()


def _snapshot(s: Stubs) -> Any:
    """Everything an error must leave unchanged."""
    stats = s.stats.GetStats(stats_pb2.GetStatsRequest(), metadata=s.md)
    dev = stats.devices[0]
    jobs = s.jobs.ListJobs(job_pb2.ListJobsRequest(context_id=s.ctx), metadata=s.md).jobs
    return (
        dev.contexts,
        dev.queues,
        dev.submitted,
        sorted((x.state, x.count) for x in dev.states),
        dev.residency.buffers,
        dev.residency.persistent_buffers,
        sorted((m.tier, m.used_bytes) for m in dev.memory),
        [(c.scheduling_class, c.queued, c.running) for c in dev.classes],
        sorted(
            c.context_id
            for c in s.contexts.ListContexts(
                context_pb2.ListContextsRequest(), metadata=s.md
            ).contexts
        ),
        [
            (q.queue_id, q.depth)
            for q in s.jobs.ListQueues(
                job_pb2.ListQueuesRequest(context_id=s.ctx), metadata=s.md
            ).queues
        ],
        sorted(
            (b.buffer_id, b.pins, b.valid)
            for b in s.buffers.ListBuffers(
                buffer_pb2.ListBuffersRequest(context_id=s.ctx), metadata=s.md
            ).buffers
        ),
        [(j.job_id, j.state) for j in jobs],
    )


def _expect(s: Stubs, code: Code, must_say: str, call: Callable[[], Any]) -> str:
    before = _snapshot(s)

    def run() -> None:
        result = call()
        if hasattr(result, "__iter__") and not hasattr(result, "ListFields"):
            list(result)  # a server stream fails on its first read

    with pytest.raises(grpc.RpcError) as info:
        run()
    err = info.value
    assert err.code() is code, f"{err.code()} {err.details()}"  # type: ignore[attr-defined]
    details = err.details() or ""  # type: ignore[attr-defined]
    assert must_say.lower() in details.lower(), details
    kinds = [v for k, v in (err.trailing_metadata() or ()) if k == "npud-error"]  # type: ignore[attr-defined]
    if code is not Code.UNAUTHENTICATED or kinds:
        assert kinds, "the npud-error trailer names the error class"
    assert _snapshot(s) == before, "an rpc that failed changed state"
    return details


def _job(s: Stubs, **kw: Any) -> job_pb2.SubmitJobsRequest:
    spec = job_pb2.JobSpec(**kw)
    return job_pb2.SubmitJobsRequest(context_id=s.ctx, jobs=[spec])


NULL = Program().encode()


def test_authentication_errors(s: Stubs) -> None:
    """No token, or a made-up one: UNAUTHENTICATED with what to do."""
    req = device_pb2.ListDevicesRequest()
    _expect(s, Code.UNAUTHENTICATED, "identity socket", lambda: s.devices.ListDevices(req))
    _expect(
        s,
        Code.UNAUTHENTICATED,
        "unknown or expired",
        lambda: s.devices.ListDevices(req, metadata=(("npud-token", "forged"),)),
    )


def test_not_found(s: Stubs) -> None:
    """Unknown device, context, job, key and queue ids are NOT_FOUND, naming the id."""
    md = s.md
    _expect(
        s,
        Code.NOT_FOUND,
        "nope",
        lambda: s.devices.GetDevice(device_pb2.GetDeviceRequest(name="nope"), metadata=md),
    )
    _expect(
        s,
        Code.NOT_FOUND,
        "nope",
        lambda: s.contexts.CreateContext(
            context_pb2.CreateContextRequest(device="nope"), metadata=md
        ),
    )
    _expect(
        s,
        Code.NOT_FOUND,
        "ctx-00",
        lambda: s.contexts.GetContext(
            context_pb2.GetContextRequest(context_id="ctx-00"), metadata=md
        ),
    )
    _expect(
        s,
        Code.NOT_FOUND,
        "job-00",
        lambda: s.jobs.CancelJob(
            job_pb2.CancelJobRequest(context_id=s.ctx, job_id="job-00"), metadata=md
        ),
    )
    _expect(
        s,
        Code.NOT_FOUND,
        "job-00",
        lambda: s.jobs.GetJob(
            job_pb2.GetJobRequest(context_id=s.ctx, job_id="job-00"), metadata=md
        ),
    )
    _expect(
        s,
        Code.NOT_FOUND,
        "no-such-key",
        lambda: s.buffers.OpenPersistentBuffer(
            buffer_pb2.OpenPersistentBufferRequest(context_id=s.ctx, key="no-such-key@1"),
            metadata=md,
        ),
    )
    _expect(
        s,
        Code.NOT_FOUND,
        "q-00",
        lambda: s.jobs.SubmitJobs(_job(s, queue_id="q-00", command_inline=NULL), metadata=md),
    )


def test_an_unknown_dependency_is_not_found(s: Stubs) -> None:
    """A job that depends on a job id its context does not have is NOT_FOUND naming the id,
    as job.proto promises, and nothing of the batch is admitted."""
    queue = s.lat_queue
    before = s.jobs.ListJobs(job_pb2.ListJobsRequest(context_id=s.ctx), metadata=s.md)
    _expect(
        s,
        Code.NOT_FOUND,
        "job-0000dead",
        lambda: s.jobs.SubmitJobs(
            _job(s, queue_id=queue, command_inline=NULL, depends_on=["job-0000dead"]),
            metadata=s.md,
        ),
    )
    after = s.jobs.ListJobs(job_pb2.ListJobsRequest(context_id=s.ctx), metadata=s.md)
    assert len(after.jobs) == len(before.jobs)


def test_invalid_arguments(s: Stubs) -> None:
    """Malformed requests are INVALID_ARGUMENT and name the field and value."""
    md = s.md
    _expect(
        s,
        Code.INVALID_ARGUMENT,
        "weight",
        lambda: s.contexts.CreateContext(context_pb2.CreateContextRequest(weight=-1), metadata=md),
    )
    _expect(
        s,
        Code.INVALID_ARGUMENT,
        "default_class",
        lambda: s.contexts.CreateContext(
            context_pb2.CreateContextRequest(default_class=99),  # type: ignore[arg-type]
            metadata=md,
        ),
    )
    _expect(
        s,
        Code.INVALID_ARGUMENT,
        "size",
        lambda: s.buffers.CreateBuffer(
            buffer_pb2.CreateBufferRequest(context_id=s.ctx, size=0), metadata=md
        ),
    )
    _expect(
        s,
        Code.INVALID_ARGUMENT,
        "key",
        lambda: s.buffers.CreateBuffer(
            buffer_pb2.CreateBufferRequest(context_id=s.ctx, size=8, key="x@1"), metadata=md
        ),
    )
    _expect(
        s,
        Code.INVALID_ARGUMENT,
        "256",
        lambda: s.buffers.WriteBuffer(
            iter(
                [
                    buffer_pb2.WriteBufferRequest(
                        context_id=s.ctx, buffer_id=s.buf, offset=250, data=b"0123456789"
                    )
                ]
            ),
            metadata=md,
        ),
    )
    _expect(
        s,
        Code.INVALID_ARGUMENT,
        "256 bytes",
        lambda: s.buffers.ReadBuffer(
            buffer_pb2.ReadBufferRequest(context_id=s.ctx, buffer_id=s.buf, offset=200, size=100),
            metadata=md,
        ),
    )
    _expect(
        s,
        Code.INVALID_ARGUMENT,
        "command",
        lambda: s.jobs.SubmitJobs(_job(s, queue_id=s.lat_queue), metadata=md),
    )
    _expect(
        s,
        Code.INVALID_ARGUMENT,
        "access",
        lambda: s.jobs.SubmitJobs(
            _job(
                s,
                queue_id=s.lat_queue,
                command_inline=NULL,
                bindings=[job_pb2.Binding(buffer_id=s.buf)],
            ),
            metadata=md,
        ),
    )
    _expect(
        s,
        Code.INVALID_ARGUMENT,
        "timeout_s",
        lambda: s.jobs.WaitJob(
            job_pb2.WaitJobRequest(context_id=s.ctx, job_id=s.busy_job, timeout_s=-1),
            metadata=md,
        ),
    )
    _expect(
        s,
        Code.INVALID_ARGUMENT,
        "interval_s",
        lambda: s.stats.StreamEvents(stats_pb2.StreamEventsRequest(interval_s=-1), metadata=md),
    )


def test_resource_exhausted(s: Stubs) -> None:
    """Quotas and a full queue are RESOURCE_EXHAUSTED with the limit and the current value."""
    md = s.md
    msg = _expect(
        s,
        Code.RESOURCE_EXHAUSTED,
        "quota",
        lambda: s.jobs.CreateQueue(job_pb2.CreateQueueRequest(context_id=s.ctx), metadata=md),
    )
    assert "3" in msg
    _expect(
        s,
        Code.RESOURCE_EXHAUSTED,
        "quota",
        lambda: s.buffers.CreateBuffer(
            buffer_pb2.CreateBufferRequest(context_id=s.ctx, size=2 << 30), metadata=md
        ),
    )
    msg = _expect(
        s,
        Code.RESOURCE_EXHAUSTED,
        "depth limit is 1",
        lambda: s.jobs.SubmitJobs(_job(s, queue_id=s.queue, command_inline=NULL), metadata=md),
    )
    assert "1" in msg


def test_already_exists_and_preconditions(s: Stubs) -> None:
    """Duplicate keys, unpinning an unpinned buffer, releasing a bound buffer, a second
    session on one token, infeasible deadlines and over-long throughput jobs."""
    md = s.md
    _expect(
        s,
        Code.ALREADY_EXISTS,
        "errors-key@1",
        lambda: s.buffers.CreateBuffer(
            buffer_pb2.CreateBufferRequest(
                context_id=s.ctx,
                size=64,
                persistence=types_pb2.PERSISTENCE_PERSISTENT,
                key="errors-key@1",
            ),
            metadata=md,
        ),
    )
    _expect(
        s,
        Code.FAILED_PRECONDITION,
        "not pinned",
        lambda: s.buffers.UnpinBuffer(
            buffer_pb2.UnpinBufferRequest(context_id=s.ctx, buffer_id=s.buf), metadata=md
        ),
    )
    _expect(
        s,
        Code.FAILED_PRECONDITION,
        "live job",
        lambda: s.buffers.ReleaseBuffer(
            buffer_pb2.ReleaseBufferRequest(context_id=s.ctx, buffer_id=s.buf), metadata=md
        ),
    )
    _expect(
        s,
        Code.FAILED_PRECONDITION,
        "deadline",
        lambda: s.jobs.SubmitJobs(
            _job(s, queue_id=s.lat_queue, command_inline=NULL, estimate_s=1.0, deadline_s=0.001),
            metadata=md,
        ),
    )
    _expect(
        s,
        Code.FAILED_PRECONDITION,
        "slice",
        lambda: s.jobs.SubmitJobs(
            _job(s, queue_id=s.tp_queue, command_inline=NULL, estimate_s=5.0), metadata=md
        ),
    )


def test_one_session_per_token(daemon: DaemonProcess) -> None:
    """A second Session stream on the same token is FAILED_PRECONDITION."""
    import threading

    md = (("npud-token", handshake(daemon.socket).token),)
    with grpc.insecure_channel(f"unix:{daemon.socket}") as ch:
        stub = context_pb2_grpc.ContextServiceStub(ch)
        stop = threading.Event()

        def hold() -> Iterator[context_pb2.SessionRequest]:
            yield context_pb2.SessionRequest(ping=1)
            stop.wait(10)

        first = stub.Session(hold(), metadata=md)
        assert next(first).pong == 1
        with pytest.raises(grpc.RpcError) as info:
            next(stub.Session(iter([context_pb2.SessionRequest(ping=2)]), metadata=md))
        assert info.value.code() is Code.FAILED_PRECONDITION  # type: ignore[attr-defined]
        assert "one session per token" in (info.value.details() or "")  # type: ignore[attr-defined]
        stop.set()
        first.cancel()


NOBODY = r"""
import json, os, sys
# import everything first: the interpreter's own files may not be readable by nobody
import grpc
from npud.client.identity import handshake
from npud.v1 import context_pb2, context_pb2_grpc, job_pb2, job_pb2_grpc
grpc.insecure_channel("unix:/nonexistent").close()  # grpc loads its channel modules lazily
os.setgid(65534); os.setgroups([]); os.setuid(65534)
sock, foreign, foreign_job = sys.argv[1], sys.argv[2], sys.argv[3]
md = (("npud-token", handshake(sock).token),)
channel = grpc.insecure_channel("unix:" + sock)
stub = context_pb2_grpc.ContextServiceStub(channel)
jobs = job_pb2_grpc.JobServiceStub(channel)
out = {}
def code(name, fn):
    try:
        fn(); out[name] = "OK"
    except grpc.RpcError as e:
        out[name] = [e.code().name, e.details()]
code("list_all", lambda: stub.ListContexts(context_pb2.ListContextsRequest(all=True), metadata=md))
out["jobs_mine"] = len(jobs.ListJobs(job_pb2.ListJobsRequest(), metadata=md).jobs)
code("jobs_all", lambda: jobs.ListJobs(job_pb2.ListJobsRequest(all=True), metadata=md))
code("foreign_job", lambda: jobs.GetJob(job_pb2.GetJobRequest(job_id=foreign_job), metadata=md))
code("cancel_foreign", lambda: jobs.CancelJob(
    job_pb2.CancelJobRequest(job_id=foreign_job), metadata=md))
code("foreign", lambda: stub.GetContext(
    context_pb2.GetContextRequest(context_id=foreign), metadata=md))
code("big_quota", lambda: stub.CreateContext(context_pb2.CreateContextRequest(
    quotas=context_pb2.Quotas(max_queues=10**6)), metadata=md))
print(json.dumps(out))
"""


def test_other_user_is_isolated_and_not_admin(s: Stubs, daemon: DaemonProcess) -> None:
    """Identity comes from SO_PEERCRED: another uid sees root's context and jobs as NOT_FOUND
    (by id, and by job id without a context) and may neither list everyone's contexts or jobs
    nor raise quotas (PERMISSION_DENIED)."""
    if os.getuid() != 0:
        pytest.fail("this check needs root to run a client as another uid")
    before = _snapshot(s)
    result = subprocess.run(
        [sys.executable, "-c", NOBODY, str(daemon.socket), s.ctx, s.busy_job],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["list_all"][0] == "PERMISSION_DENIED"
    assert "admin" in out["list_all"][1]
    assert out["foreign"][0] == "NOT_FOUND"
    # without a context id: only its own (no) jobs; another user's job is not there to find
    assert out["jobs_mine"] == 0
    assert out["jobs_all"][0] == "PERMISSION_DENIED"
    assert "admin" in out["jobs_all"][1]
    assert out["foreign_job"][0] == "NOT_FOUND"
    assert out["cancel_foreign"][0] == "NOT_FOUND"
    assert out["big_quota"][0] == "PERMISSION_DENIED"
    assert "max_queues" in out["big_quota"][1]
    assert _snapshot(s) == before
