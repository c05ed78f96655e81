"""Bounds, tried by an attacker: another user (uid 65533) sends the numbers, sizes and bytes
that broke daemons, over raw gRPC with its own token, while a victim (uid 65534) keeps working.

Each attempt must be refused with a precise status naming what was wrong, and the victim's jobs
must still complete.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from npud.isa import Program
from npud.testing.daemon import DaemonProcess
from npud.v1 import (
    buffer_pb2,
    buffer_pb2_grpc,
    context_pb2,
    context_pb2_grpc,
    job_pb2,
    job_pb2_grpc,
    stats_pb2,
    stats_pb2_grpc,
    types_pb2,
)
from tests.reliability.harness import (
    NOBODY,
    OTHER,
    Actor,
    own_daemon,
    raw_session,
    record,
    rss_bytes,
)

BufferStub = buffer_pb2_grpc.BufferServiceStub

pytestmark = pytest.mark.slow

Code = grpc.StatusCode
NAN, INF = math.nan, math.inf


@dataclass
class Attacker:
    """Raw stubs carrying another user's token, and that user's own context and queue."""

    channel: grpc.Channel
    md: tuple[tuple[str, str], ...]
    contexts: context_pb2_grpc.ContextServiceStub
    jobs: job_pb2_grpc.JobServiceStub
    stats: stats_pb2_grpc.StatsServiceStub
    ctx: str
    queue: str

    def refused(self, call: object, request: object) -> grpc.RpcError:
        """Call ``call(request)``; it must fail. Returns the error."""
        try:
            reply = call(request, metadata=self.md, timeout=10)  # type: ignore[operator]
            if hasattr(reply, "__next__"):
                next(reply)
                reply.cancel()
        except grpc.RpcError as exc:
            return exc
        raise AssertionError(f"{request} was accepted")

    def job(self, **fields: float) -> job_pb2.SubmitJobsRequest:
        spec = job_pb2.JobSpec(
            queue_id=self.queue, command_inline=Program().burn(0.001).encode(), **fields
        )
        return job_pb2.SubmitJobsRequest(context_id=self.ctx, jobs=[spec])


@pytest.fixture(scope="module")
def shared() -> Iterator[DaemonProcess]:
    """A daemon of this module's own: its 32 MiB buffers and refused floods touch no other
    test's baseline."""
    with own_daemon("npud-bounds-") as daemon:
        yield daemon


@pytest.fixture(scope="module")
def attacker(shared: DaemonProcess) -> Iterator[Attacker]:
    """uid 65533's token on a raw channel, with one context and queue of its own."""
    with raw_session(shared.socket, OTHER) as (channel, md):
        contexts = context_pb2_grpc.ContextServiceStub(channel)
        jobs = job_pb2_grpc.JobServiceStub(channel)
        ctx = contexts.CreateContext(
            context_pb2.CreateContextRequest(label="attacker"), metadata=md
        ).context.context_id
        queue = jobs.CreateQueue(job_pb2.CreateQueueRequest(context_id=ctx), metadata=md)
        yield Attacker(
            channel,
            md,
            contexts,
            jobs,
            stats_pb2_grpc.StatsServiceStub(channel),
            ctx,
            queue.queue.queue_id,
        )
        contexts.DestroyContext(context_pb2.DestroyContextRequest(context_id=ctx), metadata=md)


def test_non_finite_and_unbounded_numbers_are_refused_naming_the_field(
    attacker: Attacker, shared: DaemonProcess
) -> None:
    """NaN and infinite timeouts, estimates, deadlines, wait timeouts, intervals and weights,
    a 1e-9 s event interval and a 1e9 weight: INVALID_ARGUMENT naming the field, never INTERNAL;
    the victim's 5 ms LATENCY jobs then all complete."""
    victim = Actor(shared.socket, NOBODY)
    try:
        vctx = victim.ok("create_context", label="victim")["context_id"]
        vq = victim.ok("create_queue", vctx, "latency")["queue_id"]
        a = attacker
        tries: list[tuple[str, object, object]] = [
            ("timeout_s", a.jobs.SubmitJobs, a.job(timeout_s=NAN)),
            ("timeout_s", a.jobs.SubmitJobs, a.job(timeout_s=INF)),
            ("timeout_s", a.jobs.SubmitJobs, a.job(timeout_s=1e9)),
            ("estimate_s", a.jobs.SubmitJobs, a.job(estimate_s=NAN)),
            ("estimate_s", a.jobs.SubmitJobs, a.job(estimate_s=INF)),
            ("deadline_s", a.jobs.SubmitJobs, a.job(deadline_s=NAN)),
            ("deadline_s", a.jobs.SubmitJobs, a.job(deadline_s=1e300)),
            (
                "timeout_s",
                a.jobs.WaitJob,
                job_pb2.WaitJobRequest(context_id=a.ctx, job_id="job-0", timeout_s=NAN),
            ),
            (
                "interval_s",
                a.stats.StreamEvents,
                stats_pb2.StreamEventsRequest(interval_s=1e-9),
            ),
            ("interval_s", a.stats.StreamEvents, stats_pb2.StreamEventsRequest(interval_s=NAN)),
            ("weight", a.contexts.CreateContext, context_pb2.CreateContextRequest(weight=NAN)),
            ("weight", a.contexts.CreateContext, context_pb2.CreateContextRequest(weight=1e9)),
        ]
        for field, call, request in tries:
            err = a.refused(call, request)
            assert err.code() is Code.INVALID_ARGUMENT, (field, request, err)
            assert field in (err.details() or ""), (field, err.details())
        listed = a.contexts.ListContexts(context_pb2.ListContextsRequest(), metadata=a.md)
        [ctx] = listed.contexts
        assert ctx.context_id == a.ctx  # no context was created by a refused weight
        jobs = [victim.submit(vctx, vq, 0.005)["value"]["job_id"] for _ in range(10)]
        ended = [victim.ok("wait", vctx, j, timeout_s=30)["state"] for j in jobs]
        assert ended == ["completed"] * 10
        record("bounds_numbers_refused", len(tries))
    finally:
        victim.close()


def test_a_job_timeout_above_its_class_ceiling_is_refused(attacker: Attacker) -> None:
    """A THROUGHPUT job asking for a 61 s watchdog (ceiling 60 s) is refused naming the
    ceiling; at the ceiling it is admitted."""
    err = attacker.refused(attacker.jobs.SubmitJobs, attacker.job(timeout_s=61.0))
    assert err.code() is Code.INVALID_ARGUMENT
    assert "60" in (err.details() or "")
    assert "throughput" in (err.details() or "")
    ok = attacker.jobs.SubmitJobs(attacker.job(timeout_s=60.0), metadata=attacker.md, timeout=10)
    assert ok.jobs[0].state != types_pb2.JOB_STATE_UNSPECIFIED


def test_readbacks_labels_kinds_and_echoed_ids_are_bounded(
    attacker: Attacker, shared: DaemonProcess
) -> None:
    """8 readbacks of 32 MiB, 17 readbacks, a 1 MiB job label, a 20 KB kind, a 1 MiB context
    or queue label: INVALID_ARGUMENT naming the limit, in-band for the stream; a 1 MiB id is
    NOT_FOUND with a clipped message (not "Stream removed"); the daemon's RSS does not grow by
    the bytes asked for, and no log line is longer than 4 KiB."""
    a = attacker
    rss_before = rss_bytes(shared.proc.pid)
    buf = (
        BufferStub(a.channel)
        .CreateBuffer(
            buffer_pb2.CreateBufferRequest(context_id=a.ctx, size=32 << 20), metadata=a.md
        )
        .buffer.buffer_id
    )
    job = job_pb2.JobSpec(queue_id=a.queue, command_inline=Program().burn(0.001).encode())

    def stream(readbacks: list[job_pb2.Readback]) -> job_pb2.SubmitStreamResponse:
        req = job_pb2.SubmitStreamRequest(tag=1, context_id=a.ctx, job=job, readbacks=readbacks)
        [resp] = list(a.jobs.SubmitStream(iter([req]), metadata=a.md, timeout=30))
        return resp

    huge = stream([job_pb2.Readback(buffer_id=buf, offset=0, size=32 << 20)] * 8)
    assert huge.error.code == Code.INVALID_ARGUMENT.value[0]
    assert "16777216" in huge.error.message
    many = stream([job_pb2.Readback(buffer_id=buf, offset=0, size=4)] * 17)
    assert "the limit is 16" in many.error.message
    ok = stream([job_pb2.Readback(buffer_id=buf, offset=0, size=4)] * 16)
    assert not ok.HasField("error")
    assert len(ok.readbacks) == 16
    big = "x" * (1 << 20)
    tries = [
        (
            a.jobs.SubmitJobs,
            job_pb2.SubmitJobsRequest(context_id=a.ctx, jobs=[_with(job, label=big)]),
        ),
        (
            a.jobs.SubmitJobs,
            job_pb2.SubmitJobsRequest(context_id=a.ctx, jobs=[_with(job, kind="k" * 20_000)]),
        ),
        (a.contexts.CreateContext, context_pb2.CreateContextRequest(label=big)),
        (a.jobs.CreateQueue, job_pb2.CreateQueueRequest(context_id=a.ctx, label=big)),
    ]
    for call, request in tries:
        err = a.refused(call, request)
        assert err.code() is Code.INVALID_ARGUMENT
        assert "characters; the limit is" in (err.details() or "")
        assert len(err.details() or "") < 300
    err = a.refused(a.jobs.GetJob, job_pb2.GetJobRequest(context_id=a.ctx, job_id=big))
    assert err.code() is Code.NOT_FOUND, err
    assert len(err.details() or "") < 1200
    growth = rss_bytes(shared.proc.pid) - rss_before
    assert growth < 96 << 20, f"RSS grew by {growth >> 20} MiB"
    longest = max(len(line) for line in shared.log().splitlines())
    assert longest < 4096
    record("bounds_rss_growth_mib", round(growth / (1 << 20), 1))
    record("bounds_longest_log_line", longest)


def _with(job: job_pb2.JobSpec, **fields: str) -> job_pb2.JobSpec:
    out = job_pb2.JobSpec()
    out.CopyFrom(job)
    for name, value in fields.items():
        setattr(out, name, value)
    return out
