"""P3 utilisation: how busy npud keeps the NPU when 16 clients saturate it with throughput work.

A real daemon (simulated NPU, process mode, real time) serves 16 clients, each with its own
connection, session and context, each keeping ``outstanding`` THROUGHPUT jobs of ``T`` ms
(BURN) submitted at all times: when the oldest finishes (``WaitJob``), it submits another. The
figure is the engines' busy fraction over a measurement window after a warm-up:
``sum(run_s of the jobs that finished in the window) / (engines x window)``, where ``run_s`` is
the time each job occupied its engine as the device measured it. Jobs straddling the window's
two ends are counted at the end and not at the start, so the two edge errors cancel in steady
state.

The baseline is the ``fifo`` policy under the same load: its deep hardware queue never lets an
engine idle, so it is what "saturated" looks like; npud's policy runs a shallower queue (a
few jobs in flight per engine) and must not lose utilisation for it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from typing import Any

from bench.daemon import running_daemon
from bench.results import BenchResult, Metric

CLIENTS = 16
GOAL_PCT = 98.0


def _client(
    socket: str,
    job_s: float,
    outstanding: int,
    stop: threading.Event,
    ready: threading.Barrier,
    finished: list[tuple[float, float]],
    errors: list[str],
) -> None:
    import npud.client
    from npud.client import BufferUsage, CommandRef, JobSpec, JobState, SchedulingClass
    from npud.isa.program import Program

    try:
        with npud.client.connect(socket) as npu:
            ctx = npu.create_context(label="bench/p3")
            q = npu.create_queue(ctx, SchedulingClass.THROUGHPUT, in_order=False)
            blob = Program().burn(job_s).encode()
            cmd = npu.create_buffer(ctx, len(blob), usage=BufferUsage.COMMAND)
            npu.write_buffer(ctx, cmd, blob)
            spec = JobSpec(q, CommandRef(cmd), kind="p3", estimate_s=job_s)
            ready.wait(timeout=120)
            window = list(npu.submit_many(ctx, [spec] * outstanding))
            while not stop.is_set():
                done = npu.wait(ctx, window.pop(0), timeout_s=30.0)
                if done.state is not JobState.COMPLETED:
                    raise RuntimeError(f"a throughput job ended {done.state}: {done.error}")
                finished.append((time.monotonic(), done.run_s))
                window.append(npu.submit(ctx, spec))
            for job in window:
                npu.cancel(ctx, job)
            npu.destroy_context(ctx)
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
        ready.abort()


def _one_policy(
    policy: str, *, clients: int, job_s: float, outstanding: int, warm_s: float, window_s: float
) -> dict[str, Any]:
    with running_daemon(policy) as daemon:
        stop = threading.Event()
        ready = threading.Barrier(clients + 1)
        finished: list[tuple[float, float]] = []
        errors: list[str] = []
        threads = [
            threading.Thread(
                target=_client,
                args=(str(daemon.socket), job_s, outstanding, stop, ready, finished, errors),
                daemon=True,
            )
            for _ in range(clients)
        ]
        for t in threads:
            t.start()
        with contextlib.suppress(threading.BrokenBarrierError):
            ready.wait(timeout=120)
        if errors:
            stop.set()
            raise RuntimeError(f"{policy}: a client failed: {errors[0]}")
        time.sleep(warm_s)
        t0 = time.monotonic()
        time.sleep(window_s)
        t1 = time.monotonic()
        daemon.check()
        import npud.client

        with npud.client.connect(daemon.socket, session=False) as npu:
            engines = len(npu.devices()[0].engines)
        stop.set()
        for t in threads:
            t.join(timeout=60)
        if errors:
            raise RuntimeError(f"{policy}: a client failed: {errors[0]}")
    busy = sum(run for at, run in finished if t0 <= at < t1)
    jobs = sum(1 for at, _ in finished if t0 <= at < t1)
    return {"busy_fraction": busy / (engines * (t1 - t0)), "jobs": jobs, "engines": engines}


def run(quick: bool) -> BenchResult:
    """Measure P3 under the ``npud`` and ``fifo`` policies (see the module docstring).

    Raises:
        DaemonDied: a daemon exited. RuntimeError: a client failed or a job did not complete.
    """
    # quick mode checks that the benchmark runs, not the figure: 4 clients and a short window
    clients = 4 if quick else CLIENTS
    job_s, outstanding, warm_s, window_s = (0.010, 2, 0.1, 0.4) if quick else (0.020, 4, 2.0, 8.0)
    result = BenchResult("P3", "utilisation: engines busy under 16 saturating clients")
    result.params = {
        "clients": clients,
        "job_ms": job_s * 1e3,
        "outstanding_per_client": outstanding,
        "window_s": window_s,
    }
    got = {
        p: _one_policy(
            p,
            clients=clients,
            job_s=job_s,
            outstanding=outstanding,
            warm_s=warm_s,
            window_s=window_s,
        )
        for p in ("npud", "fifo")
    }
    npud_pct = got["npud"]["busy_fraction"] * 100
    fifo_pct = got["fifo"]["busy_fraction"] * 100
    result.add(
        Metric(
            "engine busy fraction",
            npud_pct,
            "%",
            fifo_pct,
            "fifo policy",
            f">= {GOAL_PCT:.0f} %",
            npud_pct >= GOAL_PCT,
        )
    )
    result.add(
        Metric(
            "jobs completed in window",
            got["npud"]["jobs"],
            "jobs",
            got["fifo"]["jobs"],
            "fifo policy",
        )
    )
    result.notes.append(
        f"Through the daemon: {clients} client connections (threads of the benchmark process), "
        f"each with its own context keeping {outstanding} THROUGHPUT jobs of "
        f"{job_s * 1e3:.0f} ms in flight, {got['npud']['engines']} engines (rk3588 profile); "
        f"busy fraction over a {window_s:g} s window after {warm_s:g} s warm-up, from the "
        "device-measured run time of the jobs finishing in the window."
    )
    return result
