"""bench/scale.py at small sizes: the decision rounds follow the queue, and --json has figures.

It once timed 20,000 decisions whatever the size and crashed below about 20,000 queued jobs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _scale(tmp_path: Path, contexts: int, per_ctx: int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "bench/scale.py",
            "--contexts",
            str(contexts),
            "--jobs-per-context",
            str(per_ctx),
            "--drain",
            "50",
            "--json",
            str(tmp_path / "scale.json"),
        ],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize(("contexts", "per_ctx"), [(4, 5), (20, 50)])
def test_small_sizes_run_and_write_json(tmp_path: Path, contexts: int, per_ctx: int) -> None:
    """A few hundred jobs run to the end; the JSON names every figure and bounds the rounds."""
    proc = _scale(tmp_path, contexts, per_ctx)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "scale.json").read_text())
    assert report["jobs"] == contexts * per_ctx
    assert 1 <= report["decision_rounds"] <= report["ready"] <= report["jobs"]
    for key in ("submit_us", "submit_rate", "decision_us", "dispatch_us", "maxrss_kb"):
        assert report[key] > 0, key
    assert report["contexts_after"] == 0
    assert report["live_jobs_after"] == 0
    assert "decision (" in proc.stdout


def test_no_ready_job_is_a_clear_error(tmp_path: Path) -> None:
    """With every job already on the device there is no decision to time: it says so."""
    proc = _scale(tmp_path, 1, 1)
    assert proc.returncode != 0
    assert "too few to time a decision" in proc.stderr
    assert not (tmp_path / "scale.json").exists()
