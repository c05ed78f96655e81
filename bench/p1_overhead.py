"""P1 overhead: what a null job costs through npud, against the floors it cannot beat.

Three round trips are timed in one process, on one asyncio loop, interleaved in rounds so that
load from other processes on the machine hits all three alike:

* **npud**: a null job (an empty command stream, pre-uploaded to a command buffer) submitted
  on a LATENCY queue over the bidirectional ``SubmitStream`` of a real daemon (simulated NPU in
  process mode) with the asyncio client, until its result comes back;
* **echo**: a bare ``grpc.aio`` bidirectional stream over a Unix socket to a server in another
  process that echoes each message (the same message size): the floor any gRPC daemon pays;
* **direct**: the same null job submitted by this process straight into the device layer
  (``SimDevice`` in process mode, ``submit_and_wait``): what a process that opens the NPU itself
  pays, with no daemon.

The npud path contains the device path (the daemon runs the same device process), so npud's own
cost is roughly ``npud - direct``; the goal compares npud with the echo floor.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.daemon import ROOT, running_daemon
from bench.results import BenchResult, Metric, percentile

GOAL_RATIO = 1.3
ECHO_SERVICE = "bench.Echo"
_ECHO_MAIN = "import sys; from bench.p1_overhead import _echo_server; _echo_server(sys.argv[1])"


def _echo_server(path: str) -> None:
    """The echo process: one bidirectional method that returns every message as it came."""
    import grpc

    async def serve() -> None:
        async def stream(requests: Any, _context: Any) -> Any:
            async for msg in requests:
                yield msg

        server = grpc.aio.server()
        handler = grpc.method_handlers_generic_handler(
            ECHO_SERVICE, {"Stream": grpc.stream_stream_rpc_method_handler(stream)}
        )
        server.add_generic_rpc_handlers((handler,))
        server.add_insecure_port(f"unix://{path}")
        await server.start()
        await server.wait_for_termination()

    asyncio.run(serve())


class _Paths:
    """The three round trips, each ready to time one call."""

    def __init__(self) -> None:
        self.echo_call: Any = None
        self.stream: Any = None
        self.spec: Any = None
        self.device: Any = None
        self.submission: Any = None
        self.payload = b""

    async def echo(self) -> None:
        await self.echo_call.write(self.payload)
        await self.echo_call.read()

    async def npud(self) -> None:
        res = await self.stream.run(self.spec)
        if not res.ok:
            raise RuntimeError(f"the null job failed: {res.error}")

    async def direct(self) -> None:
        from npud.devices.base import CompletionStatus, submit_and_wait

        done = await submit_and_wait(self.device, self.submission)
        if done.status is not CompletionStatus.OK:
            raise RuntimeError(f"the direct null job failed: {done.error}")


async def _measure(socket: Path, echo_path: Path, rounds: int, per_round: int) -> dict[str, Any]:
    import grpc

    import npud.client.aio
    from npud.client import BufferUsage, CommandRef, JobSpec, SchedulingClass
    from npud.client import requests as rq
    from npud.devices.base import MemoryTier, Submission
    from npud.devices.sim import SimDevice
    from npud.isa.program import Program

    null = Program().encode()
    paths = _Paths()
    samples: dict[str, list[float]] = {"npud": [], "echo": [], "direct": []}
    async with npud.client.aio.connect(socket) as npu:
        ctx = await npu.create_context(label="bench/p1")
        q = await npu.create_queue(ctx, SchedulingClass.LATENCY)
        cmd = await npu.create_buffer(ctx, len(null), usage=BufferUsage.COMMAND)
        await npu.write_buffer(ctx, cmd, null)
        paths.spec = JobSpec(q, CommandRef(cmd), kind="null")
        # the echo carries a message as large as the submit request it stands for
        paths.payload = rq.stream_entry(1, ctx, paths.spec, ()).SerializeToString()

        device = SimDevice("rk3588", mode="process", name="bench-direct")
        device.open()
        try:
            buf = device.create_buffer(len(null), MemoryTier.DRAM)
            view = device.map_buffer(buf.handle)
            view[: len(null)] = null
            view.release()
            paths.device = device
            paths.submission = Submission(buf.handle, 0, len(null), (), engine=0, label="null")
            async with grpc.aio.insecure_channel(f"unix://{echo_path}") as channel:
                paths.echo_call = channel.stream_stream(f"/{ECHO_SERVICE}/Stream")()
                async with npu.submit_stream(ctx) as stream:
                    paths.stream = stream
                    order = [("npud", paths.npud), ("echo", paths.echo), ("direct", paths.direct)]
                    for _ in range(max(20, per_round // 5)):  # warm every path
                        for _, fn in order:
                            await fn()
                    for r in range(rounds):
                        for name, fn in order[r % 3 :] + order[: r % 3]:
                            acc = samples[name]
                            for _ in range(per_round):
                                t0 = time.perf_counter()
                                await fn()
                                acc.append(time.perf_counter() - t0)
                await paths.echo_call.done_writing()
        finally:
            device.close()
        await npu.destroy_context(ctx)
    return {"samples": samples, "payload_bytes": len(paths.payload)}


def run(quick: bool) -> BenchResult:
    """Measure P1 (see the module docstring).

    Raises:
        DaemonDied: the daemon exited. RuntimeError: a null job failed or the echo server died.
    """
    rounds, per_round = (3, 30) if quick else (12, 250)
    result = BenchResult("P1", "overhead: null job round trip")
    result.params = {"rounds": rounds, "per_round": per_round}
    tmp = Path(tempfile.mkdtemp(prefix="npud-bench-echo-"))
    echo_path = tmp / "echo.sock"
    proc = subprocess.Popen(
        [sys.executable, "-c", _ECHO_MAIN, str(echo_path)],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not echo_path.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the echo server did not start")
            time.sleep(0.05)
        with running_daemon("npud") as daemon:
            got = asyncio.run(_measure(daemon.socket, echo_path, rounds, per_round))
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    s = got["samples"]
    us = {k: [v * 1e6 for v in vals] for k, vals in s.items()}
    result.samples = {f"{k}_us": vals for k, vals in us.items()}
    result.params["payload_bytes"] = got["payload_bytes"]
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        npud_v, echo_v, direct_v = (percentile(us[k], q) for k in ("npud", "echo", "direct"))
        result.add(
            Metric(
                f"null job {label} vs echo",
                npud_v,
                "us",
                echo_v,
                "grpc.aio echo",
                f"<= {GOAL_RATIO}x echo",
                npud_v <= GOAL_RATIO * echo_v,
            )
        )
        result.add(Metric(f"null job {label} vs direct", npud_v, "us", direct_v, "direct device"))
    result.notes.append(
        "Daemon: real npud, SimDevice process mode (rk3588, 50 us modelled launch), asyncio "
        "client, LATENCY queue, pre-uploaded empty command stream; echo: grpc.aio bidi stream "
        f"to another process, {got['payload_bytes']} B messages; direct: SimDevice process mode "
        f"in the benchmark's own process. {rounds} interleaved rounds x {per_round} calls each."
    )
    return result
