"""Do the simulated NPU's engines compute in parallel? A decode-like job beside a matmul flood.

The device process (``npud.devices.sim.firmware``) runs one executor thread per engine. Before
that, one executor served every engine, so a small job on engine 1 waited in the device
process for a big job on engine 0 to finish computing, though the two engines are independent
cores (``docs/benchmarks.md``, P5: decode steps 136 ms p99 on the device for a 13.5 ms p50).

This script opens the sim (process mode) four ways, side by side, and measures the same
thing on each in alternating rounds, so host load hits all alike:

* **serial**: ``firmware_lanes=1``, one executor for every engine, BLAS threads uncapped: the
  device process as it was (the baseline);
* **serial, BLAS 1 thread**: the same with BLAS capped at one thread (separates what the cap
  buys from what the executors buy);
* **per-engine, BLAS uncapped**: one executor per engine, each BLAS call free to use every
  core (shows what capping BLAS threads buys when engines are busy at once);
* **per-engine**: the default: one executor per engine, BLAS capped at ``cpus // engines``.

Per round and per device, engine 0 is kept busy with big matmul jobs (a prefill chunk: four
``[256, 2048] x [2048, 2048]`` f32 matmuls, two queued at all times) while small decode-like
jobs (RMSNORM, three ``[1, 1024] x [1024, 1024]`` matmuls, SILU, ADD, ARGMAX) run one after
another on engine 1. Reported: the small job's latency from submit to completion (its engine
is idle, so this is its time on the device) with engine 0 idle and flooded, and how many big
jobs per second engine 0 got through meanwhile.

Usage::

    python -m bench.sim_engines            # about three minutes on 2 cores
    python -m bench.sim_engines --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from dataclasses import dataclass, field

import numpy as np

from bench.results import percentile
from npud.devices.base import Binding, BufferUse, Completion, Submission
from npud.devices.sim import SimDevice
from npud.isa import DType, Program, T
from npud.vocab import MemoryTier

D = 1024  # the decode job's width
PM, PK = 256, 2048  # the prefill chunk: [PM, PK] x [PK, PK], four times


@dataclass(frozen=True, slots=True)
class Variant:
    """One way of running the device process."""

    name: str
    lanes: int | None
    blas_threads: int | None


@dataclass(slots=True, eq=False)
class Samples:
    """What one variant measured, over all rounds."""

    idle_s: list[float] = field(default_factory=list)
    flooded_s: list[float] = field(default_factory=list)
    big_done: int = 0
    flood_s: float = 0.0


def _upload(dev: SimDevice, data: bytes, tier: MemoryTier = MemoryTier.DRAM) -> Binding:
    buf = dev.create_buffer(max(1, len(data)), tier)
    view = dev.map_buffer(buf.handle)
    view[: len(data)] = data
    view.release()
    dev.unmap_buffer(buf.handle)
    return Binding(buf.handle, BufferUse.READWRITE)


def _submission(dev: SimDevice, prog: Program, bindings: list[Binding], engine: int) -> Submission:
    blob = prog.encode()
    cmd = _upload(dev, blob)
    return Submission(cmd.handle, 0, len(blob), tuple(bindings), engine=engine)


def decode_job(dev: SimDevice, gen: np.random.Generator) -> Submission:
    """A decode step's shape: RMSNORM, three GEMVs, SILU, ADD, ARGMAX on engine 1."""
    x = gen.standard_normal((1, D)).astype(np.float32)
    w = (gen.standard_normal((3, D, D)) / np.sqrt(D)).astype(np.float32)
    norm = np.ones(D, np.float32)
    bindings = [
        _upload(dev, x.tobytes()),
        _upload(dev, w.tobytes()),
        _upload(dev, norm.tobytes()),
        _upload(dev, bytes(4 * D * 4)),
    ]
    prog = Program()
    h, a, b = T(3, 0, (1, D)), T(3, 4 * D, (1, D)), T(3, 8 * D, (1, D))
    prog.rmsnorm(h, T(0, 0, (1, D)), T(2, 0, (D,)))
    prog.matmul(a, h, T(1, 0, (D, D)), transpose_b=True)
    prog.matmul(b, h, T(1, 4 * D * D, (D, D)), transpose_b=True)
    prog.silu(a, a)
    prog.mul(a, a, b)
    prog.matmul(b, a, T(1, 8 * D * D, (D, D)), transpose_b=True)
    prog.add(b, b, h)
    prog.argmax(T(3, 12 * D, (1,), DType.I32), b)
    return _submission(dev, prog, bindings, engine=1)


def prefill_job(dev: SimDevice, gen: np.random.Generator) -> Submission:
    """A prefill chunk's shape: four [PM, PK] x [PK, PK] f32 matmuls on engine 0."""
    a = gen.standard_normal((PM, PK)).astype(np.float32)
    w = (gen.standard_normal((PK, PK)) / np.sqrt(PK)).astype(np.float32)
    bindings = [_upload(dev, a.tobytes()), _upload(dev, w.tobytes()), _upload(dev, a.tobytes())]
    prog = Program()
    x, y = T(0, 0, (PM, PK)), T(2, 0, (PM, PK))
    for _ in range(2):
        prog.matmul(y, x, T(1, 0, (PK, PK)))
        prog.matmul(x, y, T(1, 0, (PK, PK)))
    return _submission(dev, prog, bindings, engine=0)


def _submit(dev: SimDevice, sub: Submission) -> asyncio.Future[Completion]:
    future: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()

    def done(completion: Completion) -> None:
        if not future.done():
            future.set_result(completion)

    dev.submit(sub, done)
    return future


async def _checked(future: asyncio.Future[Completion]) -> Completion:
    completion = await future
    if completion.status != "ok":
        raise RuntimeError(f"a benchmark job failed: {completion.status} {completion.error}")
    return completion


async def _small(dev: SimDevice, sub: Submission) -> float:
    began = time.perf_counter()
    await _checked(_submit(dev, sub))
    return time.perf_counter() - began


async def one_round(dev: SimDevice, small: Submission, big: Submission, n: int, s: Samples) -> None:
    """n small jobs with engine 0 idle, then n with engine 0 flooded."""
    for _ in range(n):
        s.idle_s.append(await _small(dev, small))
    stop = False

    async def flood() -> None:
        # Two big jobs queued at all times, so engine 0 never idles between them.
        pending = [_submit(dev, big), _submit(dev, big)]
        while pending:
            await _checked(pending.pop(0))
            s.big_done += 1
            if not stop:
                pending.append(_submit(dev, big))

    began = time.perf_counter()
    flooding = asyncio.ensure_future(flood())
    for _ in range(n):
        s.flooded_s.append(await _small(dev, small))
    stop = True
    await flooding
    s.flood_s += time.perf_counter() - began


async def run(variants: list[Variant], rounds: int, n: int, profile: str) -> dict[str, Samples]:
    """Measure every variant, alternating them round by round."""
    devices: dict[str, tuple[SimDevice, Submission, Submission]] = {}
    gen = np.random.default_rng(1)
    for v in variants:
        dev = SimDevice(
            profile,
            mode="process",
            name=v.name,
            firmware_lanes=v.lanes,
            firmware_blas_threads=v.blas_threads,
        )
        dev.open()
        devices[v.name] = (dev, decode_job(dev, gen), prefill_job(dev, gen))
    samples = {v.name: Samples() for v in variants}
    try:
        for _ in range(rounds):
            for v in variants:
                dev, small, big = devices[v.name]
                await one_round(dev, small, big, n, samples[v.name])
    finally:
        for dev, _, _ in devices.values():
            dev.close()
    return samples


def main() -> None:
    """Run the benchmark and print the table and the ratios."""
    parser = argparse.ArgumentParser(prog="python -m bench.sim_engines")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--jobs", type=int, default=40, help="small jobs per round and phase")
    parser.add_argument("--profile", default="rk3588")
    parser.add_argument("--quick", action="store_true", help="1 round of 5 jobs")
    args = parser.parse_args()
    rounds, n = (1, 5) if args.quick else (args.rounds, args.jobs)
    cpus = os.cpu_count() or 1
    variants = [
        Variant("serial (before)", 1, cpus),
        Variant("serial, BLAS 1 thread", 1, 1),
        Variant("per-engine, BLAS uncapped", None, cpus),
        Variant("per-engine (after)", None, None),
    ]
    samples = asyncio.run(run(variants, rounds, n, args.profile))
    print(f"{cpus} cpus, profile {args.profile}, {rounds} rounds x {n} small jobs per phase")
    head = (
        f"{'device process':<28}{'idle p50':>10}{'flooded p50':>13}{'flooded p99':>13}"
        f"{'flooded max':>13}{'big jobs/s':>12}"
    )
    print(head)
    print("-" * len(head))
    for v in variants:
        s = samples[v.name]
        ms = [
            1e3 * percentile(s.idle_s, 0.5),
            1e3 * percentile(s.flooded_s, 0.5),
            1e3 * percentile(s.flooded_s, 0.99),
            1e3 * max(s.flooded_s),
        ]
        print(
            f"{v.name:<28}{ms[0]:>8.2f}ms{ms[1]:>11.2f}ms{ms[2]:>11.2f}ms{ms[3]:>11.2f}ms"
            f"{s.big_done / s.flood_s:>12.1f}"
        )
    before, after = samples[variants[0].name], samples[variants[-1].name]
    for q, label in ((0.5, "p50"), (0.99, "p99")):
        ratio = percentile(before.flooded_s, q) / percentile(after.flooded_s, q)
        print(f"small job beside the flood, {label}: before / after = {ratio:.1f}x")


if __name__ == "__main__":
    main()
