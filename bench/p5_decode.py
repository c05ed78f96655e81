"""P5 decode: the LLM workload through npud vs in-process, and decode under a prefill flood.

Wraps ``bench/decode.py`` (the LLM engineer's script), run as a subprocess with ``--json``. It
runs the tiny Llama model's greedy decode:

* direct: one decoder on the DirectBackend, the simulated NPU in process mode inside the
  client's own process (no daemon): the baseline for what npud costs a decoder;
* under the ``npud`` policy, with its own daemon: one decoder alone (unloaded), then
  ``decoders`` concurrent decoder processes while another process runs long prefills back to
  back (THROUGHPUT chunks) in its own context.

Figures taken from its report: decode tokens/s through the daemon against direct (steady-state
rate from the median inter-token gap, ``1000 / p50 ms``), and the loaded inter-token p99 against
the unloaded p99 under the npud policy; the prefill rate achieved meanwhile.

decode.py's ``fifo`` leg is not run: on a loaded 2-core machine the watchdog times out decode
steps and prefill chunks under fifo (class timeouts 250 ms and 400 ms), a decoder process dies
with JobTimedOut, and decode.py then waits 600 s for its result.
"""

from __future__ import annotations

import contextlib
import json
import math
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
    """Run bench/decode.py; on a hang, stop it and everything it started, by pid.

    Why the timeout: decode.py waits up to 600 s for a result from a decoder process that may
    have died (a job failed), and its daemons run in their own sessions, so the runner stops the
    whole tree itself rather than let one stuck leg eat the 10-minute budget.
    """
    with tempfile.TemporaryDirectory(prefix="npud-bench-decode-") as tmp:
        out = Path(tmp) / "decode.json"
        proc = subprocess.Popen(
            [sys.executable, str(ROOT / "bench" / "decode.py"), *args, "--json", str(out)],
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
                f"bench/decode.py did not finish in {timeout_s:.0f} s (a decoder died?):\n"
                f"{stderr[-3000:]}"
            ) from None
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(f"bench/decode.py exited with {proc.returncode}:\n{stderr[-3000:]}")
        got: dict[str, Any] = json.loads(out.read_text())
        got["stdout"] = stdout
    return got


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
        RuntimeError: bench/decode.py failed or its JSON lacks a figure.
    """
    decoders, tokens, prefill = (1, 8, 32) if quick else (4, 64, 240)
    result = BenchResult("P5", "decode: LLM through npud vs in-process, under a prefill flood")
    result.params = {"decoders": decoders, "tokens": tokens, "prefill_tokens": prefill}
    # Why repetitions: each decode.py run measures direct and daemon minutes apart, and on a
    # shared 2-core machine the load moves in between; the median over runs of each figure is
    # what the ratios are taken from (every run's figures are kept in the JSON).
    reps = 1 if quick else REPS
    runs = []
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
                "npud",
            ],
            timeout_s=120 if quick else 420,
        )
        try:
            npud_run = next(p for p in got["policies"] if p["policy"] == "npud")
            runs.append(
                {
                    "direct_p50_ms": float(got["direct"]["p50_ms"]),
                    "direct_p99_ms": float(got["direct"]["p99_ms"]),
                    "unloaded_p50_ms": float(npud_run["unloaded_p50_ms"]),
                    "unloaded_p99_ms": float(npud_run["unloaded_p99_ms"]),
                    "loaded_p99_ms": float(npud_run["loaded_p99_ms"]),
                    "prefill_tokens_per_s": float(npud_run["prefill_tokens_per_s"]),
                    "loaded_wait_p99_ms": float(npud_run.get("loaded_wait_p99_ms", math.nan)),
                }
            )
        except (KeyError, TypeError, ValueError, StopIteration) as exc:
            raise RuntimeError(f"bench/decode.py's JSON lacks a figure: {exc!r}") from exc
    med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
    npud = med
    rounds, per_round = (2, 6) if quick else (8, 32)
    with running_daemon("npud") as d:
        gaps = _interleaved_rates(str(d.socket), rounds, per_round)
    daemon_rate = len(gaps["daemon"]) / sum(gaps["daemon"])
    direct_rate = len(gaps["direct"]) / sum(gaps["direct"])
    result.samples = {f"{k}_gap_ms": [g * 1e3 for g in v] for k, v in gaps.items()}
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
            1000.0 / med["unloaded_p50_ms"],
            "tok/s",
            1000.0 / med["direct_p50_ms"],
            "direct in-process",
        )
    )
    result.add(
        Metric(
            "inter-token p99, 4 decoders + prefill"
            if decoders == 4
            else f"inter-token p99, {decoders} decoders + prefill",
            npud["loaded_p99_ms"],
            "ms",
            npud["unloaded_p99_ms"],
            "unloaded",
            f"<= {P99_GOAL}x unloaded",
            npud["loaded_p99_ms"] <= P99_GOAL * npud["unloaded_p99_ms"],
        )
    )
    result.add(
        Metric(
            "direct inter-token p99 vs daemon unloaded",
            npud["unloaded_p99_ms"],
            "ms",
            med["direct_p99_ms"],
            "direct in-process",
        )
    )
    result.add(Metric("prefill rate under decode load", npud["prefill_tokens_per_s"], "tok/s"))
    if not math.isnan(med["loaded_wait_p99_ms"]):
        result.add(Metric("decode queue wait p99, loaded", med["loaded_wait_p99_ms"], "ms"))
    result.params["runs"] = runs
    result.notes.append(
        f"bench/decode.py: tiny Llama model, SimDevice process mode; direct = DirectBackend in "
        f"the client's process; daemon figures under the npud policy; {decoders} decoder "
        f"processes x {tokens} tokens while one process prefills {prefill}-token prompts back "
        f"to back; median of {reps} runs. The first tokens/s row alternates {rounds} rounds of "
        f"{per_round} tokens between a direct and a daemon generator open side by side (one "
        "decoder, unloaded; tokens / decode time); the second is 1000 / median gap of decode.py's "
        "separate direct and unloaded runs. "
        "decode.py's fifo leg is not "
        "run: on a loaded machine the watchdog times out its jobs under fifo, a decoder dies "
        "with JobTimedOut and decode.py waits 600 s for it."
    )
    return result
