"""A submit stream's inline command buffers: reused from job to job, released with the stream.

Through the real daemon and the client library: each job's result must come from the command
stream sent with it (a reused buffer holds the previous, longer stream's bytes past the new
one's end), a refused job leaves nothing behind, and nothing is left once the stream and its
last job have ended.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import numpy as np
import pytest

import npud.client
from npud.client import Access, Bind, BufferUsage, JobSpec, Readback, SchedulingClass
from npud.isa import Program, T
from npud.testing.daemon import DaemonProcess, start_daemon

pytestmark = pytest.mark.slow

N = 16  # floats per vector


@pytest.fixture(scope="module")
def npu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[npud.client.Client]:
    daemon: DaemonProcess = start_daemon(tmp_path_factory.mktemp("npud-command-pool"))
    try:
        with npud.client.connect(daemon.socket) as client:
            yield client
    finally:
        assert daemon.stop() == 0


def _commands(npu: npud.client.Client, ctx: npud.client.Context) -> list[str]:
    return [b.buffer_id for b in npu.buffers(ctx) if b.usage is BufferUsage.COMMAND]


def _wait_for_no_commands(npu: npud.client.Client, ctx: npud.client.Context) -> list[str]:
    deadline = time.monotonic() + 30
    while (left := _commands(npu, ctx)) and time.monotonic() < deadline:
        time.sleep(0.05)
    return left


def test_each_job_runs_its_own_stream_in_one_reused_buffer(npu: npud.client.Client) -> None:
    """Alternating a long and a short program: every readback is the program just sent (a
    reference computed with numpy), and the stream holds one command buffer, not one per job;
    once the stream is closed, none is left."""
    ctx = npu.create_context(label="pool")
    q = npu.create_queue(ctx, SchedulingClass.LATENCY)
    a_data = np.arange(N, dtype=np.float32)
    b_data = np.full(N, 3.0, dtype=np.float32)
    a, b, out = (npu.create_buffer(ctx, N * 4) for _ in range(3))
    npu.write_buffer(ctx, a, a_data.tobytes())
    npu.write_buffer(ctx, b, b_data.tobytes())
    x, y, o = T(0, 0, (N,)), T(1, 0, (N,)), T(2, 0, (N,))
    # the long one adds then multiplies into out (a*b); the short one only adds (a+b)
    long_prog = Program().add(out=o, a=x, b=y).mul(out=o, a=x, b=y).encode()
    short_prog = Program().add(out=o, a=x, b=y).encode()
    assert len(long_prog) > len(short_prog)
    binds = (Bind(a), Bind(b), Bind(out, Access.WRITE))
    with npu.submit_stream(ctx) as stream:
        for i in range(6):
            prog, expected = (
                (long_prog, a_data * b_data) if i % 2 == 0 else (short_prog, a_data + b_data)
            )
            res = stream.run(JobSpec(q, prog, binds), [Readback(out, 0, N * 4)])
            assert res.ok, res.error
            np.testing.assert_array_equal(np.frombuffer(res.readbacks[0], np.float32), expected)
        assert len(_commands(npu, ctx)) == 1
    assert _wait_for_no_commands(npu, ctx) == []
    assert [buf.buffer_id for buf in npu.buffers(ctx)] == [a.buffer_id, b.buffer_id, out.buffer_id]
    npu.destroy_context(ctx)


def test_a_refused_job_leaves_no_buffer_and_the_stream_goes_on(npu: npud.client.Client) -> None:
    """A job naming an unknown queue is answered in-band; it creates no command buffer, and the
    next good job reuses the one the stream holds."""
    ctx = npu.create_context(label="pool-refused")
    q = npu.create_queue(ctx, SchedulingClass.LATENCY)
    null = Program().encode()
    with npu.submit_stream(ctx) as stream:
        assert stream.run(JobSpec(q, null)).ok
        held = _commands(npu, ctx)
        bad = stream.run(JobSpec("q-unknown", null))
        assert bad.error is not None
        assert bad.error.kind == "NotFound"
        assert _commands(npu, ctx) == held
        assert stream.run(JobSpec(q, null)).ok
        assert _commands(npu, ctx) == held
    assert _wait_for_no_commands(npu, ctx) == []
    npu.destroy_context(ctx)


def test_a_job_running_when_the_stream_ends_releases_its_buffer(
    npu: npud.client.Client,
) -> None:
    """Jobs still on the device when the stream closes keep their buffers until they end, and
    then release them: nothing is left behind."""
    ctx = npu.create_context(label="pool-in-flight")
    q = npu.create_queue(ctx, SchedulingClass.THROUGHPUT)
    burn = Program().burn(0.05).encode()
    with npu.submit_stream(ctx) as stream:
        for _ in range(3):
            stream.submit(JobSpec(q, burn))
    assert _wait_for_no_commands(npu, ctx) == []
    npu.destroy_context(ctx)
