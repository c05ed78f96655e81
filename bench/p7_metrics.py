"""P7 metrics: what a Prometheus scrape every 100 ms costs the jobs a daemon runs.

One daemon with ``[metrics] listen`` set runs null jobs as fast as four asyncio clients can
send them over ``SubmitStream`` (the path where the daemon's own CPU is the limit, so a scrape,
which runs on the daemon's loop, costs the most). A scraper process GETs ``/metrics`` every
100 ms, as a Prometheus with ``scrape_interval: 100ms`` would. The run alternates windows with
the scraper running and stopped (SIGSTOP/SIGCONT), in rounds whose order flips each time, so
that the load of other processes on the machine falls on both alike; jobs/s with scraping is
compared with jobs/s without, from the same run and the same daemon.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from bench.daemon import ROOT, running_daemon
from bench.results import BenchResult, Metric, percentile

GOAL_COST = 0.02
SCRAPE_INTERVAL_S = 0.1
CLIENTS = 4

_SCRAPER = """
import signal, sys, time, urllib.request
url, interval = sys.argv[1], float(sys.argv[2])
n, spent, size = 0, 0.0, 0
def stop(*_):
    print(n, spent, size, flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
next_at = time.monotonic()
while True:
    t0 = time.monotonic()
    with urllib.request.urlopen(url, timeout=5) as r:
        size = len(r.read())
    spent += time.monotonic() - t0
    n += 1
    next_at = max(next_at + interval, time.monotonic())
    time.sleep(max(0.0, next_at - time.monotonic()))
"""


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (not its children) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _measure(
    sock: Path, daemon_pid: int, scraper: subprocess.Popen[str], rounds: int, window_s: float
) -> dict[str, list[float]]:
    import npud.client.aio
    from npud.client import JobSpec, SchedulingClass
    from npud.isa.program import Program

    null = Program().encode()
    done = 0
    stop = asyncio.Event()
    per: dict[str, list[float]] = {"off": [], "on": [], "cpu_off": [], "cpu_on": []}

    async def client() -> None:
        nonlocal done
        async with npud.client.aio.connect(sock) as npu:
            ctx = await npu.create_context(label="bench/p7")
            q = await npu.create_queue(ctx, SchedulingClass.LATENCY)
            spec = JobSpec(q, null, kind="null")
            async with npu.submit_stream(ctx) as stream:
                while not stop.is_set():
                    res = await stream.run(spec)
                    if not res.ok:
                        raise RuntimeError(f"a null job failed: {res.error}")
                    done += 1
            await npu.destroy_context(ctx)

    async def window(scraping: bool) -> tuple[float, float]:
        """Jobs/s in one window, and the daemon's CPU seconds per job in it."""
        os.kill(scraper.pid, signal.SIGCONT if scraping else signal.SIGSTOP)
        await asyncio.sleep(0.3)  # settle: the scraper's first scrape, or its last one ending
        start, t0, cpu0 = done, time.perf_counter(), _cpu_s(daemon_pid)
        await asyncio.sleep(window_s)
        jobs = done - start
        cpu = _cpu_s(daemon_pid) - cpu0
        return jobs / (time.perf_counter() - t0), cpu / max(jobs, 1)

    tasks = [asyncio.create_task(client()) for _ in range(CLIENTS)]
    try:
        await window(False)  # warm up: contexts, streams, estimates
        for r in range(rounds):
            order = ("off", "on") if r % 2 == 0 else ("on", "off")
            for cond in order:
                rate, cpu = await window(cond == "on")
                per[cond].append(rate)
                per[f"cpu_{cond}"].append(cpu)
    finally:
        os.kill(scraper.pid, signal.SIGCONT)
        stop.set()
        await asyncio.gather(*tasks)
    return per


def run(quick: bool) -> BenchResult:
    """Measure P7 (see the module docstring).

    Raises:
        DaemonDied: the daemon exited. RuntimeError: a job failed or the scraper died.
    """
    rounds, window_s = (2, 0.5) if quick else (10, 3.0)
    result = BenchResult("P7", "metrics: scraping /metrics every 100 ms while jobs run")
    result.params = {
        "rounds": rounds,
        "window_s": window_s,
        "clients": CLIENTS,
        "scrape_interval_s": SCRAPE_INTERVAL_S,
    }
    port = _free_port()
    env = {"NPUD_LOG_LEVEL": "warning", "NPUD_METRICS__LISTEN": f"127.0.0.1:{port}"}
    with running_daemon("npud", env=env) as daemon:
        scraper = subprocess.Popen(
            [
                sys.executable,
                "-c",
                _SCRAPER,
                f"http://127.0.0.1:{port}/metrics",
                str(SCRAPE_INTERVAL_S),
            ],
            stdout=subprocess.PIPE,
            text=True,
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            start_new_session=True,
        )
        try:
            # Why wait for "ready": on a loaded host the scraper's interpreter may still be
            # starting when a quick run ends, and a SIGTERM before its handler is installed
            # killed it without its counts (the run then failed with "-15").
            assert scraper.stdout is not None
            if scraper.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the scraper did not start ({scraper.poll()})")
            pid = daemon.process.proc.pid
            per = asyncio.run(_measure(daemon.socket, pid, scraper, rounds, window_s))
        finally:
            scraper.terminate()
            out, _ = scraper.communicate(timeout=30)
    if scraper.returncode != 0 or not out.strip():
        raise RuntimeError(f"the scraper failed ({scraper.returncode})")
    scrapes, spent, size = out.split()
    n = int(scrapes)
    off, on = sum(per["off"]) / len(per["off"]), sum(per["on"]) / len(per["on"])
    cost = 1.0 - on / off
    pairs = [1.0 - a / b for a, b in zip(per["on"], per["off"], strict=True)]
    result.samples = {"jobs_per_s_off": per["off"], "jobs_per_s_on": per["on"]}
    cpu_off = sum(per["cpu_off"]) / len(per["cpu_off"]) * 1e6
    cpu_on = sum(per["cpu_on"]) / len(per["cpu_on"]) * 1e6
    result.params |= {"scrapes": n, "exposition_bytes": int(size)}
    result.add(
        Metric(
            "jobs/s while scraped every 100 ms",
            on,
            "jobs/s",
            off,
            "not scraped",
            f"cost < {GOAL_COST:.0%}",
            cost < GOAL_COST,
        )
    )
    result.add(
        Metric("cost of scraping", cost * 100, "%", goal=f"< {GOAL_COST:.0%}", met=cost < GOAL_COST)
    )
    result.add(Metric("cost, median of rounds", percentile(pairs, 0.5) * 100, "%"))
    result.add(Metric("daemon CPU per job", cpu_on, "us", cpu_off, "not scraped"))
    result.add(Metric("scrape round trip (mean)", float(spent) / max(n, 1) * 1e3, "ms"))
    result.notes.append(
        f"One daemon (SimDevice process mode, log level warning), {CLIENTS} asyncio clients "
        "sending null jobs over SubmitStream back to back; a scraper process GETs /metrics "
        f"every {SCRAPE_INTERVAL_S * 1e3:.0f} ms and is stopped (SIGSTOP) in the windows "
        f"without scraping. {rounds} rounds of one {window_s:g} s window each way, the order "
        f"flipped every round; {n} scrapes of {int(size)} bytes in all."
    )
    return result
