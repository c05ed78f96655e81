"""P5 decode: the LLM workload through npud vs in-process, and decode under a prefill flood.

Wraps ``bench/decode.py`` (the LLM engineer's script), run as a subprocess with ``--json``. It
runs the tiny Llama model's greedy decode:

* direct: one decoder on the DirectBackend, the simulated NPU in process mode inside the
  client's own process (no daemon): the baseline for what npud costs a decoder;
* under the ``npud`` policy, with its own daemon: one decoder alone (unloaded), then
  ``decoders`` concurrent decoder processes while another process runs long prefills back to
  back (THROUGHPUT chunks) in its own context.

Figures taken from its report: decode tokens/s through the daemon against direct (steady-state
rate from the median inter-token gap, ``1000 / p50 ms``), the loaded inter-token p99 against the
unloaded p99 under the npud policy, and the same loaded p99 (and npud's own decode queue wait)
against the ``fifo`` policy's in the same run; the prefill rate achieved meanwhile.

decode.py reports a decoder or prefiller that failed (its error and the steps it completed)
instead of waiting for it. Under ``fifo`` that is a finding about the baseline (a decode step
queued behind prefill chunks can run past even a generous watchdog on a loaded host): it is
named in the notes and beside the fifo figure, which then comes from the steps that completed.
Under ``npud`` it is a failure to run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench.daemon import ROOT, running_daemon
from bench.results import BenchResult, Metric

RATE_GOAL = 0.97
JOB_TIMEOUT_S = 10.0  # decode.py's default watchdog per step, stated here for the notes
REPS = 3
P99_GOAL = 1.2


def _descendants(pid: int) -> list[int]:
    """Every live descendant of ``pid`` (children first found through /proc)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{parent}/task/{task}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            found += kids
            todo += kids
    return found


def _decode(args: list[str], timeout_s: float) -> dict[str, Any]:
    """Run ``python -m bench.decode``; on a hang, stop it and everything it started, by pid.

    Why the timeout: decode.py stops a leg whose processes do not report within its leg
    timeout, but its daemons run in their own sessions, so if decode.py itself hangs the runner
    stops the whole tree rather than let one stuck run eat the budget of the others.
    """
    with tempfile.TemporaryDirectory(prefix="npud-bench-decode-") as tmp:
        out = Path(tmp) / "decode.json"
        proc = subprocess.Popen(
            [sys.executable, "-m", "bench.decode", *args, "--json", str(out)],
            cwd=str(ROOT),
            env=dict(os.environ, PYTHONPATH=str(ROOT)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            stdout, stderr = proc.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            tree = _descendants(proc.pid)
            for pid in [proc.pid, *tree]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGTERM)
            stdout, stderr = proc.communicate(timeout=60)
            raise RuntimeError(
                f"bench/decode.py did not finish in {timeout_s:.0f} s:\n{stderr[-3000:]}"
            ) from None
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"bench/decode.py exited with {proc.returncode}:\n{stderr[-3000:]}")
        got: dict[str, Any] = json.loads(out.read_text())
        got["stdout"] = stdout
    return got


_FIGURES = (
    "unloaded_p50_ms",
    "unloaded_p99_ms",
    "loaded_p99_ms",
    "loaded_wait_p99_ms",
    "prefill_tokens_per_s",
)


_DETAILS = (
    "loaded_wait_p50_ms",
    "loaded_run_p50_ms",
    "loaded_run_p99_ms",
    "prefill_chunk_wait_p50_ms",
    "prefill_chunk_run_p50_ms",
    "prefill_chunk_run_p99_ms",
)
"""Figures kept in the JSON and the notes (not the table): where the loaded gap goes."""


def _policy_figures(got: dict[str, Any], policy: str) -> dict[str, Any]:
    """One policy's figures from decode.py's JSON (``None`` where it had no samples).

    Raises:
        RuntimeError: the JSON lacks the policy or a figure.
    """
    try:
        run = next(p for p in got["policies"] if p["policy"] == policy)
        figures: dict[str, Any] = {k: None if run[k] is None else float(run[k]) for k in _FIGURES}
        figures.update({k: run.get(k) for k in _DETAILS})
        figures["failures"] = list(run["failures"])
        figures["loaded_gaps_ms"] = [float(g) for g in run["loaded_gaps_ms"]]
    except (KeyError, TypeError, ValueError, StopIteration) as exc:
        raise RuntimeError(f"bench/decode.py's JSON lacks a {policy} figure: {exc!r}") from exc
    return figures


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r[key] is not None]
    return statistics.median(values) if values else None


def _failure_text(failures: list[dict[str, Any]]) -> str:
    return "; ".join(
        f"{f['leg']} {f['role']} after {f['steps']} steps: {f['error'].splitlines()[0][:160]}"
        for f in failures
    )


def _interleaved_rates(socket: str, rounds: int, tokens: int) -> dict[str, list[float]]:
    """Decode tokens/s of one decoder, direct and through the daemon, alternating per round.

    Why interleaved: decode.py measures the direct backend once, then the daemon a minute
    later; on a shared machine the load changes in between by more than the difference being
    measured. Alternating short rounds on two open generators exposes both to the same load.
    """
    from npud.llm.daemon import DaemonBackend
    from npud.llm.direct import DirectBackend
    from npud.llm.generator import Generator
    from npud.llm.model import load_model
    from npud.llm.tiny import ensure_default_model

    model = load_model(str(ensure_default_model()))
    prompt = [256, *b"npud decode "]
    gaps: dict[str, list[float]] = {"direct": [], "daemon": []}
    with (
        Generator(model, DirectBackend.on_sim(mode="process")) as direct,
        Generator(model, DaemonBackend(socket_path=socket, label="bench/p5")) as daemon,
    ):
        gens = {"direct": direct, "daemon": daemon}
        for gen in gens.values():
            gen.generate(prompt, 4, stop_at_eos=False)  # warm: weights, stream, caches
        for r in range(rounds):
            for name in ["direct", "daemon"] if r % 2 == 0 else ["daemon", "direct"]:
                res = gens[name].generate(prompt, tokens, stop_at_eos=False)
                gaps[name] += list(res.stats.inter_token_s)
    return gaps


def run(quick: bool) -> BenchResult:
    """Measure P5 through bench/decode.py (see the module docstring).

    Raises:
        RuntimeError: bench/decode.py failed, its JSON lacks a figure, or a decoder or the
            prefiller failed under the npud policy.
    """
    decoders, tokens, prefill = (1, 8, 32) if quick else (4, 64, 240)
    result = BenchResult("P5", "decode: LLM through npud vs in-process, under a prefill flood")
    result.params = {"decoders": decoders, "tokens": tokens, "prefill_tokens": prefill}
    # Why repetitions: each decode.py run measures direct and daemon minutes apart, and on a
    # shared 2-core machine the load moves in between; the median over runs of each figure is
    # what the ratios are taken from (every run's figures are kept in the JSON).
    reps = 1 if quick else REPS
    direct_runs: list[dict[str, float]] = []
    by_policy: dict[str, list[dict[str, Any]]] = {"npud": [], "fifo": []}
    for _ in range(reps):
        got = _decode(
            [
                "--decoders",
                str(decoders),
                "--tokens",
                str(tokens),
                "--prefill-tokens",
                str(prefill),
                "--policies",
                "npud,fifo",
                "--job-timeout",
                str(JOB_TIMEOUT_S),
                "--leg-timeout",
                "60" if quick else "240",
            ],
            timeout_s=180 if quick else 900,
        )
        try:
            direct_runs.append(
                {"p50_ms": float(got["direct"]["p50_ms"]), "p99_ms": float(got["direct"]["p99_ms"])}
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise RuntimeError(f"bench/decode.py's JSON lacks the direct figures: {exc!r}") from exc
        for policy, runs in by_policy.items():
            runs.append(_policy_figures(got, policy))
    npud_failures = [f for r in by_policy["npud"] for f in r["failures"]]
    if npud_failures:
        raise RuntimeError(f"decoders failed under the npud policy: {_failure_text(npud_failures)}")
    npud = {k: _median(by_policy["npud"], k) for k in _FIGURES}
    fifo = {k: _median(by_policy["fifo"], k) for k in _FIGURES}
    if any(npud[k] is None for k in _FIGURES):
        raise RuntimeError(f"bench/decode.py gave no samples for an npud figure: {npud}")
    direct_p50 = statistics.median(r["p50_ms"] for r in direct_runs)
    direct_p99 = statistics.median(r["p99_ms"] for r in direct_runs)
    fifo_failures = [f for r in by_policy["fifo"] for f in r["failures"]]
    fifo_label = "fifo policy"
    if fifo_failures:
        fifo_label += f"; {len(fifo_failures)} of its processes failed, see notes"
    rounds, per_round = (2, 6) if quick else (8, 32)
    with running_daemon("npud") as d:
        gaps = _interleaved_rates(str(d.socket), rounds, per_round)
    daemon_rate = len(gaps["daemon"]) / sum(gaps["daemon"])
    direct_rate = len(gaps["direct"]) / sum(gaps["direct"])
    result.samples = {f"{k}_gap_ms": [g * 1e3 for g in v] for k, v in gaps.items()}
    for policy, runs in by_policy.items():
        result.samples[f"{policy}_loaded_gap_ms"] = [g for r in runs for g in r["loaded_gaps_ms"]]
    result.add(
        Metric(
            "decode tokens/s via daemon",
            daemon_rate,
            "tok/s",
            direct_rate,
            "direct in-process",
            f">= {RATE_GOAL * 100:.0f} % of direct",
            daemon_rate >= RATE_GOAL * direct_rate,
        )
    )
    result.add(
        Metric(
            "decode tokens/s, decode.py medians",
            1000.0 / npud["unloaded_p50_ms"],
            "tok/s",
            1000.0 / direct_p50,
            "direct in-process",
        )
    )
    loaded = f"{decoders} decoder{'s' if decoders != 1 else ''} + prefill"
    result.add(
        Metric(
            f"inter-token p99, {loaded}",
            npud["loaded_p99_ms"],
            "ms",
            npud["unloaded_p99_ms"],
            "unloaded",
            f"<= {P99_GOAL}x unloaded",
            npud["loaded_p99_ms"] <= P99_GOAL * npud["unloaded_p99_ms"],
        )
    )
    if npud.get("decoders_p99_ms"):
        # The prefill's own effect: the same decoders with and without it (the unloaded figure
        # above also carries the decoders' contention with each other for the host's CPUs).
        result.add(
            Metric(
                f"inter-token p99, {loaded}, vs the decoders alone",
                npud["loaded_p99_ms"],
                "ms",
                npud["decoders_p99_ms"],
                f"{decoders} decoders, no prefill",
                f"<= {P99_GOAL}x",
                npud["loaded_p99_ms"] <= P99_GOAL * npud["decoders_p99_ms"],
            )
        )
    if fifo["loaded_p99_ms"] is not None:
        result.add(
            Metric(
                f"inter-token p99 vs fifo, {loaded}",
                npud["loaded_p99_ms"],
                "ms",
                fifo["loaded_p99_ms"],
                fifo_label,
            )
        )
    if fifo["loaded_wait_p99_ms"] is not None:
        result.add(
            Metric(
                "decode queue wait p99, loaded, vs fifo",
                npud["loaded_wait_p99_ms"],
                "ms",
                fifo["loaded_wait_p99_ms"],
                fifo_label,
            )
        )
    result.add(
        Metric(
            "direct inter-token p99 vs daemon unloaded",
            npud["unloaded_p99_ms"],
            "ms",
            direct_p99,
            "direct in-process",
        )
    )
    result.add(
        Metric(
            "prefill rate under decode load",
            npud["prefill_tokens_per_s"],
            "tok/s",
            fifo["prefill_tokens_per_s"],
            "fifo policy" if fifo["prefill_tokens_per_s"] is not None else "",
        )
    )
    result.params["runs"] = {"direct": direct_runs, **by_policy}
    result.notes.append(
        f"bench/decode.py: tiny Llama model, SimDevice process mode; direct = DirectBackend in "
        f"the client's process; daemon figures under the npud and fifo policies, each with its "
        f"own daemon; {decoders} decoder process(es) x {tokens} tokens while one process "
        f"prefills {prefill}-token prompts back to back; every step asks for a "
        f"{JOB_TIMEOUT_S:g} s watchdog (npud's class defaults, 250/400 ms, are for real "
        f"hardware); median of {reps} runs. The first tokens/s row alternates {rounds} rounds "
        f"of {per_round} tokens between a direct and a daemon generator open side by side (one "
        "decoder, unloaded; tokens / decode time); the second is 1000 / median gap of "
        "decode.py's separate direct and unloaded runs."
    )
    detail = {p: {k: _median(runs, k) for k in _DETAILS} for p, runs in by_policy.items()}
    result.params["loaded_medians"] = detail

    def _f(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}"

    result.notes.append(
        "Where a loaded gap goes (medians over runs, ms; npud / fifo): decode steps waited in "
        f"npud's queue p50 {_f(detail['npud']['loaded_wait_p50_ms'])} / "
        f"{_f(detail['fifo']['loaded_wait_p50_ms'])} and ran on the device p50 "
        f"{_f(detail['npud']['loaded_run_p50_ms'])} / {_f(detail['fifo']['loaded_run_p50_ms'])}, "
        f"p99 {_f(detail['npud']['loaded_run_p99_ms'])} / "
        f"{_f(detail['fifo']['loaded_run_p99_ms'])}; prefill chunks ran p50 "
        f"{_f(detail['npud']['prefill_chunk_run_p50_ms'])} / "
        f"{_f(detail['fifo']['prefill_chunk_run_p50_ms'])} after waiting p50 "
        f"{_f(detail['npud']['prefill_chunk_wait_p50_ms'])} / "
        f"{_f(detail['fifo']['prefill_chunk_wait_p50_ms'])}."
    )
    if fifo_failures:
        result.notes.append(
            f"Under fifo, {len(fifo_failures)} process(es) failed over {reps} run(s) and the fifo "
            f"figures come from the steps that completed before: {_failure_text(fifo_failures)}."
        )
    if fifo["loaded_p99_ms"] is None:
        result.notes.append("Under fifo no decode step completed under load: no fifo figure.")
    return result
