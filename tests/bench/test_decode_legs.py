"""bench/decode.py: a decoder that fails, dies or hangs is reported, not awaited.

The collector tests start real child processes (from the fork server decode.py uses) that
behave like a decoder in one way; the collector must come back with a report for every one of
them. The last test runs decode.py against a real daemon with a watchdog no step can meet.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from bench.decode import _Leg, _processes

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]


def _reports(out: Any, name: str) -> None:
    out.put((name, {"gaps": [0.01, 0.02], "waits": [0.001], "steps": 2, "error": None}))


def _fails(out: Any, name: str) -> None:
    out.put((name, {"gaps": [0.01], "waits": [], "steps": 1, "error": "JobTimedOut: decode@14"}))


def _dies(out: Any, name: str) -> None:
    os._exit(3)


def _hangs(out: Any, name: str) -> None:
    time.sleep(120)


def _leg(targets: dict[str, Any]) -> _Leg:
    ctx = _processes()
    out = ctx.Queue()
    procs = {name: ctx.Process(target=fn, args=(out, name)) for name, fn in targets.items()}
    for proc in procs.values():
        proc.start()
    return _Leg("loaded", out, procs, {})


def test_reports_and_failures_are_collected() -> None:
    """A decoder's report is kept; a failed one is listed with its error and completed steps."""
    leg = _leg({"decoder 1": _reports, "decoder 2": _fails})
    leg.collect(["decoder 1", "decoder 2"], time.monotonic() + 120)
    leg.join()
    assert leg.reports["decoder 1"]["gaps"] == [0.01, 0.02]
    assert leg.failures() == [
        {"leg": "loaded", "role": "decoder 2", "error": "JobTimedOut: decode@14", "steps": 1}
    ]


def test_a_process_that_dies_silently_is_reported_with_its_exit_code() -> None:
    """A child that exits without a report is recorded as failed, naming its exit code."""
    leg = _leg({"decoder 1": _dies, "decoder 2": _reports})
    leg.collect(["decoder 1", "decoder 2"], time.monotonic() + 120)
    leg.join()
    (failure,) = leg.failures()
    assert failure["role"] == "decoder 1"
    assert "exited with 3" in failure["error"]
    assert failure["steps"] == 0
    assert leg.reports["decoder 2"]["error"] is None


def test_a_hung_process_is_stopped_at_the_deadline() -> None:
    """A child still silent at the leg's deadline is terminated and reported as failed."""
    leg = _leg({"decoder 1": _hangs})
    leg.collect(["decoder 1"], time.monotonic() + 1.0)
    leg.join()
    assert leg.procs["decoder 1"].exitcode is not None
    (failure,) = leg.failures()
    assert "timeout" in failure["error"]


def test_decode_py_reports_timed_out_processes_and_finishes(tmp_path: Path) -> None:
    """With a watchdog no step can meet, every process reports JobTimedOut and the run ends."""
    out = tmp_path / "decode.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.decode",
            "--decoders",
            "2",
            "--tokens",
            "4",
            "--prefill-tokens",
            "32",
            "--policies",
            "fifo",
            "--skip-direct",
            "--rounds",
            "1",
            "--job-timeout",
            "0.00001",
            "--leg-timeout",
            "120",
            "--json",
            str(out),
        ],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (fifo,) = json.loads(out.read_text())["policies"]
    assert fifo["complete"] is False
    roles = {(f["leg"], f["role"]) for f in fifo["failures"]}
    assert roles == {
        ("one", "decoder"),
        ("unloaded", "decoder 1"),
        ("unloaded", "decoder 2"),
        ("loaded", "prefiller"),
        ("loaded", "decoder 1"),
        ("loaded", "decoder 2"),
    }
    for failure in fifo["failures"]:
        assert failure["error"].startswith("JobTimedOut"), failure
        assert failure["steps"] == 0
    assert fifo["loaded_p99_ms"] is None
    assert "FAILED after 0 steps: JobTimedOut" in proc.stdout
