"""Precise status codes where grpc's defaults were vague: bytes that are not a request, and
rpcs that arrive while the daemon drains for shutdown."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pool, message_factory
from google.protobuf.descriptor import MethodDescriptor

import npud.client
from npud.api.server import SERVICE_NAMES
from npud.client import JobSpec, SchedulingClass
from npud.client.identity import handshake
from npud.isa import Program
from npud.testing.daemon import DaemonProcess, start_daemon
from npud.v1 import buffer_pb2, job_pb2, job_pb2_grpc
from tests.reliability.harness import eventually

pytestmark = pytest.mark.slow

GARBAGE = (b"\xff\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x08")
"""An invalid wire type, a length past the end, a truncated varint."""


def _methods() -> list[MethodDescriptor]:
    pool = descriptor_pool.Default()
    return [m for name in SERVICE_NAMES for m in pool.FindServiceByName(name).methods]


@pytest.fixture(scope="module")
def daemon() -> Iterator[DaemonProcess]:
    tmp = Path(tempfile.mkdtemp(prefix="npud-codes-"))
    try:
        d = start_daemon(tmp, env={"NPUD_SHUTDOWN_GRACE_S": "20"})
        yield d
        d.stop()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _raw(
    channel: grpc.Channel, method: MethodDescriptor, md: object, payloads: list[bytes]
) -> grpc.StatusCode:
    """Send raw bytes as ``method``'s request(s); the final status."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    out = message_factory.GetMessageClass(method.output_type)
    kw = {"request_serializer": lambda b: b, "response_deserializer": out.FromString}
    try:
        if method.client_streaming and method.server_streaming:
            for _ in channel.stream_stream(path, **kw)(iter(payloads), metadata=md, timeout=10):
                pass
        elif method.client_streaming:
            channel.stream_unary(path, **kw)(iter(payloads), metadata=md, timeout=10)
        elif method.server_streaming:
            for _ in channel.unary_stream(path, **kw)(payloads[0], metadata=md, timeout=10):
                pass
        else:
            channel.unary_unary(path, **kw)(payloads[0], metadata=md, timeout=10)
    except grpc.RpcError as exc:
        code: grpc.StatusCode = exc.code()
        return code
    return grpc.StatusCode.OK


def test_undecodable_requests_are_invalid_argument_on_every_rpc(daemon: DaemonProcess) -> None:
    """Bytes that are not the rpc's request message: INVALID_ARGUMENT on every rpc (was UNKNOWN
    for unary and INTERNAL for client streams), for each of three kinds of garbage."""
    md = (("npud-token", handshake(daemon.socket).token),)
    with grpc.insecure_channel(f"unix:{daemon.socket}") as channel:
        answers = {
            (m.full_name, bad): _raw(channel, m, md, [bad]) for m in _methods() for bad in GARBAGE
        }
    wrong = {k: v for k, v in answers.items() if v is not grpc.StatusCode.INVALID_ARGUMENT}
    assert not wrong
    assert len(answers) == 3 * len(_methods())


def test_a_corrupt_write_buffer_chunk_is_invalid_argument_and_writes_nothing_after_it(
    daemon: DaemonProcess,
) -> None:
    """A WriteBuffer stream whose second chunk does not parse: INVALID_ARGUMENT with a message
    naming the rpc; the buffer holds the first chunk's bytes only."""
    with npud.client.connect(daemon.socket) as npu:
        ctx = npu.create_context(label="corrupt")
        buf = npu.create_buffer(ctx, 8)
        first = buffer_pb2.WriteBufferRequest(
            context_id=ctx.context_id, buffer_id=buf.buffer_id, data=b"\1\1\1\1"
        ).SerializeToString()
        later = buffer_pb2.WriteBufferRequest(offset=4, data=b"\2\2\2\2").SerializeToString()
        with grpc.insecure_channel(f"unix:{daemon.socket}") as channel:
            call = channel.stream_unary(
                "/npud.v1.BufferService/WriteBuffer",
                request_serializer=lambda b: b,
                response_deserializer=buffer_pb2.WriteBufferResponse.FromString,
            )
            with pytest.raises(grpc.RpcError) as info:
                call(iter([first, b"\xff\xff\xff\xff", later]), metadata=npu.metadata, timeout=10)
        assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "WriteBuffer" in (info.value.details() or "")
        assert npu.read_buffer(ctx, buf) == b"\1\1\1\1\0\0\0\0"
        npu.destroy_context(ctx)


def test_rpcs_during_the_shutdown_drain_are_unavailable_not_not_found(
    daemon: DaemonProcess,
) -> None:
    """SIGTERM while a job runs: a waiter of a queued job sees it CANCELLED; looking up a job of
    a context the drain already closed is UNAVAILABLE ("shutting down"), never NOT_FOUND."""
    with npud.client.connect(daemon.socket) as npu:
        busy = npu.create_context(label="busy")
        q = npu.create_queue(busy, SchedulingClass.LATENCY)
        burn = Program().burn(8.0).encode()
        running = npu.submit(busy, JobSpec(q, burn, timeout_s=10.0))
        # QUEUED until `running` completes (an in-order follower alone would be handed to the
        # device behind it, and a drain lets what is on the device finish)
        queued = npu.submit(busy, JobSpec(q, burn, timeout_s=10.0, depends_on=(running,)))
        idle = npu.create_context(label="idle")
        iq = npu.create_queue(idle, SchedulingClass.LATENCY)
        done = npu.wait(idle, npu.submit(idle, JobSpec(iq, Program().burn(0.001).encode())))
        assert eventually(lambda: npu.job(busy, running).state.value == "running")
        daemon.proc.send_signal(15)
        # the idle context closes at once; the busy one drains its running job
        assert eventually(
            lambda: any(
                e.get("context") == idle.context_id for e in daemon.log_events("context.destroyed")
            )
        )
        assert npu.wait(busy, queued, timeout_s=10).state.value == "cancelled"
        with grpc.insecure_channel(f"unix:{daemon.socket}") as channel:
            stub = job_pb2_grpc.JobServiceStub(channel)
            with pytest.raises(grpc.RpcError) as info:
                stub.WaitJob(
                    job_pb2.WaitJobRequest(context_id=idle.context_id, job_id=done.job_id),
                    metadata=npu.metadata,
                    timeout=10,
                )
        assert info.value.code() is grpc.StatusCode.UNAVAILABLE, info.value.details()
        assert "shutting down" in (info.value.details() or "")
