"""What npud costs per job: a null job over SubmitStream vs a bare grpc.aio echo stream.

Both run in the same invocation, each server in its own process on a Unix socket, each client
on asyncio with one request in flight (a decode loop's pattern):

* ``echo``: a grpc.aio server whose bidirectional method returns each message as is: the floor
  any gRPC daemon on this machine pays per round trip;
* ``npud``: the real daemon (``--device sim``), a LATENCY queue, and a null job (an empty
  command stream, sent inline) per round trip through ``npud.client.aio``'s submit stream:
  identity check, inline command buffer, admission, scheduling, the simulated device's
  process round trip, completion and the response.

Two in-process floors separate npud's layers (same null job, no gRPC, no socket):

* ``sim device direct``: ``Device.submit`` on the simulated NPU in process mode and await the
  completion: the device process round trip alone (two messages over SOCK_SEQPACKET, the
  firmware's decode of an empty stream);
* ``core in-process``: what the SubmitStream servicer does per job, minus gRPC: a recycled
  inline command buffer, ``Core.submit`` (admission, scheduling, residency, dispatch), the
  device round trip, the done callback and the buffer's release.

The four are measured in one client process, alternating in blocks of ``--block`` round trips,
so that a burst of load on a shared machine hits all of them rather than whichever happened to
run then (measured one after the other, the ratio swung between 2.4 and 4.1 from run to run).

Prints p50, p99 and their ratio (npud / echo). ``--profile FILE`` runs the daemon under
cProfile. Usage::

    .venv/bin/python -m bench.overhead [--n 2000] [--warmup 200] [--block 50] [--profile FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import grpc.aio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

ECHO_METHOD = "/bench.Echo/Stream"
ECHO, NPUD, DEVICE, CORE = "grpc.aio echo", "npud null job", "sim device direct", "core in-process"


async def _echo_server(path: str) -> None:
    async def echo(requests, context):  # type: ignore[no-untyped-def]
        async for msg in requests:
            yield msg

    handler = grpc.method_handlers_generic_handler(
        "bench.Echo", {"Stream": grpc.stream_stream_rpc_method_handler(echo)}
    )
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"unix:{path}")
    await server.start()
    print("ready", flush=True)
    await server.wait_for_termination()


def _pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def _bench_echo(path: str, n: int, warmup: int) -> list[float]:
    payload = b"\0" * 48  # about the size of a null job request
    async with grpc.aio.insecure_channel(f"unix:{path}") as channel:
        call = channel.stream_stream(ECHO_METHOD)()
        out = []
        for i in range(n + warmup):
            t0 = time.perf_counter()
            await call.write(payload)
            await call.read()
            if i >= warmup:
                out.append(time.perf_counter() - t0)
        await call.done_writing()
        return out


async def _bench_npud(path: str, n: int, warmup: int) -> list[float]:
    import npud.client.aio
    from npud.client import JobSpec, SchedulingClass
    from npud.isa import Program

    null = Program().encode()
    async with npud.client.aio.connect(path) as npu:
        ctx = await npu.create_context(label="overhead")
        q = await npu.create_queue(ctx, SchedulingClass.LATENCY)
        spec = JobSpec(q, null, kind="null")
        out = []
        async with npu.submit_stream(ctx) as stream:
            for i in range(n + warmup):
                t0 = time.perf_counter()
                res = await stream.run(spec)
                if i >= warmup:
                    out.append(time.perf_counter() - t0)
                if not res.ok:
                    raise SystemExit(f"null job failed: {res.error}")
        await npu.destroy_context(ctx)
        return out


Once = Callable[[], Awaitable[None]]


async def _echo_runner(stack: contextlib.AsyncExitStack, path: str) -> Once:
    payload = b"\0" * 48
    channel = await stack.enter_async_context(grpc.aio.insecure_channel(f"unix:{path}"))
    call = channel.stream_stream(ECHO_METHOD)()

    async def once() -> None:
        await call.write(payload)
        await call.read()

    return once


async def _npud_runner(stack: contextlib.AsyncExitStack, path: str) -> Once:
    import npud.client.aio
    from npud.client import JobSpec, SchedulingClass
    from npud.isa import Program

    npu = await stack.enter_async_context(npud.client.aio.connect(path))
    ctx = await npu.create_context(label="overhead")
    stack.push_async_callback(npu.destroy_context, ctx)
    q = await npu.create_queue(ctx, SchedulingClass.LATENCY)
    stream = await stack.enter_async_context(npu.submit_stream(ctx))
    spec = JobSpec(q, Program().encode(), kind="null")

    async def once() -> None:
        res = await stream.run(spec)
        if not res.ok:
            raise SystemExit(f"null job failed: {res.error}")

    return once


async def _device_runner(stack: contextlib.AsyncExitStack) -> Once:
    from npud.devices.base import Submission, submit_and_wait
    from npud.devices.sim import SimDevice
    from npud.isa import Program
    from npud.vocab import MemoryTier

    null = Program().encode()
    dev = SimDevice(mode="process", name="overhead-direct")
    dev.open()
    stack.callback(dev.close)
    cmd = dev.create_buffer(len(null), MemoryTier.DRAM)
    view = dev.map_buffer(cmd.handle)
    view[: len(null)] = null
    view.release()
    dev.unmap_buffer(cmd.handle)
    sub = Submission(cmd.handle, 0, len(null), (), engine=0)

    async def once() -> None:
        res = await submit_and_wait(dev, sub)
        if res.status != "ok":
            raise SystemExit(f"null job failed on the device: {res.error}")

    return once


async def _core_runner(stack: contextlib.AsyncExitStack) -> Once:
    from npud.clock import MonotonicClock
    from npud.core.job import Job
    from npud.core.owner import Owner
    from npud.core.service import Core, JobSpec
    from npud.devices.sim import SimDevice
    from npud.isa import Program
    from npud.vocab import BufferUsage, JobState, SchedulingClass

    null = Program().encode()
    loop = asyncio.get_running_loop()
    dev = SimDevice(mode="process", name="overhead-core")
    dev.open()
    stack.callback(dev.close)
    core = Core(MonotonicClock(loop))
    core.add_device(dev)
    me = Owner(uid=os.getuid(), gid=os.getgid(), pid=os.getpid(), name="bench")
    ctx = core.create_context(me, label="overhead")
    stack.callback(core.destroy_context, me, ctx.id, grace_s=0.0)
    q = core.create_queue(me, ctx.id, sched_class=SchedulingClass.LATENCY)

    async def once() -> None:
        # what the SubmitStream servicer does for one inline job, without gRPC
        cmd = core.create_buffer(me, ctx.id, len(null), usage=BufferUsage.COMMAND, recycle=True)
        core.write_buffer(me, ctx.id, cmd.id, 0, null)
        [job] = core.submit(me, ctx.id, [JobSpec(q.id, cmd.id, kind="null")])
        done: asyncio.Future[Job] = loop.create_future()
        job.add_done_callback(done.set_result)
        await done
        core.release_buffer(me, ctx.id, cmd.id)
        if job.state is not JobState.COMPLETED:
            raise SystemExit(f"null job failed in core: {job.error}")

    return once


async def _interleaved(
    echo_path: str, npud_path: str, n: int, warmup: int, block: int
) -> dict[str, list[float]]:
    """Round trips of all four, alternating in blocks of ``block`` so that every one of them
    sees the same machine: on a shared box a burst of load then moves all four, not one."""
    async with contextlib.AsyncExitStack() as stack:
        runners = {
            ECHO: await _echo_runner(stack, echo_path),
            NPUD: await _npud_runner(stack, npud_path),
            DEVICE: await _device_runner(stack),
            CORE: await _core_runner(stack),
        }
        for once in runners.values():
            for _ in range(warmup):
                await once()
        out: dict[str, list[float]] = {name: [] for name in runners}
        while len(out[ECHO]) < n:
            k = min(block, n - len(out[ECHO]))
            for name, once in runners.items():
                samples = out[name]
                for _ in range(k):
                    t0 = time.perf_counter()
                    await once()
                    samples.append(time.perf_counter() - t0)
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument("--block", type=int, default=50, help="round trips per turn")
    parser.add_argument("--profile", metavar="FILE", help="cProfile the daemon into FILE")
    parser.add_argument("--echo-server", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.echo_server:
        asyncio.run(_echo_server(args.echo_server))
        return
    # The benchmarks' one daemon launcher (imported here, not at the top: P1 runs this file as
    # a plain script for its echo server, where the ``bench`` package is not importable).
    from bench.daemon import NPUD_COMMAND, running_daemon

    tmp = Path(tempfile.mkdtemp(prefix="npud-overhead-"))
    echo_path = str(tmp / "echo.sock")
    echo = subprocess.Popen(
        [sys.executable, __file__, "--echo-server", echo_path], stdout=subprocess.PIPE
    )
    # cProfile of the daemon process (written when it exits on SIGTERM)
    command = (
        (sys.executable, "-m", "cProfile", "-o", args.profile, "-m", "npud.daemon")
        if args.profile
        else NPUD_COMMAND
    )
    try:
        with running_daemon(env={"NPUD_LOG_LEVEL": "warning"}, command=command) as daemon:
            assert echo.stdout is not None
            echo.stdout.readline()
            samples = asyncio.run(
                _interleaved(echo_path, str(daemon.socket), args.n, args.warmup, max(1, args.block))
            )
    finally:
        echo.send_signal(signal.SIGTERM)
        echo.wait(10)
        if echo.stdout is not None:
            echo.stdout.close()
        shutil.rmtree(tmp, ignore_errors=True)
    rows = []
    for name in (ECHO, NPUD, DEVICE, CORE):
        s = samples[name]
        rows.append((name, _pct(s, 0.5), _pct(s, 0.99), statistics.fmean(s)))
    print(
        f"{args.n} round trips each (after {args.warmup} warm-up), one in flight, Unix socket, "
        f"interleaved in blocks of {args.block}"
    )
    print(f"{'':18} {'p50 us':>9} {'p99 us':>9} {'mean us':>9}")
    for name, p50, p99, mean in rows:
        print(f"{name:18} {p50 * 1e6:9.1f} {p99 * 1e6:9.1f} {mean * 1e6:9.1f}")
    (_, e50, e99, _), (_, n50, n99, _), (_, d50, _, _), (_, c50, _, _) = rows
    print(f"{'ratio npud/echo':18} {n50 / e50:9.2f} {n99 / e99:9.2f}")
    print(f"npud's own cost per job (p50 difference): {(n50 - e50) * 1e6:.1f} us")
    print(
        f"of which (p50): device round trip {d50 * 1e6:.1f} us, core on top of it "
        f"{(c50 - d50) * 1e6:.1f} us, gRPC stream + API + client on top of echo "
        f"{(n50 - c50 - e50) * 1e6:.1f} us"
    )


if __name__ == "__main__":
    main()
