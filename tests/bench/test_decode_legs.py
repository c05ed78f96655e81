"""bench/decode.py's leg collector: a decoder that fails, dies or hangs is reported, not awaited.

Each test starts real child processes (from the fork server decode.py uses) that behave like a
decoder in one way; the collector must come back with a report for every one of them.
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from bench.decode import _Leg, _processes

pytestmark = pytest.mark.slow


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
