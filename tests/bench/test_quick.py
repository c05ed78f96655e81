"""The benchmark runner's quick mode: every benchmark runs and reports its metrics as JSON.

This checks that ``python -m bench`` works end to end (tiny sizes, real daemons and scripts),
not the figures: no timing is asserted, only that each benchmark produced well-formed metrics
beside their baselines and goals, and the CDF plots.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
KEYS = ["P1", "P2", "P3", "P4", "P5", "P6", "P7", "P8", "P9"]


@pytest.fixture(scope="module")
def quick_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path]:
    out = tmp_path_factory.mktemp("bench-out")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NPUD_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=340,
        check=False,
    )
    return proc, out


def _report(out: Path) -> dict[str, Any]:
    report: dict[str, Any] = json.loads((out / "results.json").read_text())
    return report


def test_quick_mode_exits_zero(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    """Every benchmark ran (the runner exits 0 only when none failed to run)."""
    proc, _ = quick_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "met?" in proc.stdout


def test_every_benchmark_produced_metrics(
    quick_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """The JSON holds P1..P8 in order, each without error and with finite, well-formed metrics."""
    _, out = quick_run
    report = _report(out)
    assert report["quick"] is True
    assert report["machine"]["nproc"] >= 1
    assert report["machine"]["python"]
    results = report["results"]
    assert [r["key"] for r in results] == KEYS
    for r in results:
        assert r["error"] is None, r["error"]
        assert r["metrics"], f"{r['key']} produced no metrics"
        assert r["notes"], f"{r['key']} does not say how it measured"
        for m in r["metrics"]:
            assert set(m) == {
                "name",
                "value",
                "unit",
                "baseline",
                "baseline_label",
                "ratio",
                "goal",
                "met",
            }
            assert math.isfinite(m["value"]), m
            assert m["met"] in (True, False, None)
            if m["goal"]:
                assert m["met"] is not None, f"{r['key']} {m['name']} has a goal but no verdict"
            if m["baseline"] not in (None, 0):
                assert m["ratio"] == pytest.approx(m["value"] / m["baseline"])


def test_every_benchmark_reports_a_goal_with_its_baseline(
    quick_run: tuple[subprocess.CompletedProcess[str], Path],
) -> None:
    """Each benchmark states at least one goal beside its result, with a same-run baseline."""
    _, out = quick_run
    for r in _report(out)["results"]:
        goals = [m for m in r["metrics"] if m["goal"]]
        assert goals, f"{r['key']} states no goal"
        assert any(m["baseline"] is not None for m in r["metrics"]), r["key"]


def test_cdf_plots_are_written(quick_run: tuple[subprocess.CompletedProcess[str], Path]) -> None:
    """The overhead, isolation and decode CDFs are PNG files named in the JSON."""
    _, out = quick_run
    names = _report(out)["plots"]
    assert set(names) == {"bench-p1-overhead.png", "bench-p2-isolation.png", "bench-p5-decode.png"}
    for name in names:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_benchmark_is_refused() -> None:
    """--only with an unknown key is a usage error, before anything runs."""
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--only", "P99"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 2
    assert "P99" in proc.stderr
