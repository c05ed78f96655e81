"""The submit socket attacked from another uid, fuzzed, and left unread.

The victim is root (the test process); the attacker is nobody, running
tests/reliability/submit_attacker.py. The module has a daemon of its own, so what it does to
the daemon's memory and descriptors is not measured against the other modules' baselines.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

import npud.client
from npud.client import Access, Bind, BufferUsage, JobSpec, Readback, SchedulingClass
from npud.config import submit_socket_for
from npud.isa import Program, Tensor
from npud.testing.daemon import DaemonProcess
from npud.v1 import job_pb2
from npud.vocab.frames import FrameReader, frame
from tests import ROOT
from tests.reliability.harness import NOBODY, eventually, own_daemon, record, rss_bytes
from tests.reliability.leaks import assert_back, baseline

pytestmark = pytest.mark.slow

MiB = 1 << 20
N = 64  # the bystander's matmul side
NULL = Program().encode()


@pytest.fixture(scope="module")
def shared() -> Iterator[DaemonProcess]:
    """This module's daemon (sim, reachable by every uid)."""
    with own_daemon("npud-submit-") as daemon:
        yield daemon


@pytest.fixture(scope="module")
def root(shared: DaemonProcess) -> Iterator[npud.client.Client]:
    """A root (admin) client of this module's daemon."""
    with npud.client.connect(shared.socket) as client:
        yield client


def _attacker(socket_path: os.PathLike[str], scenario: str, **args: Any) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.reliability.submit_attacker",
            "--uid",
            str(NOBODY),
            "--gid",
            str(NOBODY),
            str(socket_path),
            scenario,
            json.dumps(args),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        cwd=str(ROOT),
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        text=True,
    )


def _finish(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    result: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    return result


class Victim:
    """Root's context with a matmul (x @ w into out) and numpy's answer for it."""

    def __init__(self, npu: npud.client.Client, label: str) -> None:
        rng = np.random.default_rng(5)
        w = rng.integers(-3, 4, size=(N, N)).astype(np.float32)
        x = rng.integers(-3, 4, size=(1, N)).astype(np.float32)
        self.npu = npu
        self.ctx = npu.create_context(label=label)
        self.queue = npu.create_queue(self.ctx, SchedulingClass.LATENCY)
        wb = npu.create_buffer(self.ctx, w.nbytes, usage=BufferUsage.STATE)
        xb = npu.create_buffer(self.ctx, x.nbytes, usage=BufferUsage.STATE)
        self.out = npu.create_buffer(self.ctx, x.nbytes, usage=BufferUsage.STATE)
        npu.write_buffer(self.ctx, wb, w.tobytes())
        npu.write_buffer(self.ctx, xb, x.tobytes())
        prog = Program().matmul(Tensor(2, 0, (1, N)), Tensor(0, 0, (1, N)), Tensor(1, 0, (N, N)))
        self.spec = JobSpec(
            self.queue, prog.encode(), (Bind(xb), Bind(wb), Bind(self.out, Access.WRITE))
        )
        self.expected = (x @ w)[0]

    def run_until(self, stop: threading.Event, stream: npud.client.SubmitStream) -> list[str]:
        """Matmuls on ``stream`` until ``stop`` is set (at least one); what went wrong."""
        wrong: list[str] = []
        runs = 0
        while runs == 0 or not stop.is_set():
            res = stream.run(self.spec, [Readback(self.out, 0, N * 4)])
            runs += 1
            if not res.ok:
                wrong.append(f"run {runs}: {res.error}")
            elif not np.array_equal(np.frombuffer(res.readbacks[0], np.float32), self.expected):
                wrong.append(f"run {runs}: a wrong product")
        return wrong

    def close(self) -> None:
        self.npu.destroy_context(self.ctx)


def test_another_user_reaches_nothing_of_roots(
    shared: DaemonProcess, root: npud.client.Client
) -> None:
    """Root's token, leaked to nobody, opens no stream (UNAUTHENTICATED: it is bound to the
    uid the kernel reports); nobody's own stream gets NOT_FOUND for root's context over the
    socket exactly as over the rpc, and for root's buffer named in a readback or a binding
    of its own job; root's context ran none of it."""
    victim = Victim(root, "victim")
    try:
        buf = root.buffers(victim.ctx)[0]
        got = _finish(
            _attacker(
                shared.socket,
                "steal",
                token=root.identity.token,
                context_id=victim.ctx.context_id,
                queue_id=victim.queue.queue_id,
                buffer_id=buf.buffer_id,
            )
        )
        assert got == {
            "leaked_token": "Unauthenticated",
            "socket_victims_context": "NotFound",
            "grpc_victims_context": "NotFound",
            "readback_of_victims_buffer": "NotFound",
            "binding_victims_buffer": "NotFound",
        }
        assert root.jobs(victim.ctx) == []
    finally:
        victim.close()


def test_random_frames_never_hurt_the_daemon_or_another_stream(
    shared: DaemonProcess, root: npud.client.Client
) -> None:
    """Four hundred seeded random frames from nobody after a valid handshake (random bytes,
    requests with flipped bytes, well-formed requests with random fields): each is answered
    by one well-formed response, under its tag when it parses as a request and tag 0
    INVALID_ARGUMENT with the connection closed when it does not; no reply is an internal
    error. Root's stream runs correct matmuls all along, the daemon stays up, and it holds
    its baseline contexts, buffers and descriptors afterwards."""
    base = baseline(shared, root)
    victim = Victim(root, "bystander")
    stop = threading.Event()
    wrong: list[str] = []
    try:
        with root.submit_stream(victim.ctx) as stream:
            assert stream.via == "socket"
            runner = threading.Thread(
                target=lambda: wrong.extend(victim.run_until(stop, stream)), daemon=True
            )
            runner.start()
            try:
                got = _finish(
                    _attacker(
                        shared.socket,
                        "fuzz",
                        seed=20261203,
                        n=400,
                        victim_context=victim.ctx.context_id,
                        victim_queue=victim.queue.queue_id,
                        victim_buffer=victim.out.buffer_id,
                    )
                )
            finally:
                stop.set()
                runner.join(120)
            assert not runner.is_alive()
    finally:
        victim.close()
    shared.check()
    assert got["anomalies"] == []
    counts = got["counts"]
    record("submit_socket.fuzz", counts)
    assert counts["frames"] == 400
    assert min(counts["served"], counts["refused"], counts["broken"]) > 0, counts
    assert wrong == []
    assert_back(shared, root, base)


def test_a_client_killed_with_jobs_in_flight_leaks_nothing(
    shared: DaemonProcess, root: npud.client.Client
) -> None:
    """Nobody, SIGKILLed with a socket stream open and BURN jobs in flight, leaves the daemon
    with its baseline contexts, buffers and open descriptors: the jobs end, the stream's
    command buffers are released, the session's context is destroyed."""
    base = baseline(shared, root)
    proc = _attacker(shared.socket, "die", n=6, seconds=0.2)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=30)
    assert line, err[-3000:]
    assert json.loads(line)["submitted"] == 6
    assert_back(shared, root, base)


def test_a_client_that_stops_reading_is_paused_not_buffered(
    shared: DaemonProcess, root: npud.client.Client
) -> None:
    """A client that sends 400 jobs, each reading back 1 MiB, and reads no response: the
    daemon stops reading its requests instead of holding their 400 MiB of responses (its RSS
    grows by far less), another client's stream is served meanwhile, and when the client
    reads at last it gets every response once, with the right bytes."""
    jobs = 400
    victim = Victim(root, "served-meanwhile")
    ctx = root.create_context(label="never-reads")
    q = root.create_queue(ctx, SchedulingClass.LATENCY)
    big = root.create_buffer(ctx, MiB, usage=BufferUsage.STATE)
    data = os.urandom(MiB)
    root.write_buffer(ctx, big, data)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(60)
    sock.connect(str(submit_socket_for(shared.socket)))
    reader = FrameReader(64 * MiB)
    sent = threading.Event()
    try:
        sock.sendall(frame(json.dumps({"version": 1, "token": root.identity.token}).encode()))
        hello: list[bytes] = []
        while not hello:
            hello = reader.feed(sock.recv(4096))
        assert json.loads(hello[0])["ok"] is True
        before = rss_bytes(shared.proc.pid)
        requests = b"".join(
            frame(
                job_pb2.SubmitStreamRequest(
                    tag=tag,
                    context_id=ctx.context_id,
                    job=JobSpec(q, NULL, (Bind(big),)).to_wire(),
                    readbacks=[Readback(big, 0, MiB).to_wire()],
                ).SerializeToString()
            )
            for tag in range(1, jobs + 1)
        )

        def send_all() -> None:
            sock.sendall(requests)  # blocks while the daemon does not read
            sent.set()

        sender = threading.Thread(target=send_all, daemon=True)
        sender.start()
        # the daemon is busy with this client, then stops: wait until its queue is idle
        live = [npud.client.JobState.QUEUED, npud.client.JobState.RUNNING]
        assert eventually(lambda: bool(root.jobs(ctx)) and not root.jobs(ctx, states=live), 60)
        taken = len(root.jobs(ctx))
        with root.submit_stream(victim.ctx) as stream:
            stop = threading.Event()
            stop.set()
            assert victim.run_until(stop, stream) == []
        grown = rss_bytes(shared.proc.pid) - before
        record("submit_socket.unread_rss_growth_mib", round(grown / MiB, 1))
        record("submit_socket.unread_jobs_taken", taken)
        assert grown < 128 * MiB, f"the daemon grew {grown / MiB:.0f} MiB for an unread client"
        tags: list[int] = []
        while len(tags) < jobs:
            for body in reader.feed(sock.recv(1 << 20)):
                msg = job_pb2.SubmitStreamResponse()
                msg.ParseFromString(body)
                assert not msg.HasField("error"), msg.error
                assert msg.readbacks[0].data == data
                tags.append(msg.tag)
        assert sorted(tags) == list(range(1, jobs + 1))
        sender.join(60)
        assert sent.is_set()
    finally:
        sock.close()
        victim.close()
        root.destroy_context(ctx)
