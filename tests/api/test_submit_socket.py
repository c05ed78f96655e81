"""The submit socket on a real daemon: the rpc's results without gRPC, refusals, broken
frames, its bounds, what a closed client leaves behind, and the gRPC fallback. (Attacks from
another uid: tests/reliability/test_submit_socket.py.)"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import npud.client
import npud.client.aio
from npud.api.submit_socket import MAX_CONNECTIONS_PER_USER, MAX_REQUEST
from npud.client import (
    Access,
    Bind,
    BufferUsage,
    JobResult,
    JobSpec,
    Readback,
    SchedulingClass,
)
from npud.config import submit_socket_for
from npud.errors import Unauthenticated, Unavailable
from npud.isa import Program, Tensor
from npud.testing.daemon import DaemonProcess, start_daemon
from npud.v1 import job_pb2
from npud.vocab.frames import HEADER, FrameReader, frame

pytestmark = pytest.mark.slow

N = 64  # the matmul's side
INVALID_ARGUMENT = 3
UNAUTHENTICATED = 16
NULL = Program().encode()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = start_daemon(tmp_path_factory.mktemp("submit-socket"))
    yield d
    assert d.stop() == 0, d.log()[-4000:]


@pytest.fixture
def npu(daemon: DaemonProcess) -> Iterator[npud.client.Client]:
    with npud.client.connect(daemon.socket) as client:
        yield client


class Raw:
    """A submit socket connection spoken by hand: frames out, frames (or the end) in."""

    def __init__(self, daemon_socket: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(30)  # a hang guard, not a measurement
        self.sock.connect(str(submit_socket_for(daemon_socket)))
        self._reader = FrameReader(1 << 30)
        self._frames: list[bytes] = []

    def send(self, body: bytes) -> None:
        """One frame."""
        self.sock.sendall(frame(body))

    def hello(self, token: str, **extra: Any) -> dict[str, Any]:
        """The handshake; the daemon's reply."""
        self.send(json.dumps({"version": 1, "token": token, **extra}).encode())
        return self.reply()

    def reply(self) -> dict[str, Any]:
        """The next frame as the handshake's JSON reply."""
        body = self.next()
        assert body is not None, "the daemon closed without a handshake reply"
        msg: dict[str, Any] = json.loads(body)
        return msg

    def response(self) -> job_pb2.SubmitStreamResponse:
        """The next frame as a SubmitStreamResponse."""
        body = self.next()
        assert body is not None, "the daemon closed without a response"
        msg = job_pb2.SubmitStreamResponse()
        msg.ParseFromString(body)
        return msg

    def next(self) -> bytes | None:
        """The next frame's body, or None when the daemon closed the connection."""
        while not self._frames:
            try:
                data = self.sock.recv(1 << 16)
            except ConnectionResetError:  # it closed with our unread bytes in its buffer
                return None
            if not data:
                return None
            self._frames.extend(self._reader.feed(data))
        return self._frames.pop(0)

    def ended(self) -> bool:
        """Whether the daemon closed the connection with nothing more to say."""
        return self.next() is None

    def close(self) -> None:
        self.sock.close()


def _raw(daemon: DaemonProcess) -> Raw:
    return Raw(daemon.socket)


def _held(npu: npud.client.Client) -> tuple[int, int]:
    dev = npu.stats().devices[0]
    return dev.contexts, dev.buffers


def _commands(npu: npud.client.Client, ctx: npud.client.Context) -> list[str]:
    return [b.buffer_id for b in npu.buffers(ctx) if b.usage is BufferUsage.COMMAND]


def _eventually(condition: Callable[[], bool], timeout: float = 30.0) -> bool:
    """Poll ``condition`` until it holds or ``timeout`` s pass (a hang guard); whether it held."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@dataclass(frozen=True, slots=True)
class Matmul:
    """One context's matmul job (x @ w into out) and numpy's answer."""

    ctx: npud.client.Context
    queue: npud.client.Queue
    spec: JobSpec
    out: npud.client.Buffer
    expected: np.ndarray[Any, np.dtype[np.float32]]


def _matmul(npu: npud.client.Client, label: str) -> Matmul:
    rng = np.random.default_rng(11)
    w = rng.integers(-3, 4, size=(N, N)).astype(np.float32)
    x = rng.integers(-3, 4, size=(1, N)).astype(np.float32)
    ctx = npu.create_context(label=label)
    q = npu.create_queue(ctx, SchedulingClass.LATENCY)
    wb = npu.create_buffer(ctx, w.nbytes, usage=BufferUsage.STATE)
    xb = npu.create_buffer(ctx, x.nbytes, usage=BufferUsage.STATE)
    out = npu.create_buffer(ctx, x.nbytes, usage=BufferUsage.STATE)
    npu.write_buffer(ctx, wb, w.tobytes())
    npu.write_buffer(ctx, xb, x.tobytes())
    prog = Program().matmul(Tensor(2, 0, (1, N)), Tensor(0, 0, (1, N)), Tensor(1, 0, (N, N)))
    spec = JobSpec(q, prog.encode(), (Bind(xb), Bind(wb), Bind(out, Access.WRITE)), kind="mm")
    return Matmul(ctx, q, spec, out, (x @ w)[0])


def _summary(res: JobResult) -> tuple[object, ...]:
    """What a result says, without what differs from run to run (ids, times)."""
    assert res.job is not None
    return (res.ok, res.job.state, res.job.kind, res.readbacks, res.error)


def test_the_socket_and_grpc_give_the_same_results(daemon: DaemonProcess) -> None:
    """A matmul whose readback equals numpy's product, a null job, and a job naming an
    unknown queue give the same results through the submit socket (the default client's
    stream) and through the rpc (``submit_socket=False``)."""
    got: dict[str, list[tuple[object, ...]]] = {}
    for choice in (None, False):
        with npud.client.connect(daemon.socket, submit_socket=choice) as npu:
            mm = _matmul(npu, f"same-{choice}")
            with npu.submit_stream(mm.ctx) as stream:
                res = stream.run(mm.spec, [Readback(mm.out, 0, N * 4)])
                assert res.ok, res.error
                got_row = np.frombuffer(res.readbacks[0], dtype=np.float32)
                np.testing.assert_array_equal(got_row, mm.expected)
                null = stream.run(JobSpec(mm.queue, NULL))
                assert null.ok, null.error
                refused = stream.run(JobSpec("q-unknown", NULL))
                assert refused.error is not None
                got[stream.via] = [_summary(res), _summary(null)[1:], (refused.error.kind,)]
    assert set(got) == {"socket", "grpc"}
    assert got["socket"] == got["grpc"]
    assert got["socket"][2] == ("NotFound",)


def test_the_asyncio_client_gets_the_same_results_both_ways(daemon: DaemonProcess) -> None:
    """The asyncio client's stream goes over the socket by default and over the rpc with
    ``submit_socket=False`` (``via`` is set at the first submit), and concurrent runs of the
    matmul and null jobs give numpy's product and the same results both ways."""

    async def main(choice: bool | None) -> tuple[str, list[tuple[object, ...]]]:
        with npud.client.connect(daemon.socket) as setup:
            mm = _matmul(setup, f"aio-{choice}")
            async with npud.client.aio.connect(daemon.socket, submit_socket=choice) as npu:
                async with npu.submit_stream(mm.ctx) as stream:
                    assert stream.via == ""
                    results = await asyncio.gather(
                        stream.run(mm.spec, [Readback(mm.out, 0, N * 4)]),
                        stream.run(JobSpec(mm.queue, NULL)),
                        stream.run(JobSpec(mm.queue, NULL)),
                    )
                    via = stream.via
            setup.destroy_context(mm.ctx)
        for res in results:
            assert res.ok, res.error
        got_row = np.frombuffer(results[0].readbacks[0], dtype=np.float32)
        np.testing.assert_array_equal(got_row, mm.expected)
        return via, [_summary(r) for r in results]

    by_socket = asyncio.run(main(None))
    by_rpc = asyncio.run(main(False))
    assert (by_socket[0], by_rpc[0]) == ("socket", "grpc")
    assert by_socket[1] == by_rpc[1]


@pytest.mark.parametrize("choice", [None, False], ids=["socket", "grpc"])
def test_a_refused_request_is_answered_with_its_tag_and_the_stream_goes_on(
    npu: npud.client.Client, daemon: DaemonProcess, choice: bool | None
) -> None:
    """An unknown queue (NotFound), an empty inline command stream and 17 readbacks (both
    INVALID_ARGUMENT naming what is wrong) are each answered under their own tag, with the
    same error over the socket as over the rpc; they leave no command buffer behind and the
    next job on the same stream runs."""
    ctx = npu.create_context(label=f"refused-{choice}")
    q = npu.create_queue(ctx, SchedulingClass.LATENCY)
    buf = npu.create_buffer(ctx, 4096)
    with npud.client.connect(daemon.socket, submit_socket=choice) as client:
        with client.submit_stream(ctx) as stream:
            assert stream.via == ("grpc" if choice is False else "socket")
            assert stream.run(JobSpec(q, NULL)).ok
            held = _commands(npu, ctx)
            cases = [
                (JobSpec("q-unknown", NULL), (), "NotFound", "q-unknown"),
                (JobSpec(q, b""), (), "InvalidArgument", "command_inline is empty"),
                (
                    JobSpec(q, NULL, (Bind(buf),)),
                    [Readback(buf, 0, 4)] * 17,
                    "InvalidArgument",
                    "the limit is 16",
                ),
            ]
            tags = [stream.submit(spec, rbs) for spec, rbs, _, _ in cases]
            for tag, (_, _, kind, words) in zip(tags, cases, strict=True):
                res = stream.result(tag)
                assert res.error is not None, tag
                assert res.error.kind == kind
                assert words in res.error.message
                assert res.job is None
            assert _commands(npu, ctx) == held
            again = stream.run(JobSpec(q, NULL, (Bind(buf),)), [Readback(buf, 0, 4)])
            assert again.ok, again.error
            assert again.readbacks == (bytes(4),)
    npu.destroy_context(ctx)


HANDSHAKES = {
    "not-json": (b"\x00hello", "InvalidArgument", "JSON object"),
    "not-an-object": (b'["version", 1]', "InvalidArgument", "JSON object"),
    "wrong-version": (b'{"version": 2, "token": "x"}', "InvalidArgument", "speaks 1"),
    "no-token": (b'{"version": 1}', "Unauthenticated", "no valid session token"),
    "unknown-token": (
        b'{"version": 1, "token": "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA"}',
        "Unauthenticated",
        "no valid session token",
    ),
    "token-not-a-string": (b'{"version": 1, "token": 7}', "Unauthenticated", "session token"),
    "deeply-nested": (b"[" * 2000 + b"]" * 2000, "InvalidArgument", "JSON object"),
}


@pytest.mark.parametrize("case", sorted(HANDSHAKES))
def test_a_bad_handshake_is_refused_and_changes_nothing(
    npu: npud.client.Client, daemon: DaemonProcess, case: str
) -> None:
    """Each bad handshake is answered ``{"ok": false, "error": <npud.errors class>,
    "message": ...}`` and the connection closes; the daemon holds what it held before (its
    contexts and buffers) and goes on serving a good stream."""
    hello, kind, words = HANDSHAKES[case]
    before = _held(npu)
    raw = _raw(daemon)
    try:
        raw.send(hello)
        reply = raw.reply()
        assert reply["ok"] is False
        assert reply["error"] == kind
        assert words in reply["message"]
        assert raw.ended()
    finally:
        raw.close()
    assert _held(npu) == before
    ctx = npu.create_context(label=f"after-{case}")
    q = npu.create_queue(ctx)
    assert npu.run(ctx, JobSpec(q, NULL)).ok
    npu.destroy_context(ctx)


def test_an_oversized_handshake_is_refused_without_its_body(daemon: DaemonProcess) -> None:
    """A handshake frame announcing more than 4 KiB is refused (InvalidArgument naming the
    limit) as soon as its header arrives, and the connection closes."""
    raw = _raw(daemon)
    try:
        raw.sock.sendall(HEADER.pack(1 << 20))
        reply = raw.reply()
        assert (reply["ok"], reply["error"]) == (False, "InvalidArgument")
        assert "the limit is 4096" in reply["message"]
        assert raw.ended()
    finally:
        raw.close()


def test_a_good_handshake_names_the_limits(npu: npud.client.Client, daemon: DaemonProcess) -> None:
    """The client's live token from its own uid opens the stream: the reply names the
    protocol version and the largest request frame."""
    raw = _raw(daemon)
    try:
        assert raw.hello(npu.identity.token) == {
            "ok": True,
            "version": 1,
            "max_request": MAX_REQUEST,
        }
    finally:
        raw.close()


@pytest.mark.parametrize("broken", ["not-a-request", "too-large"])
def test_a_frame_that_is_not_a_request_ends_the_stream(
    npu: npud.client.Client, daemon: DaemonProcess, broken: str
) -> None:
    """After the handshake, bytes that do not parse as a SubmitStreamRequest, or a header
    announcing more than max_request (sent without a body: the daemon answers on the header
    alone), get exactly one response, tag 0 with INVALID_ARGUMENT saying why, and the
    connection closes; the job sent before it still ran and was answered first."""
    ctx = npu.create_context(label=f"broken-{broken}")
    q = npu.create_queue(ctx)
    raw = _raw(daemon)
    try:
        assert raw.hello(npu.identity.token)["ok"] is True
        good = job_pb2.SubmitStreamRequest(
            tag=5, context_id=ctx.context_id, job=JobSpec(q, NULL).to_wire()
        )
        raw.send(good.SerializeToString())
        first = raw.response()
        assert (first.tag, first.HasField("error")) == (5, False)
        if broken == "not-a-request":
            raw.send(b"\xff\xff\xff\xff")
            words = "not a SubmitStreamRequest"
        else:
            raw.sock.sendall(HEADER.pack(MAX_REQUEST + 1))
            words = f"the limit is {MAX_REQUEST}"
        last = raw.response()
        assert last.tag == 0
        assert (last.error.kind, last.error.code) == ("InvalidArgument", INVALID_ARGUMENT)
        assert words in last.error.message
        assert raw.ended()
    finally:
        raw.close()
    assert _eventually(lambda: _commands(npu, ctx) == [])
    npu.destroy_context(ctx)


def test_a_user_holds_at_most_64_connections(
    npu: npud.client.Client, daemon: DaemonProcess
) -> None:
    """With 64 connections of this uid open, the 65th handshake is refused ResourceExhausted
    (naming the limit) and closed; once one of the 64 closes, a new one is admitted."""
    held: list[Raw] = []

    def admitted() -> bool:
        # a connection of an earlier test may still be closing in the daemon: try again
        raw = _raw(daemon)
        reply = raw.hello(npu.identity.token)
        if reply["ok"]:
            held.append(raw)
            return True
        raw.close()
        assert reply["error"] == "ResourceExhausted", reply
        return False

    try:
        for _ in range(MAX_CONNECTIONS_PER_USER):
            assert _eventually(admitted)
        extra = _raw(daemon)
        held.append(extra)
        reply = extra.hello(npu.identity.token)
        assert (reply["ok"], reply["error"]) == (False, "ResourceExhausted")
        assert f"holds {MAX_CONNECTIONS_PER_USER} submit connections" in reply["message"]
        assert extra.ended()
        held.pop().close()
        held.pop().close()
        assert _eventually(admitted)
        assert len(held) == MAX_CONNECTIONS_PER_USER
    finally:
        for raw in held:
            raw.close()


def test_a_stream_closed_with_jobs_in_flight_leaks_nothing(
    npu: npud.client.Client, daemon: DaemonProcess
) -> None:
    """A client that closes its socket with jobs still running loses only its own results:
    the jobs run to their end, every command buffer its stream held is released (the
    daemon's buffer count returns to what it was), and another client's stream, running
    matmuls meanwhile, gets every result right and goes on."""
    # the contexts of this module's earlier clients go when their sessions' grace ends
    assert _eventually(lambda: _held(npu)[0] == 0), _held(npu)
    base = _held(npu)
    ctx = npu.create_context(label="dies")
    q = npu.create_queue(ctx, SchedulingClass.THROUGHPUT, in_order=False)
    raw = _raw(daemon)
    assert raw.hello(npu.identity.token)["ok"] is True
    for tag in range(1, 7):
        prog = Program().burn(0.02 * tag).encode()  # distinct lengths: one buffer each
        req = job_pb2.SubmitStreamRequest(
            tag=tag, context_id=ctx.context_id, job=JobSpec(q, prog).to_wire()
        )
        raw.send(req.SerializeToString())
    assert raw.response().tag in range(1, 7)  # the daemon has taken the requests in
    assert _commands(npu, ctx), "the stream held no command buffer"
    with npud.client.connect(daemon.socket) as other:
        mm = _matmul(other, "bystander")
        with other.submit_stream(mm.ctx) as stream:
            assert stream.via == "socket"
            tags = [stream.submit(mm.spec, [Readback(mm.out, 0, N * 4)]) for _ in range(3)]
            raw.close()
            tags += [stream.submit(mm.spec, [Readback(mm.out, 0, N * 4)]) for _ in range(3)]
            for tag in tags:
                res = stream.result(tag)
                assert res.ok, res.error
                got = np.frombuffer(res.readbacks[0], dtype=np.float32)
                np.testing.assert_array_equal(got, mm.expected)
        other.destroy_context(mm.ctx)
    assert _eventually(lambda: _commands(npu, ctx) == []), _commands(npu, ctx)
    npu.destroy_context(ctx)
    assert _eventually(lambda: _held(npu) == base), (_held(npu), base)


def test_a_revoked_token_ends_an_open_stream(daemon: DaemonProcess) -> None:
    """When the session that issued a stream's token ends (its client closed), the next
    request on the still-open socket is answered tag 0 UNAUTHENTICATED and the connection
    closes; the client library raises Unauthenticated."""
    client = npud.client.connect(daemon.socket)
    token = client.identity.token
    ctx = client.create_context(label="revoked")
    q = client.create_queue(ctx)
    stream = client.submit_stream(ctx)
    raw = _raw(daemon)
    try:
        assert stream.via == "socket"
        assert raw.hello(token)["ok"] is True
        assert stream.run(JobSpec(q, NULL)).ok
        client.close()

        def revoked() -> bool:
            probe = _raw(daemon)
            try:
                return probe.hello(token)["ok"] is False
            finally:
                probe.close()

        assert _eventually(revoked), "the session's token was never revoked"
        req = job_pb2.SubmitStreamRequest(
            tag=1, context_id=ctx.context_id, job=JobSpec(q, NULL).to_wire()
        )
        raw.send(req.SerializeToString())
        last = raw.response()
        assert last.tag == 0
        assert (last.error.kind, last.error.code) == ("Unauthenticated", UNAUTHENTICATED)
        assert "revoked" in last.error.message
        assert raw.ended()
        stream.submit(JobSpec(q, NULL))
        with pytest.raises(Unauthenticated, match="revoked"):
            stream.next_result()
    finally:
        raw.close()
        stream.close()
        client.close()


def test_without_the_submit_socket_streams_fall_back_to_grpc(tmp_path: Path) -> None:
    """A daemon without a submit socket (a remote or older npud) still serves submit
    streams: both client libraries fall back to the rpc on their own (``via`` is "grpc")
    and insist only when told (``submit_socket=True`` raises Unavailable)."""
    d = start_daemon(tmp_path)
    try:
        submit_socket_for(d.socket).unlink()
        with npud.client.connect(d.socket) as npu:
            mm = _matmul(npu, "fallback")
            with npu.submit_stream(mm.ctx) as stream:
                assert stream.via == "grpc"
                res = stream.run(mm.spec, [Readback(mm.out, 0, N * 4)])
                assert res.ok, res.error
                got = np.frombuffer(res.readbacks[0], dtype=np.float32)
                np.testing.assert_array_equal(got, mm.expected)
            with npud.client.connect(d.socket, submit_socket=True) as strict:
                with pytest.raises(Unavailable, match="no submit socket"):
                    strict.submit_stream(mm.ctx)

            async def aio(choice: bool | None) -> str:
                async with npud.client.aio.connect(d.socket, submit_socket=choice) as client:
                    async with client.submit_stream(mm.ctx) as stream:
                        assert (await stream.run(JobSpec(mm.queue, NULL))).ok
                        return stream.via

            assert asyncio.run(aio(None)) == "grpc"
            with pytest.raises(Unavailable, match="no submit socket"):
                asyncio.run(aio(True))
    finally:
        assert d.stop() == 0
