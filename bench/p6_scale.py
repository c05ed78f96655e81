"""P6 scale: 1,000 contexts and 100,000 queued jobs - decision cost, submit rate, memory.

Two parts, each in its own process so its memory is its own:

* ``bench/scale.py`` (the scale benchmark, run as is with ``--json``): the cost of one
  scheduling decision with ~100,000 READY jobs over 1,000 fair-share contexts, the cost of a
  one-job submit while the queues fill, the whole dispatch path per job, and its peak RSS. Its
  baseline is the same script on 25 contexts x 1,000 jobs, so the ratio shows how the decision
  cost grows with the number of contexts.
* batches (here): the same 1,000 contexts fill to 100,000 jobs through ``Core.submit`` with 100
  jobs per call (``SubmitJobs`` with a batch), garbage collector on, as in the daemon; then the
  process's resident set size with everything queued, against the RSS before the first submit.

Both run the real Core and Scheduler on the simulated NPU in virtual-time mode, so device time
is free and only npud's CPU cost is measured.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.daemon import ROOT
from bench.results import BenchResult, Metric

DECISION_GOAL_US = 20.0
RATE_GOAL = 20_000.0
RSS_GOAL_MB = 200.0


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 1e6


def _batch(contexts: int, per_ctx: int, batch: int) -> dict[str, Any]:
    """The batch-submit part (runs in its own process): rate and RSS."""
    from npud.clock import VirtualClock
    from npud.core.context import ContextQuotas
    from npud.core.owner import Owner
    from npud.core.service import Core, CoreLimits, JobSpec
    from npud.devices.sim import SimDevice
    from npud.isa.program import Program
    from npud.vocab import BufferUsage, SchedulingClass

    clock = VirtualClock()
    device = SimDevice("rk3588", clock=clock, mode="virtual")
    device.open()
    core = Core(
        clock, limits=CoreLimits(max_contexts_per_user=contexts, max_live_jobs_per_user=10**7)
    )
    entry = core.add_device(device)
    owner = Owner(uid=1000, gid=1000, pid=1, name="bench/p6")
    blob = Program().burn(0.0005).encode()
    quotas = ContextQuotas(max_queued_jobs=per_ctx + 1)
    setups = []
    for i in range(contexts):
        ctx = core.create_context(owner, quotas=quotas, weight=1.0 + (i % 4))
        q = core.create_queue(
            owner,
            ctx.id,
            sched_class=SchedulingClass.THROUGHPUT,
            in_order=False,
            depth_limit=per_ctx + 1,
        )
        cmd = core.create_buffer(owner, ctx.id, len(blob), usage=BufferUsage.COMMAND)
        core.write_buffer(owner, ctx.id, cmd.id, 0, blob)
        setups.append((ctx.id, [JobSpec(q.id, cmd.id, kind="burn")] * batch))
    rss_before = _rss_mb()
    t0 = time.perf_counter()
    for _ in range(per_ctx // batch):
        for ctx_id, specs in setups:
            core.submit(owner, ctx_id, specs)
    elapsed = time.perf_counter() - t0
    total = contexts * (per_ctx // batch) * batch
    stats = entry.scheduler.statistics()
    queued = sum(c.ready + c.queued for c in stats.classes)
    rss_after = _rss_mb()
    return {
        "jobs": total,
        "queued": queued,
        "rate": total / elapsed,
        "rss_before_mb": rss_before,
        "rss_after_mb": rss_after,
    }


_RUN_BATCH = (
    "import json, sys; from bench.p6_scale import _batch; "
    "print(json.dumps(_batch(*map(int, sys.argv[1:]))))"
)


def _python(*argv: object) -> str:
    """Run ``python *argv`` from the repository root; its stdout.

    Raises:
        RuntimeError: it exited non-zero (its stderr's tail is in the message).
    """
    out = subprocess.run(
        [sys.executable, *map(str, argv)],
        cwd=str(ROOT),
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"python {argv} failed:\n{out.stderr[-2000:]}")
    return out.stdout


_SCALE_KEYS = ("submit_us", "submit_rate", "decision_us", "dispatch_us", "maxrss_kb")


def _scale(contexts: int, per_ctx: int, drain: int) -> dict[str, float]:
    """Run bench/scale.py with ``--json`` and take its figures.

    Raises:
        RuntimeError: the script failed or its JSON lacks a figure.
    """
    with tempfile.TemporaryDirectory(prefix="npud-bench-scale-") as tmp:
        path = Path(tmp) / "scale.json"
        _python(
            "bench/scale.py",
            "--contexts",
            contexts,
            "--jobs-per-context",
            per_ctx,
            "--drain",
            drain,
            "--json",
            path,
        )
        report = json.loads(path.read_text())
    try:
        return {key: float(report[key]) for key in _SCALE_KEYS}
    except (KeyError, TypeError, ValueError) as exc:
        raise RuntimeError(f"bench/scale.py's JSON lacks a figure: {exc!r}\n{report}") from exc


def run(quick: bool) -> BenchResult:
    """Measure P6 (see the module docstring).

    Raises:
        RuntimeError: bench/scale.py failed or its JSON lacks a figure.
    """
    contexts, per_ctx, batch = (50, 200, 100) if quick else (1000, 100, 100)
    result = BenchResult("P6", "scale: 1,000 contexts, 100,000 queued jobs")
    full = (50, 100, 500) if quick else (1000, 100, 20_000)
    small = (5, 200, 200) if quick else (25, 1000, 2000)
    result.params = {
        "scale_py": {"contexts": full[0], "jobs_per_context": full[1]},
        "batch": {"contexts": contexts, "jobs_per_context": per_ctx, "batch": batch},
    }
    big = _scale(*full)
    base = _scale(*small)
    batched: dict[str, Any] = json.loads(_python("-c", _RUN_BATCH, contexts, per_ctx, batch))
    result.add(
        Metric(
            "decision cost",
            big["decision_us"],
            "us",
            base["decision_us"],
            f"{small[0]} contexts x {small[1]} jobs",
            f"<= {DECISION_GOAL_US:.0f} us",
            big["decision_us"] <= DECISION_GOAL_US,
        )
    )
    result.add(
        Metric(
            "submit rate, batches of 100",
            batched["rate"],
            "jobs/s",
            big["submit_rate"],
            "1 job per call (scale.py)",
            f">= {RATE_GOAL:,.0f} jobs/s",
            batched["rate"] >= RATE_GOAL,
        )
    )
    result.add(
        Metric(
            "RSS with all jobs queued",
            batched["rss_after_mb"],
            "MB",
            batched["rss_before_mb"],
            "before the first submit",
            f"<= {RSS_GOAL_MB:.0f} MB",
            batched["rss_after_mb"] <= RSS_GOAL_MB,
        )
    )
    result.add(
        Metric(
            "dispatch path per job",
            big["dispatch_us"],
            "us",
            base["dispatch_us"],
            f"{small[0]} contexts",
        )
    )
    result.add(
        Metric(
            "scale.py peak RSS",
            big["maxrss_kb"] / 1000,
            "MB",
            goal=f"<= {RSS_GOAL_MB:.0f} MB",
            met=big["maxrss_kb"] / 1000 <= RSS_GOAL_MB,
        )
    )
    result.notes.append(
        f"Core + scheduler on SimDevice virtual mode. Decision and per-job submit from "
        f"bench/scale.py ({full[0]} contexts x {full[1]} jobs; decision = best of 5 rounds, GC "
        f"off). Batches: {contexts} contexts x {per_ctx} jobs submitted {batch} per call with "
        f"the GC on ({batched['queued']:,} left queued); RSS read from /proc/self/statm."
    )
    return result
