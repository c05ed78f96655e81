"""``python -m bench``: run every benchmark, print the table, write JSON and plots.

Usage::

    python -m bench                 # the full run (about 5-10 minutes on 2 cores)
    python -m bench --quick         # tiny sizes: checks that every benchmark runs (CI)
    python -m bench --only P2,P4    # a subset
    python -m bench --docs          # also refresh docs/benchmarks.md's table and docs/img/

Each benchmark returns metrics beside a baseline measured in the same run and its goal. The
table shows every one; a missed goal is reported, never hidden, and does not fail the run. The
runner exits 1 when a benchmark fails to RUN (it raised: a daemon died, a job failed, a script
it wraps broke), after running the others.
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench import plots
from bench.results import BenchResult, format_table, markdown_table

ROOT = Path(__file__).resolve().parents[1]

BENCHMARKS: tuple[tuple[str, str], ...] = (
    ("P1", "bench.p1_overhead"),
    ("P2", "bench.p2_isolation"),
    ("P3", "bench.p3_utilisation"),
    ("P4", "bench.p4_residency"),
    ("P5", "bench.p5_decode"),
    ("P6", "bench.p6_scale"),
    ("P7", "bench.p7_metrics"),
    ("P8", "bench.p8_gateway"),
    ("P9", "bench.p9_bulk"),
)

TABLE_BEGIN = "<!-- bench:table:begin -->"
TABLE_END = "<!-- bench:table:end -->"


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
    except OSError:
        commit = ""
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": os.getloadavg(),
        "commit": commit,
    }


def run_all(keys: Sequence[str], quick: bool) -> list[BenchResult]:
    """Run the chosen benchmarks in order; a failure is recorded on its result, not raised."""
    results: list[BenchResult] = []
    for key, module in BENCHMARKS:
        if key not in keys:
            continue
        print(f"[bench] {key} ({module}) ...", file=sys.stderr, flush=True)
        t0 = time.monotonic()
        try:
            result: BenchResult = importlib.import_module(module).run(quick)
        except Exception as exc:
            result = BenchResult(key, module)
            result.error = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"
            print(f"[bench] {key} FAILED TO RUN: {result.error}", file=sys.stderr, flush=True)
        result.seconds = time.monotonic() - t0
        print(f"[bench] {key} done in {result.seconds:.1f} s", file=sys.stderr, flush=True)
        results.append(result)
    return results


def update_docs(results: Sequence[BenchResult], info: dict[str, Any], images: list[Path]) -> None:
    """Copy the plots to docs/img/ and replace the table in docs/benchmarks.md."""
    img_dir = ROOT / "docs" / "img"
    img_dir.mkdir(parents=True, exist_ok=True)
    for path in images:
        shutil.copy(path, img_dir / path.name)
    doc = ROOT / "docs" / "benchmarks.md"
    text = doc.read_text() if doc.exists() else f"# Benchmarks\n\n{TABLE_BEGIN}\n{TABLE_END}\n"
    if TABLE_BEGIN not in text or TABLE_END not in text:
        text += f"\n{TABLE_BEGIN}\n{TABLE_END}\n"
    load = ", ".join(f"{x:.2f}" for x in info["load_average"])
    block = "\n".join(
        [
            TABLE_BEGIN,
            f"Run of {info['started']} at commit `{info['commit']}`: {info['nproc']} CPUs "
            f"({info['cpu_model']}), Python {info['python']}, {info['platform']}; load average "
            f"at the start {load}; {info['seconds']:.0f} s in all.",
            "",
            markdown_table(results),
            TABLE_END,
        ]
    )
    head, rest = text.split(TABLE_BEGIN, 1)
    _, tail = rest.split(TABLE_END, 1)
    doc.write_text(head + block + tail)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmarks; returns 1 if one failed to run, else 0 (missed goals included)."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: the runner works")
    parser.add_argument("--only", default="", help="comma-separated keys (P1..P8)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--docs", action="store_true", help="refresh docs/benchmarks.md")
    args = parser.parse_args(argv)
    known = [k for k, _ in BENCHMARKS]
    keys = [k.strip().upper() for k in args.only.split(",") if k.strip()] or known
    unknown = sorted(set(keys) - set(known))
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(known)}")
    info = machine()
    info["started"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    t0 = time.monotonic()
    results = run_all(keys, args.quick)
    info["seconds"] = time.monotonic() - t0
    info["load_average_end"] = os.getloadavg()
    args.out.mkdir(parents=True, exist_ok=True)
    images = plots.draw(results, args.out)
    report = {
        "machine": info,
        "quick": args.quick,
        "results": [r.as_dict() for r in results],
        "plots": [p.name for p in images],
    }
    (args.out / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    print(format_table(results))
    for r in results:
        for note in r.notes:
            print(f"\n{r.key}: {note}")
    print(f"\nJSON: {args.out / 'results.json'}; plots: {', '.join(p.name for p in images)}")
    if args.docs and not args.quick:
        update_docs(results, info, images)
    failed = [r.key for r in results if r.error is not None]
    if failed:
        print(f"failed to run: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
