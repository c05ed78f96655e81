"""P1 overhead: what a null job costs through npud, against the floors it cannot beat.

Three round trips are timed in one process, on one asyncio loop, interleaved in rounds so that
load from other processes on the machine hits all three alike:

* **npud**: a null job (an empty command stream, sent inline) submitted on a LATENCY queue
  over the submit stream of a real daemon (simulated NPU in process mode) with the asyncio
  client, until its result comes back. The client takes the daemon's submit socket, as every
  local client does by default (the stream's messages without gRPC); the same job over the
  ``SubmitStream`` rpc is measured beside it (**npud over gRPC**), and so is a command
  pre-uploaded to a buffer instead of inline;
* **echo**: a bare ``grpc.aio`` bidirectional stream over a Unix socket to a server in another
  process that echoes each message (the same message size): the floor any gRPC daemon pays.
  Beside it, **socket echo**: an asyncio server echoing each frame over a plain Unix stream
  socket, the floor of the submit socket's transport;
* **direct**: the same null job submitted by this process straight into the device layer
  (``SimDevice`` in process mode, ``submit_and_wait``): what a process that opens the NPU itself
  pays, with no daemon.

The npud path contains the device path (the daemon runs the same device process), so npud's own
cost is roughly ``npud - direct``. Two goals: npud's round trip within 1.8x the gRPC echo, and
npud's added time (``npud - direct``, at each percentile) within 1.3x the gRPC echo: what a
daemon adds to a device round trip should cost about one gRPC round trip, not several. The
rpc's own figures and the socket echo are reported beside them, so the transports can be
compared like with like.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.daemon import ROOT, running_daemon
from bench.results import BenchResult, Metric, percentile

GOAL_RATIO = 1.8
ADDED_GOAL_RATIO = 1.3
ECHO_SERVICE = "bench.Echo"
_ECHO_MAIN = "import sys; from bench.p1_overhead import _echo_server; _echo_server(sys.argv[1])"
_SOCKET_ECHO_MAIN = (
    "import sys; from bench.p1_overhead import _socket_echo_server as serve; serve(sys.argv[1])"
)


def _socket_echo_server(path: str) -> None:
    """The socket echo process: every byte that arrives on a connection goes straight back."""

    class Echo(asyncio.Protocol):
        def connection_made(self, transport: Any) -> None:
            self.transport = transport

        def data_received(self, data: bytes) -> None:
            self.transport.write(data)

    async def serve() -> None:
        server = await asyncio.get_running_loop().create_unix_server(Echo, path)
        async with server:
            await server.serve_forever()

    asyncio.run(serve())


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


Series = Callable[[int], Awaitable[list[float]]]


def _timed(call: Callable[[], Awaitable[None]]) -> Series:
    async def series(n: int) -> list[float]:
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            await call()
            out.append(time.perf_counter() - t0)
        return out

    return series


def _overhead_script() -> Any:
    """``bench/overhead.py`` (the per-job overhead script) if it offers what P1 calls, else None."""
    try:
        from bench import overhead
    except ImportError:
        return None
    if all(hasattr(overhead, f) for f in ("_bench_echo", "_bench_npud", "_echo_server")):
        return overhead
    return None


async def _measure(
    socket: Path,
    echo_path: Path,
    socket_echo_path: Path,
    rounds: int,
    per_round: int,
    script: Any,
) -> dict[str, Any]:
    import grpc

    import npud.client.aio
    from npud.client import BufferUsage, CommandRef, JobSpec, SchedulingClass
    from npud.client import requests as rq
    from npud.client.aio import AsyncSubmitStream
    from npud.devices.base import CompletionStatus, Submission, submit_and_wait
    from npud.devices.sim import SimDevice
    from npud.isa.program import Program
    from npud.vocab import MemoryTier
    from npud.vocab.frames import frame

    null = Program().encode()
    warm = max(10, per_round // 5)
    samples: dict[str, list[float]] = {
        "npud": [],
        "npud_ref": [],
        "npud_grpc": [],
        "echo": [],
        "socket_echo": [],
        "direct": [],
    }
    vias: set[str] = set()
    async with npud.client.aio.connect(socket) as npu:
        ctx = await npu.create_context(label="bench/p1")
        q = await npu.create_queue(ctx, SchedulingClass.LATENCY)
        cmd = await npu.create_buffer(ctx, len(null), usage=BufferUsage.COMMAND)
        await npu.write_buffer(ctx, cmd, null)
        inline = JobSpec(q, null, kind="null")
        by_ref = JobSpec(q, CommandRef(cmd), kind="null")
        payload = rq.stream_entry(1, ctx, inline, ()).SerializeToString()
        device = SimDevice("rk3588", mode="process", name="bench-direct")
        device.open()
        try:
            buf = device.create_buffer(len(null), MemoryTier.DRAM)
            view = device.map_buffer(buf.handle)
            view[: len(null)] = null
            view.release()
            submission = Submission(buf.handle, 0, len(null), (), engine=0, label="null")
            rpc = AsyncSubmitStream(npu.job_stub, ctx, npu.metadata, use_socket=False)
            async with (
                grpc.aio.insecure_channel(f"unix://{echo_path}") as channel,
                npu.submit_stream(ctx) as stream,
                rpc,
            ):
                echo_call: Any = channel.stream_stream(f"/{ECHO_SERVICE}/Stream")()
                framed = frame(payload)
                reader, writer = await asyncio.open_unix_connection(str(socket_echo_path))

                async def echo_once() -> None:
                    await echo_call.write(payload)
                    await echo_call.read()

                async def socket_echo_once() -> None:
                    writer.write(framed)
                    await reader.readexactly(len(framed))

                def job(spec: Any, on: Any = stream) -> Callable[[], Awaitable[None]]:
                    async def once() -> None:
                        res = await on.run(spec)
                        if not res.ok:
                            raise RuntimeError(f"the null job failed: {res.error}")
                        vias.add(on.via)

                    return once

                async def direct_once() -> None:
                    done = await submit_and_wait(device, submission)
                    if done.status is not CompletionStatus.OK:
                        raise RuntimeError(f"the direct null job failed: {done.error}")

                series: dict[str, Series] = {
                    "npud": _timed(job(inline)),
                    "npud_ref": _timed(job(by_ref)),
                    "npud_grpc": _timed(job(inline, rpc)),
                    "echo": _timed(echo_once),
                    "socket_echo": _timed(socket_echo_once),
                    "direct": _timed(direct_once),
                }
                if script is not None:  # the overhead script's own measurement, called as it is
                    series["echo"] = lambda n: script._bench_echo(str(echo_path), n, warm)
                for fn in series.values():
                    await fn(warm)
                order = list(series)
                for r in range(rounds):  # rotate the order so no series always goes first
                    turn = r % len(order)
                    for name in order[turn:] + order[:turn]:
                        samples[name] += await series[name](per_round)
                await echo_call.done_writing()
                writer.close()
        finally:
            device.close()
        await npu.destroy_context(ctx)
    return {"samples": samples, "payload_bytes": len(payload), "vias": sorted(vias)}


def run(quick: bool) -> BenchResult:
    """Measure P1 (see the module docstring).

    Raises:
        DaemonDied: the daemon exited. RuntimeError: a null job failed or the echo server died.
    """
    rounds, per_round = (2, 20) if quick else (12, 250)
    result = BenchResult("P1", "overhead: null job round trip")
    result.params = {"rounds": rounds, "per_round": per_round}
    tmp = Path(tempfile.mkdtemp(prefix="npud-bench-echo-"))
    echo_path = tmp / "echo.sock"
    socket_echo_path = tmp / "socket-echo.sock"
    script = _overhead_script()
    echo_cmd = ["-c", _ECHO_MAIN] if script is None else [str(ROOT / "bench" / "overhead.py")]
    if script is not None:
        echo_cmd.append("--echo-server")
    procs = [
        subprocess.Popen(
            [sys.executable, *cmd, str(path)],
            stdout=subprocess.DEVNULL,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            start_new_session=True,
        )
        for cmd, path in (
            (echo_cmd, echo_path),
            (["-c", _SOCKET_ECHO_MAIN], socket_echo_path),
        )
    ]
    try:
        deadline = time.monotonic() + 60
        while not (echo_path.exists() and socket_echo_path.exists()):
            if any(p.poll() is not None for p in procs) or time.monotonic() > deadline:
                raise RuntimeError("an echo server did not start")
            time.sleep(0.05)
        # the same log level as bench/overhead.py: the per-job info line is measured apart
        with running_daemon("npud", env={"NPUD_LOG_LEVEL": "warning"}) as daemon:
            got = asyncio.run(
                _measure(daemon.socket, echo_path, socket_echo_path, rounds, per_round, script)
            )
    finally:
        for p in procs:
            p.terminate()
            p.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)
    s = got["samples"]
    us = {k: [v * 1e6 for v in vals] for k, vals in s.items()}
    result.samples = {f"{k}_us": vals for k, vals in us.items()}
    result.params["payload_bytes"] = got["payload_bytes"]
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        v = {k: percentile(vals, q) for k, vals in us.items()}
        result.add(
            Metric(
                f"null job {label} vs echo",
                v["npud"],
                "us",
                v["echo"],
                "grpc.aio echo",
                f"<= {GOAL_RATIO}x echo",
                v["npud"] <= GOAL_RATIO * v["echo"],
            )
        )
        result.add(Metric(f"null job {label} vs direct", v["npud"], "us", v["direct"], "direct"))
        added = v["npud"] - v["direct"]
        result.add(
            Metric(
                f"npud's added time {label} (npud - direct) vs echo",
                added,
                "us",
                v["echo"],
                "grpc.aio echo",
                f"<= {ADDED_GOAL_RATIO}x echo",
                added <= ADDED_GOAL_RATIO * v["echo"],
            )
        )
        result.add(Metric(f"command in a buffer {label}", v["npud_ref"], "us", v["npud"], "inline"))
        result.add(
            Metric(
                f"null job {label} vs socket echo (like for like)",
                v["npud"],
                "us",
                v["socket_echo"],
                "socket echo",
            )
        )
        result.add(
            Metric(
                f"null job over the rpc {label} vs echo",
                v["npud_grpc"],
                "us",
                v["echo"],
                "grpc.aio echo",
            )
        )
        result.add(
            Metric(
                f"null job {label}, submit socket vs the rpc",
                v["npud"],
                "us",
                v["npud_grpc"],
                "over the rpc",
            )
        )
    if got["vias"] != ["grpc", "socket"]:
        raise RuntimeError(f"the streams went over {got['vias']}, not the socket and the rpc")
    result.params["npud_via"] = "submit socket"
    source = "bench/overhead.py's" if script is not None else "P1's own (overhead.py absent)"
    result.params["echo_from"] = source
    result.notes.append(
        f"Echo series: {source} _bench_echo, called per round. npud: real daemon (log level "
        "warning, as overhead.py runs it), SimDevice process mode (rk3588, 50 us modelled "
        "launch), asyncio client over the daemon's submit socket (the default for a local "
        "client), LATENCY queue, an empty command stream sent inline with each job (as the LLM "
        "decode loop does); 'command in a buffer' refers to a pre-uploaded one instead; 'over "
        "the rpc' is the same job on the SubmitStream rpc. Echo: grpc.aio bidi stream to "
        "another process. Socket echo: an asyncio server echoing frames over a Unix stream "
        "socket. Direct: SimDevice process mode in the benchmark's own process (no daemon). "
        f"{rounds} rounds x {per_round} calls per series, order rotated each round."
    )
    return result
