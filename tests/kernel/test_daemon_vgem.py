"""The daemon on a real DRM kernel: ``npud --device vgem`` serves jobs whose buffers are real
GEM objects on the kernel's virtual GEM driver, over gRPC, and drains on SIGTERM."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest

import npud.client
from npud.client import Access, Bind, JobSpec, JobState
from npud.isa import Program, T
from npud.testing.daemon import isolated_env, spawn_npud

pytestmark = pytest.mark.kernel

N = 256


def test_the_daemon_serves_vgem_and_computes_on_gem_buffers(tmp_path: Path) -> None:
    """With ``--device vgem`` the daemon opens the vgem card node, lists it (driver vgem,
    execution simulated), runs out = a * b + a over gRPC on buffers that are GEM objects, with
    a result equal to numpy's, and exits 0 on SIGTERM."""
    # the guest is slow: the job asks for a 120 s watchdog, over THROUGHPUT's default ceiling
    env = isolated_env(
        {
            "NPUD_SOCKET_MODE": "0666",
            "NPUD_SHUTDOWN_GRACE_S": "5",
            "NPUD_LIMITS__THROUGHPUT_TIMEOUT_MAX_S": "120",
        }
    )
    daemon = spawn_npud(tmp_path, env, args=("--device", "vgem"))
    try:
        daemon.wait_ready(timeout=300.0)  # python in the TCG guest is 15x slower than the host
        with npud.client.connect(daemon.socket) as npu:
            [device] = npu.devices()
            assert device.driver == "vgem"
            assert device.simulated
            ctx = npu.create_context(device.name, label="vgem")
            q = npu.create_queue(ctx)
            rng = np.random.default_rng(7)
            a = rng.standard_normal(N).astype(np.float32)
            b = rng.standard_normal(N).astype(np.float32)
            bufs = []
            for data in (a, b, np.zeros(N, dtype=np.float32), np.zeros(N, dtype=np.float32)):
                buf = npu.create_buffer(ctx, N * 4)
                npu.write_buffer(ctx, buf, data.tobytes())
                bufs.append(buf)
            program = (
                Program()
                .mul(out=T(2, 0, (N,)), a=T(0, 0, (N,)), b=T(1, 0, (N,)))
                .add(out=T(3, 0, (N,)), a=T(2, 0, (N,)), b=T(0, 0, (N,)))
                .encode()
            )
            binds = (Bind(bufs[0]), Bind(bufs[1]), Bind(bufs[2], Access.WRITE))
            spec = JobSpec(q, program, (*binds, Bind(bufs[3], Access.WRITE)), timeout_s=120.0)
            done = npu.wait(ctx, npu.submit(ctx, spec), timeout_s=120.0)
            assert done.state is JobState.COMPLETED, done.error
            out = np.frombuffer(npu.read_buffer(ctx, bufs[3]), dtype=np.float32)
            np.testing.assert_allclose(out, a * b + a, rtol=1e-6)
            npu.destroy_context(ctx)
        assert daemon.stop(signal.SIGTERM, timeout=120.0) == 0, daemon.log()
    finally:
        daemon.stop(signal.SIGKILL, timeout=30.0)
