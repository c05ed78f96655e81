"""P5's reading of decode.py's JSON: fifo failures are a finding, npud failures a failure to run.

bench/decode.py and the daemon are replaced by canned results here (the quick run exercises the
real ones); what is checked is how P5 turns a run with failed processes into metrics and notes.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from bench import p5_decode
from bench.device_speed import check_same_speed


def _policy(name: str, failures: list[dict[str, Any]], loaded_p99: float | None) -> dict[str, Any]:
    return {
        "policy": name,
        "complete": not failures,
        "failures": failures,
        "one_p50_ms": 9.0,
        "one_p99_ms": 18.0,
        "unloaded_p50_ms": 10.0,
        "unloaded_p99_ms": 20.0,
        "loaded_p50_ms": 30.0 if loaded_p99 is not None else None,
        "loaded_p99_ms": loaded_p99,
        "loaded_wait_p50_ms": 5.0,
        "loaded_wait_p99_ms": 9.0 if loaded_p99 is not None else None,
        "loaded_run_p50_ms": 12.0,
        "loaded_run_p99_ms": 25.0,
        "prefill_chunk_wait_p50_ms": 40.0,
        "prefill_chunk_run_p50_ms": 11.0,
        "prefill_chunk_run_p99_ms": 22.0,
        "prefill_tokens_per_s": 400.0,
        "loaded_gaps_ms": [30.0, 31.0] if loaded_p99 is not None else [],
    }


SAME_SPEED = check_same_speed({"direct": [0.1] * 3, "npud/one": [0.101] * 3}).as_dict()
FASTER_DAEMON = check_same_speed({"direct": [0.1] * 3, "npud/one": [0.077] * 3}).as_dict()

TIMED_OUT = {"leg": "loaded", "role": "decoder 2", "error": "JobTimedOut: decode@14", "steps": 7}


@pytest.fixture
def canned(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """decode.py answers with ``canned["policies"]`` (for every board); the interleaved rounds
    with fixed gaps."""
    state: dict[str, Any] = {"policies": []}

    def fake_decode(args: list[str], timeout_s: float) -> dict[str, Any]:
        return {
            "direct": {"p50_ms": 8.0, "p99_ms": 16.0},
            "policies": state["policies"],
            "device_speed": state.get("speed", SAME_SPEED),
        }

    @contextlib.contextmanager
    def fake_daemon(policy: str = "npud", **_: Any) -> Iterator[SimpleNamespace]:
        yield SimpleNamespace(socket=Path("/nonexistent/npud.sock"))

    def fake_rates(
        socket: str, rounds: int, tokens: int
    ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
        gaps = {"direct": [0.010] * 4, "daemon": [0.011] * 4}
        return gaps, {"direct": [1e-4] * 4, "daemon": state.get("daemon_step_s", [1e-4] * 4)}

    monkeypatch.setattr(p5_decode, "_decode", fake_decode)
    monkeypatch.setattr(p5_decode, "running_daemon", fake_daemon)
    monkeypatch.setattr(p5_decode, "_interleaved_rates", fake_rates)
    return state


def test_fifo_failures_are_reported_beside_the_fifo_figure(canned: dict[str, Any]) -> None:
    """A decoder that timed out under fifo is named in the notes and the fifo baseline's label."""
    canned["policies"] = [_policy("npud", [], 50.0), _policy("fifo", [TIMED_OUT], 80.0)]
    result = p5_decode.run(quick=True)
    by_name = {m.name: m for m in result.metrics}
    for board in p5_decode.boards_for(quick=True):
        vs_fifo = by_name[f"{board}: inter-token p99 vs fifo, 1 decoder + prefill"]
        assert (vs_fifo.value, vs_fifo.baseline) == (50.0, 80.0)
        assert "1 of its processes failed" in vs_fifo.baseline_label
        assert result.samples[f"{board}_fifo_loaded_gap_ms"] == [30.0, 31.0]
    notes = " ".join(result.notes)
    assert "decoder 2 after 7 steps: JobTimedOut: decode@14" in notes


def test_no_fifo_figure_when_no_fifo_step_completed(canned: dict[str, Any]) -> None:
    """Without fifo samples the comparison rows are left out and the notes say why."""
    canned["policies"] = [_policy("npud", [], 50.0), _policy("fifo", [TIMED_OUT], None)]
    result = p5_decode.run(quick=True)
    names = [m.name for m in result.metrics]
    assert not any("vs fifo" in n for n in names)
    assert "rk3588: inter-token p99, 1 decoder + prefill" in names
    assert any("no decode step completed under load" in n for n in result.notes)


def test_a_failure_under_npud_fails_the_benchmark(canned: dict[str, Any]) -> None:
    """A decoder failing under npud's own policy is a failure to run, naming it and its steps."""
    canned["policies"] = [_policy("npud", [TIMED_OUT], 50.0), _policy("fifo", [], 80.0)]
    with pytest.raises(RuntimeError, match=r"decoder 2 after 7 steps: JobTimedOut"):
        p5_decode.run(quick=True)


def test_legs_at_different_device_speeds_are_flagged(canned: dict[str, Any]) -> None:
    """A board whose legs' steps ran at different speeds gets a missed speed row and a note;
    interleaved legs at different speeds miss the rate goal whatever the rate."""
    canned["policies"] = [_policy("npud", [], 50.0), _policy("fifo", [], 80.0)]
    canned["speed"] = FASTER_DAEMON
    canned["daemon_step_s"] = [0.75e-4] * 4
    result = p5_decode.run(quick=True)
    by_name = {m.name: m for m in result.metrics}
    row = by_name["rk3588: device step, slowest leg vs fastest"]
    assert (row.value, row.baseline, row.met) == (100.0, 77.0, False)
    assert by_name["unslowed, direct vs daemon: device step, slowest leg vs fastest"].met is False
    assert by_name["decode tokens/s via daemon"].met is False
    assert any("did not run at one device speed" in n for n in result.notes)


def test_legs_at_one_device_speed_pass_the_check(canned: dict[str, Any]) -> None:
    """Legs within the tolerance give met speed rows and no note about speeds."""
    canned["policies"] = [_policy("npud", [], 50.0), _policy("fifo", [], 80.0)]
    result = p5_decode.run(quick=True)
    rows = [m for m in result.metrics if "device step" in m.name]
    assert len(rows) == 2
    assert all(m.met for m in rows)
    assert not any("device speed" in n for n in result.notes)
