"""Decode latency under a long prefill: npud's policy against FIFO.

For each scheduling policy (``npud`` and ``fifo``) the benchmark starts its own daemon on the
simulated NPU (process mode, real time) and measures decode inter-token latency in three legs:

1. one: one decoder alone;
2. unloaded: ``--decoders`` concurrent decoders (separate processes, separate contexts);
3. loaded: the same decoders while another process in its own context runs long prefills
   back to back (a ``--prefill-tokens`` prompt in 16-token THROUGHPUT chunks, all submitted
   at once, as a client would).

The figure judged is the loaded inter-token p99 over the unloaded p99: what the prefill (the
load) does to the decoders. It is a stable figure where the decoders and the prefill fit the
board's engines (lunar-lake); with more decode loops than engines (4 on rk3588) both legs' p99
lie between one and two decode steps, wherever the engines' phases put them. The one-decoder
leg is reported beside it (loaded p99 over one decoder's p99): it also carries what the
decoders do to each other, which on a board with fewer engines than decoders is arithmetic, not
policy (a step may wait for another decoder's step).

Legs and policies run in ``--rounds`` rounds whose order rotates, all daemons up at once, and
the gaps of each leg are pooled over the rounds, so no leg always sees the quietest host.

The board is ``--profile`` (default rk3588: three engines) slowed down until the tiny demo
model's decode step is modelled at ``--step-ms`` (default 100 ms; ``--slowdown F`` sets the
factor instead). On rk3588 the step is ~0.09 ms of modelled time, so the factor is ~1100, and a
100 ms step is what a ~1.7B-parameter f16 model's step costs at rk3588's 34 GB/s (10 tokens/s,
the speed of a small LLM on such a board).
Why: the simulated device computes on the host's CPUs, and at the model's own speed the
benchmark measured the 2-core host (four decoder processes, the daemon and the device's numpy
work competing for the CPU) rather than the scheduler. Slowed down, every job holds its engine
for its modelled time while the host computes the tiny model in a fraction of it, so engines
are the contended resource, as on a real NPU. ``--slowdown 1`` measures the unslowed model.
Setting the step time rather than the factor gives every board the same scene: a faster board
(lunar-lake's step is a third of rk3588's) stands for a bigger model, not a faster decode.

The daemons' time slice is set to two decode steps (``--time-slice-ms``; 0 keeps npud's 100 ms).
npud's default is meant for hardware whose decode steps take a few tens of ms; at 100 ms steps a
prefill chunk of even one token costs about a step (it reads every weight, as a step does), so a
100 ms slice refused every chunk size on strix-point once the estimates had settled, and on
rk3588 and lunar-lake it admitted only 4-token chunks, at the edge of the limit.

It also reports, as a baseline without any daemon, one decoder on the direct backend (the same
simulated board in process mode, in the client's own process).

Usage (from the repository root)::

    python -m bench.decode [--model DIR] [--decoders 4] [--tokens 64] [--prefill-tokens 240]
                           [--policies npud,fifo] [--rounds 3] [--profile rk3588]
                           [--step-ms 100 | --slowdown F] [--job-timeout 10]
                           [--leg-timeout 300]
                           [--depth 2] [--json results.json]
    python -m bench.decode --compare-depths 1,2 [--rounds 8] [--tokens 32] [--json out.json]

``--depth`` is the decode pipeline depth of every decoder and of the direct baseline (steps kept
in flight; 1 waits for each id before submitting the next step). ``--compare-depths`` runs only
the rate comparison: one direct and one daemon generator (npud policy, its own daemon) open side
by side, at each depth listed, in ``--rounds`` rounds whose order rotates, so every variant sees
the same host load; it reports decode tokens/s (ids / decode time) and inter-token p50/p99 of
each, and daemon over direct at each depth.

``--job-timeout`` is the watchdog timeout every decode step and prefill chunk asks npud for
(default 10 s). npud's per-class defaults (``--job-timeout 0``: 250 ms for a LATENCY decode
step, 400 ms for a THROUGHPUT prefill chunk) are right for a real NPU, but on a loaded 2-core
host the simulated device's computation and the daemon share the CPU with everything else, and
under ``fifo`` a decode step queued behind a prefill runs past them; the benchmark measures
latency, it does not police it.

A decoder or prefiller that fails (a job timed out or failed, the daemon went away, the process
died) does not stop the run: its error and the number of decode steps it completed are reported
(in the ``failures`` of its policy in the JSON, and on stdout), the figures come from the steps
that completed, and the run goes on to the next leg. A leg whose processes have not all
reported within ``--leg-timeout`` seconds has the rest stopped and reported as failed too
(the ``leg`` of a failure is ``one``, ``unloaded`` or ``loaded``).

The daemon is started by ``bench/daemon.py`` (``python -m npud.daemon --device sim`` on a
private socket, with ``NPUD_POLICY``); ``--npud CMD`` overrides the command. Each decoder uses a
short prompt and generates ``--tokens`` ids without stopping at EOS.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import multiprocessing as mp
import queue
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.daemon import NPUD_COMMAND, running_daemon
from bench.device_speed import DRAM_ONLY_ENV, SpeedCheck, check_same_speed
from npud.llm.metrics import percentile
from npud.llm.model import load_model
from npud.llm.tiny import ensure_default_model

DECODE_PROMPT = [256, *b"npud decode "]
JOB_TIMEOUT_S = 10.0
"""Default per-step watchdog: generous, since on a shared host latency is measured, not policed."""
LEG_TIMEOUT_S = 300.0
"""Default time a leg's processes get to report before the rest are stopped."""
PREFILL_START_S = 120.0
PROFILE = "rk3588"
STEP_MS = 100.0
DEFAULT_SLICE_MS = 100.0
"""npud's own time slice (``SchedulerPolicy.time_slice_s``), kept when two steps are shorter."""
ROUNDS = 3
"""How long the prefiller gets to load the model and start its first prompt."""


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _decoder(
    model_dir: str,
    socket: str,
    tokens: int,
    job_timeout_s: float,
    go: Any,
    out: Any,
    name: str,
    depth: int = 2,
) -> None:
    """One decoder process: wait for ``go``, generate, send back its gaps (or its failure).

    Always reports once on ``out`` as ``(name, report)``: ``gaps``, ``waits`` (in npud's queue),
    ``runs`` (on the device) and ``modelled`` (the board's modelled time) of the decode steps
    that completed, ``steps`` (how many did), and ``error`` (``None`` on success).
    """
    from npud.llm.daemon import DaemonBackend
    from npud.llm.generator import Generator

    times: list[float] = []
    waits: list[float] = []
    runs: list[float] = []
    modelled: list[float] = []
    try:
        model = load_model(model_dir)
        backend = DaemonBackend(
            socket_path=socket, label="bench/decode", job_timeout_s=job_timeout_s
        )
        with Generator(model, backend, depth=depth) as gen:
            gen.generate(DECODE_PROMPT, 4, stop_at_eos=False)  # warm: weights, stream, caches
            go.wait()
            backend.job_times.clear()
            try:
                # on_token stamps each id as it is known, so a failure part way keeps the gaps
                # of the steps before it (the same clock Generation.stats uses)
                gen.generate(
                    DECODE_PROMPT,
                    tokens,
                    stop_at_eos=False,
                    on_token=lambda _id: times.append(backend.now()),
                )
            finally:
                steps = [t for t in backend.job_times if t.kind.value == "decode"]
                waits = [t.queue_wait_s for t in steps]
                runs = [t.run_s for t in steps]
                modelled = [t.modelled_s for t in steps]
    except Exception as exc:
        out.put((name, _report(times, waits, runs, modelled, _error(exc))))
        return
    out.put((name, _report(times, waits, runs, modelled, None)))


def _report(
    times: list[float],
    waits: list[float],
    runs: list[float],
    modelled: list[float],
    error: str | None,
) -> dict[str, Any]:
    return {
        "gaps": [b - a for a, b in itertools.pairwise(times)],
        "waits": waits,
        "runs": runs,
        "modelled": modelled,
        "steps": max(0, len(times) - 1),  # the first token comes from the prefill
        "error": error,
    }


def _prefiller(
    model_dir: str,
    socket: str,
    n_prompt: int,
    job_timeout_s: float,
    started: Any,
    stop: Any,
    out: Any,
    name: str,
) -> None:
    """The long-prefill process: back-to-back prefills until ``stop``; reports throughput.

    Always reports once on ``out`` as ``(name, report)`` with the prompt tokens prefilled,
    ``steps`` (the prompts prefilled), the seconds taken, npud's queue wait and device run time
    of its last chunks, and ``error`` (``None`` on success).
    """
    done_tokens = 0
    chunks: list[Any] = []
    t0 = time.monotonic()
    try:
        from npud.llm.daemon import DaemonBackend
        from npud.llm.generator import Generator

        model = load_model(model_dir)
        prompt = [256] + [(7 * i) % 256 for i in range(n_prompt - 1)]
        backend = DaemonBackend(
            socket_path=socket, label="bench/prefill", job_timeout_s=job_timeout_s
        )
        with Generator(model, backend) as gen:
            t0 = time.monotonic()
            started.set()
            try:
                while not stop.is_set():
                    gen.generate(prompt, 1, stop_at_eos=False)
                    done_tokens += n_prompt
            finally:
                chunks = [t for t in backend.job_times if t.kind.value == "prefill"]
    except Exception as exc:
        error: str | None = _error(exc)
    else:
        error = None
    report = {
        "tokens": done_tokens,
        "seconds": time.monotonic() - t0,
        "chunk_waits": [t.queue_wait_s for t in chunks],
        "chunk_runs": [t.run_s for t in chunks],
        "error": error,
    }
    out.put((name, {**report, "steps": done_tokens // n_prompt}))


@dataclass(slots=True, eq=False)
class _Leg:
    """The processes of one leg and the reports they sent (an identity object)."""

    name: str
    out: Any
    procs: dict[str, Any]
    reports: dict[str, dict[str, Any]]

    def collect(self, names: list[str], deadline: float) -> None:
        """Wait until each of ``names`` has reported, died or run out of time.

        Why poll: a child that dies without reporting (killed, an import error, a crash in
        the interpreter) would leave a blocking ``get`` waiting forever. So the queue is read
        with a short timeout and, between reads, a child that has exited without a report is
        recorded as failed with its exit code; past ``deadline`` the ones left are terminated
        and recorded as failed. A child puts its report before it exits, so the queue is
        drained once more before an exit is taken as a silent death.
        """
        pending = [n for n in names if n not in self.reports]
        while pending:
            try:
                name, report = self.out.get(timeout=0.5)
                self.reports[name] = report
            except queue.Empty:
                for n in pending:
                    proc = self.procs[n]
                    if proc.exitcode is not None and n not in self.reports:
                        self._drain()
                        if n not in self.reports:
                            self.reports[n] = _dead(
                                f"process exited with {proc.exitcode} without reporting"
                            )
                if time.monotonic() > deadline:
                    for n in pending:
                        if n not in self.reports:
                            self.procs[n].terminate()
                            self.reports[n] = _dead("no report before the leg's timeout")
            pending = [n for n in names if n not in self.reports]

    def _drain(self) -> None:
        while True:
            try:
                name, report = self.out.get_nowait()
            except queue.Empty:
                return
            self.reports[name] = report

    def join(self) -> None:
        """Wait for every process of the leg to exit (terminated after 30 s)."""
        for proc in self.procs.values():
            proc.join(timeout=30)
            if proc.exitcode is None:
                proc.terminate()
                proc.join(timeout=10)

    def failures(self) -> list[dict[str, Any]]:
        """The failed processes' errors and completed steps (decode steps; prompts for the
        prefiller), in report order."""
        return [
            {"leg": self.name, "role": n, "error": r["error"], "steps": r.get("steps", 0)}
            for n, r in self.reports.items()
            if r.get("error")
        ]


def _dead(error: str) -> dict[str, Any]:
    return {
        "gaps": [],
        "waits": [],
        "runs": [],
        "modelled": [],
        "steps": 0,
        "tokens": 0,
        "seconds": 0.0,
        "chunk_waits": [],
        "chunk_runs": [],
        "error": error,
    }


def _modelled_step_s(model_dir: str, profile: str) -> float:
    """The board's modelled time of one decode step of the model, unslowed.

    Measured, not computed: a short greedy decode on the direct backend in virtual mode, whose
    clock advances by exactly the modelled time of each job; the median inter-token gap is the
    step's modelled time.
    """
    from npud.llm.direct import DirectBackend
    from npud.llm.generator import Generator

    model = load_model(model_dir)
    with Generator(model, DirectBackend.on_sim(mode="virtual", profile=profile)) as gen:
        result = gen.generate(DECODE_PROMPT, 6, stop_at_eos=False)
    return percentile(list(result.stats.inter_token_s), 0.5)


def _device_env(args: argparse.Namespace) -> dict[str, str]:
    """The daemon's simulated board (profile, slowdown), its buffers in DRAM as the direct
    baseline's and the calibration's are (see ``bench/device_speed.py``), and its time slice,
    if one is set."""
    env = {
        "NPUD_SIM_PROFILE": args.profile,
        "NPUD_SIM_SLOWDOWN": repr(args.slowdown),
        **DRAM_ONLY_ENV,
    }
    if args.time_slice_ms:
        env["NPUD_SCHEDULER__TIME_SLICE_MS"] = repr(args.time_slice_ms)
    return env


def _direct_baseline(
    model_dir: str, tokens: int, depth: int, profile: str, slowdown: float
) -> tuple[list[float], list[float]]:
    """One decoder on the direct backend: its inter-token gaps and its decode steps' modelled
    times (s)."""
    from npud.llm.direct import DirectBackend
    from npud.llm.generator import Generator

    model = load_model(model_dir)
    backend = DirectBackend.on_sim(mode="process", profile=profile, slowdown=slowdown)
    with Generator(model, backend, depth=depth) as gen:
        gen.generate(DECODE_PROMPT, 4, stop_at_eos=False)
        backend.job_times.clear()
        result = gen.generate(DECODE_PROMPT, tokens, stop_at_eos=False)
        modelled = [t.modelled_s for t in backend.job_times if t.kind.value == "decode"]
    return list(result.stats.inter_token_s), modelled


def _ms(samples: list[float], q: float) -> float | None:
    """The ``q`` percentile of ``samples`` (seconds) in ms; ``None`` without samples."""
    return percentile(samples, q) * 1e3 if samples else None


def _processes() -> Any:
    """The multiprocessing context the decoders and the prefiller start from.

    Why a fork server with the LLM modules preloaded: every leg starts fresh processes, and a
    fresh interpreter spends about a second of CPU importing numpy, grpc and npud.llm - on a
    loaded 2-core host that is most of a short run. The server imports them once and forks each
    child from that clean state; it never opens a channel or a device, so unlike forking this
    process (which has run the direct baseline) no thread or socket is inherited.
    """
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(["npud.llm.daemon", "npud.llm.generator", "npud.llm.model"])
    return ctx


def _start_leg(
    ctx: Any, leg: str, socket: str, args: argparse.Namespace, model_dir: str
) -> tuple[_Leg, list[str]]:
    """Start the processes of ``leg`` (``one``, ``unloaded`` or ``loaded``), let them run and
    collect their reports; returns the leg and its decoders' names."""
    out = ctx.Queue()
    go, started, stop = ctx.Event(), ctx.Event(), ctx.Event()
    names = ["decoder"] if leg == "one" else [f"decoder {i + 1}" for i in range(args.decoders)]
    procs: dict[str, Any] = {}
    if leg == "loaded":
        procs["prefiller"] = ctx.Process(
            target=_prefiller,
            args=(
                model_dir,
                socket,
                args.prefill_tokens,
                args.job_timeout,
                started,
                stop,
                out,
                "prefiller",
            ),
        )
    for n in names:
        procs[n] = ctx.Process(
            target=_decoder,
            args=(model_dir, socket, args.tokens, args.job_timeout, go, out, n, args.depth),
        )
    run = _Leg(leg, out, procs, {})
    deadline = time.monotonic() + args.leg_timeout
    for proc in procs.values():
        proc.start()
    if leg == "loaded":
        # the decoders start once the prefiller runs - or has given up (it reports then)
        start_by = time.monotonic() + PREFILL_START_S
        while not started.wait(0.5) and procs["prefiller"].exitcode is None:
            if time.monotonic() > start_by:
                break
        if started.is_set():
            time.sleep(0.5)  # let the first long prefill's chunks queue up
    go.set()
    run.collect(names, deadline)
    if leg == "loaded":
        stop.set()
        run.collect(["prefiller"], max(deadline, time.monotonic() + 60.0))
    run.join()
    return run, names


@dataclass(slots=True, eq=False)
class _Pooled:
    """What the runs of one leg under one policy measured, pooled over the rounds."""

    gaps: list[float] = field(default_factory=list)
    waits: list[float] = field(default_factory=list)
    runs: list[float] = field(default_factory=list)
    modelled: list[float] = field(default_factory=list)  # the decode steps' modelled times
    failures: list[dict[str, Any]] = field(default_factory=list)
    prefill_tokens: int = 0
    prefill_seconds: float = 0.0
    chunk_waits: list[float] = field(default_factory=list)
    chunk_runs: list[float] = field(default_factory=list)

    def add(self, run: _Leg, names: list[str]) -> None:
        """Pool one run of the leg."""
        for n in names:
            self.gaps += run.reports[n]["gaps"]
            self.waits += run.reports[n]["waits"]
            self.runs += run.reports[n]["runs"]
            self.modelled += run.reports[n].get("modelled", [])
        self.failures += run.failures()
        prefill = run.reports.get("prefiller")
        if prefill is not None:
            self.prefill_tokens += prefill["tokens"]
            self.prefill_seconds += prefill["seconds"]
            self.chunk_waits += prefill["chunk_waits"]
            self.chunk_runs += prefill["chunk_runs"]


LEGS = ("one", "unloaded", "loaded")
"""The legs of a round: one decoder alone; the decoders without the prefill; both together."""


def _rotated(items: Sequence[str], r: int) -> list[str]:
    k = r % len(items)
    return [*items[k:], *items[:k]]


def _run_rounds(
    args: argparse.Namespace, model_dir: str, policies: list[str]
) -> dict[str, dict[str, _Pooled]]:
    """Every leg under every policy, ``args.rounds`` times over, in rotating order.

    Why rounds that rotate, on daemons that all stay up: on a shared host the load moves by
    more than the difference being measured between two legs minutes apart. Each policy has
    its own daemon, started once; every round runs each policy's legs, the policies' and the
    legs' order shifted by one each round, so every (policy, leg) sees the same host in
    aggregate and none always goes first. The gaps of a leg are pooled over the rounds.
    """
    ctx = _processes()
    pooled = {p: {leg: _Pooled() for leg in LEGS} for p in policies}
    with contextlib.ExitStack() as stack:
        daemons = {
            p: stack.enter_context(running_daemon(p, command=args.npud_cmd, env=_device_env(args)))
            for p in policies
        }
        for r in range(args.rounds):
            for policy in _rotated(policies, r):
                for leg in _rotated(LEGS, r):
                    run, names = _start_leg(ctx, leg, str(daemons[policy].socket), args, model_dir)
                    pooled[policy][leg].add(run, names)
                    daemons[policy].check()
                    print(
                        f"  round {r + 1}/{args.rounds} {policy:<5} {leg:<8} "
                        f"p99 {_fmt(_ms(_gaps(run, names), 0.99), 0)}",
                        flush=True,
                    )
    return pooled


def _gaps(run: _Leg, names: list[str]) -> list[float]:
    return [g for n in names for g in run.reports[n]["gaps"]]


def _policy_figures(policy: str, legs: dict[str, _Pooled]) -> dict[str, Any]:
    """One policy's figures (``None`` where a leg had no samples)."""
    one, unloaded, loaded = legs["one"], legs["unloaded"], legs["loaded"]
    failures = one.failures + unloaded.failures + loaded.failures
    p99_loaded = _ms(loaded.gaps, 0.99)
    p99_unloaded = _ms(unloaded.gaps, 0.99)
    p99_one = _ms(one.gaps, 0.99)
    return {
        "policy": policy,
        "complete": not failures,
        "failures": failures,
        "one_p50_ms": _ms(one.gaps, 0.5),
        "one_p99_ms": p99_one,
        "unloaded_p50_ms": _ms(unloaded.gaps, 0.5),
        "unloaded_p99_ms": p99_unloaded,
        "loaded_p50_ms": _ms(loaded.gaps, 0.5),
        "loaded_p99_ms": p99_loaded,
        "loaded_max_ms": max(loaded.gaps) * 1e3 if loaded.gaps else None,
        "unloaded_wait_p99_ms": _ms(unloaded.waits, 0.99),
        "loaded_wait_p50_ms": _ms(loaded.waits, 0.5),
        "loaded_wait_p99_ms": _ms(loaded.waits, 0.99),
        "loaded_run_p50_ms": _ms(loaded.runs, 0.5),
        "loaded_run_p99_ms": _ms(loaded.runs, 0.99),
        "prefill_chunk_wait_p50_ms": _ms(loaded.chunk_waits, 0.5),
        "prefill_chunk_run_p50_ms": _ms(loaded.chunk_runs, 0.5),
        "prefill_chunk_run_p99_ms": _ms(loaded.chunk_runs, 0.99),
        "p99_ratio": p99_loaded / p99_unloaded if p99_loaded and p99_unloaded else None,
        "p99_ratio_vs_one": p99_loaded / p99_one if p99_loaded and p99_one else None,
        "samples": len(loaded.gaps),
        "prefill_tokens_per_s": (
            loaded.prefill_tokens / loaded.prefill_seconds if loaded.prefill_seconds > 0 else 0.0
        ),
        "one_gaps_ms": [g * 1e3 for g in one.gaps],
        "unloaded_gaps_ms": [g * 1e3 for g in unloaded.gaps],
        "loaded_gaps_ms": [g * 1e3 for g in loaded.gaps],
    }


def compare_depths(
    model_dir: str, socket: str, depths: list[int], rounds: int, tokens: int, job_timeout_s: float
) -> dict[str, Any]:
    """Decode rates of direct and daemon generators at each depth, in rotating rounds.

    Why rounds that rotate: on a shared host the load moves by more than the difference being
    measured between two runs minutes apart. Every variant (backend x depth) is open at once
    and runs one ``tokens``-id generation per round, the variants' order shifted by one each
    round, so each sees the same load in aggregate and none always goes first.

    Returns per variant (``direct/d1``, ``daemon/d2``, ...) the inter-token gaps in ms, the
    decode rate (gaps / their sum), p50/p99, the median modelled device step and, for the
    daemon, npud's median run time of a step (what the gap would be without any per-step
    overhead); ``ratio/dN``, daemon rate over direct; and ``device_speed``, whether every
    variant's steps ran at the same modelled device speed (:mod:`bench.device_speed`).
    """
    from npud.llm.daemon import DaemonBackend
    from npud.llm.direct import DirectBackend
    from npud.llm.generator import Generator

    model = load_model(model_dir)
    gens: dict[str, Any] = {}
    try:
        for depth in depths:
            gens[f"direct/d{depth}"] = Generator(
                model, DirectBackend.on_sim(mode="process"), depth=depth
            )
            gens[f"daemon/d{depth}"] = Generator(
                model,
                DaemonBackend(
                    socket_path=socket, label=f"bench/depth{depth}", job_timeout_s=job_timeout_s
                ),
                depth=depth,
            )
        for gen in gens.values():
            gen.generate(DECODE_PROMPT, 4, stop_at_eos=False)  # warm: weights, stream, caches
        names = list(gens)
        gaps: dict[str, list[float]] = {n: [] for n in names}
        runs: dict[str, list[float]] = {n: [] for n in names}  # npud's run time per step
        modelled: dict[str, list[float]] = {n: [] for n in names}  # the board's, per step
        for r in range(rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                backend = gens[name].backend
                backend.job_times.clear()
                res = gens[name].generate(DECODE_PROMPT, tokens, stop_at_eos=False)
                gaps[name] += list(res.stats.inter_token_s)
                steps = [t for t in backend.job_times if t.kind.value == "decode"]
                modelled[name] += [t.modelled_s for t in steps]
                if isinstance(backend, DaemonBackend):
                    runs[name] += [t.run_s for t in steps]
    finally:
        for gen in gens.values():
            gen.close()
    out: dict[str, Any] = {}
    for name, g in gaps.items():
        out[name] = {
            "tokens_per_s": len(g) / sum(g),
            "p50_ms": percentile(g, 0.5) * 1e3,
            "p99_ms": percentile(g, 0.99) * 1e3,
            "gaps_ms": [x * 1e3 for x in g],
            # npud's own run time of a decode step (device dispatch to completion), daemon only
            "run_p50_ms": percentile(runs[name], 0.5) * 1e3 if runs[name] else None,
            "modelled_p50_ms": percentile(modelled[name], 0.5) * 1e3 if modelled[name] else None,
        }
    for depth in depths:
        d, n = out[f"direct/d{depth}"], out[f"daemon/d{depth}"]
        out[f"ratio/d{depth}"] = n["tokens_per_s"] / d["tokens_per_s"]
    out["device_speed"] = check_same_speed(modelled).as_dict()
    return out


def _depths_main(args: argparse.Namespace, model_dir: str) -> int:
    depths = [int(d) for d in args.compare_depths.split(",")]
    with running_daemon("npud", command=args.npud_cmd, env=dict(DRAM_ONLY_ENV)) as daemon:
        got = compare_depths(
            model_dir, str(daemon.socket), depths, args.rounds, args.tokens, args.job_timeout
        )
        daemon.check()
    print(
        f"{'variant':<10} {'tok/s':>8} {'p50':>9} {'p99':>9} {'npud run p50':>13}   daemon / direct"
    )
    for depth in depths:
        for backend in ("direct", "daemon"):
            r = got[f"{backend}/d{depth}"]
            ratio = f"{got[f'ratio/d{depth}'] * 100:.1f} %" if backend == "daemon" else ""
            print(
                f"{backend + '/d' + str(depth):<10} {r['tokens_per_s']:>8.1f} "
                f"{_fmt(r['p50_ms'], 7)} {_fmt(r['p99_ms'], 7)} {_fmt(r['run_p50_ms'], 11)}   "
                f"{ratio}",
                flush=True,
            )
    print(got["device_speed"]["text"], flush=True)
    if args.json:
        results = {
            "model": model_dir,
            "rounds": args.rounds,
            "tokens": args.tokens,
            "depths": depths,
            "variants": got,
        }
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def _fmt(value: float | None, width: int, unit: str = "ms") -> str:
    if value is None:
        return f"{'-':>{width + len(unit)}}"
    return f"{value:>{width}.2f}{unit}"


def main() -> int:
    """Run the legs of every policy; 0 when the run finished (failed processes included)."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="model directory (default: the tiny model)")
    parser.add_argument("--decoders", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prefill-tokens", type=int, default=240)
    parser.add_argument("--policies", default="npud,fifo")
    parser.add_argument(
        "--job-timeout",
        type=float,
        default=JOB_TIMEOUT_S,
        help=f"per-step watchdog asked of npud, s (default {JOB_TIMEOUT_S:g}; 0: npud's "
        "per-class default, 0.25 s decode / 0.4 s prefill, too short for a loaded host)",
    )
    parser.add_argument(
        "--leg-timeout",
        type=float,
        default=LEG_TIMEOUT_S,
        help=f"s a leg's processes get to report before the rest are stopped "
        f"(default {LEG_TIMEOUT_S:g})",
    )
    parser.add_argument("--npud", default=None, help="the daemon command (default: this python)")
    parser.add_argument("--skip-direct", action="store_true")
    parser.add_argument(
        "--depth", type=int, default=2, help="decode steps in flight per decoder (default 2)"
    )
    parser.add_argument(
        "--compare-depths",
        metavar="D1,D2",
        help="only compare direct and daemon decode rates at these depths (rotating rounds)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help=f"rounds of legs (default {ROUNDS}), or of --compare-depths (default 8)",
    )
    parser.add_argument(
        "--profile", default=PROFILE, help=f"simulated board profile (default {PROFILE})"
    )
    parser.add_argument(
        "--step-ms",
        type=float,
        default=STEP_MS,
        help=f"slow the board down until a decode step is modelled at this many ms "
        f"(default {STEP_MS:g})",
    )
    parser.add_argument(
        "--slowdown",
        type=float,
        default=None,
        help="run the simulated board this many times slower (overrides --step-ms; 1: as is)",
    )
    parser.add_argument(
        "--time-slice-ms",
        type=float,
        default=None,
        help="npud's time slice for the daemons, ms (default: 2 decode steps when that is "
        "over npud's own 100 ms; 0: npud's own)",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.job_timeout < 0:
        parser.error("--job-timeout must be >= 0 (0: npud's per-class default)")
    if args.depth < 1:
        parser.error("--depth must be >= 1")
    if args.rounds is not None and args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if args.decoders < 1 or args.tokens < 2:
        parser.error("--decoders must be >= 1 and --tokens >= 2")
    args.rounds = args.rounds or (8 if args.compare_depths else ROUNDS)
    if args.slowdown is not None and not args.slowdown > 0:
        parser.error("--slowdown must be > 0")
    if not args.step_ms > 0:
        parser.error("--step-ms must be > 0")
    args.npud_cmd = shlex.split(args.npud) if args.npud else NPUD_COMMAND
    model_dir = str(args.model or ensure_default_model())
    if args.compare_depths:
        return _depths_main(args, model_dir)
    modelled_step = _modelled_step_s(model_dir, args.profile)
    if args.slowdown is None:
        args.slowdown = round(args.step_ms / 1e3 / modelled_step, 1)
    if args.time_slice_ms is None:  # two steps, never below npud's own default (0: that)
        two_steps_ms = 2 * modelled_step * args.slowdown * 1e3
        args.time_slice_ms = two_steps_ms if two_steps_ms > DEFAULT_SLICE_MS else 0.0

    results: dict[str, Any] = {
        "model": model_dir,
        "decoders": args.decoders,
        "tokens": args.tokens,
        "prefill_tokens": args.prefill_tokens,
        "job_timeout_s": args.job_timeout,
        "depth": args.depth,
        "rounds": args.rounds,
        "profile": args.profile,
        "slowdown": args.slowdown,
        "time_slice_ms": args.time_slice_ms or None,
        "modelled_step_ms": modelled_step * 1e3,
        "slowed_step_ms": modelled_step * args.slowdown * 1e3,
        "policies": [],
    }
    direct_modelled: list[float] = []
    if not args.skip_direct:
        gaps, direct_modelled = _direct_baseline(
            model_dir, args.tokens, args.depth, args.profile, args.slowdown
        )
        results["direct"] = {
            "p50_ms": percentile(gaps, 0.5) * 1e3,
            "p99_ms": percentile(gaps, 0.99) * 1e3,
        }
        print(
            f"direct (no daemon, sim process mode): inter-token p50 "
            f"{results['direct']['p50_ms']:.2f} ms  p99 {results['direct']['p99_ms']:.2f} ms"
        )
    policies = args.policies.split(",")
    print(
        f"{args.rounds} round(s); each: per policy, one decoder alone, {args.decoders} decoders "
        f"alone (unloaded), {args.decoders} decoders + prefill (loaded); board {args.profile} "
        f"slowed down x{args.slowdown:g} (a decode step: {modelled_step * 1e3:.3f} ms modelled, "
        f"{modelled_step * args.slowdown * 1e3:.1f} ms slowed); npud time slice "
        f"{f'{args.time_slice_ms:.0f} ms' if args.time_slice_ms else 'its default'}",
        flush=True,
    )
    pooled = _run_rounds(args, model_dir, policies)
    print(
        f"{'policy':<6} {'one p99':>9} {'unloaded p50':>12} {'p99':>8} {'loaded p50':>11} "
        f"{'p99':>8} {'max':>8} {'p99 x':>6} {'prefill tok/s':>14}"
    )
    for policy in policies:
        r = _policy_figures(policy, pooled[policy])
        results["policies"].append(r)
        ratio = "-" if r["p99_ratio"] is None else f"{r['p99_ratio']:.2f}"
        print(
            f"{policy:<6} {_fmt(r['one_p99_ms'], 7)} {_fmt(r['unloaded_p50_ms'], 10)} "
            f"{_fmt(r['unloaded_p99_ms'], 6)} {_fmt(r['loaded_p50_ms'], 9)} "
            f"{_fmt(r['loaded_p99_ms'], 6)} {_fmt(r['loaded_max_ms'], 6)} {ratio:>6} "
            f"{r['prefill_tokens_per_s']:>14.1f}",
            flush=True,
        )
        vs = r["p99_ratio_vs_one"]
        print(
            f"  {policy} loaded p99 / one decoder's p99 = {'-' if vs is None else f'{vs:.2f}'}; "
            f"decode queue wait in npud p50 {_fmt(r['loaded_wait_p50_ms'], 0)} "
            f"p99 {_fmt(r['loaded_wait_p99_ms'], 0)} "
            f"(unloaded p99 {_fmt(r['unloaded_wait_p99_ms'], 0)})"
        )
        print(
            f"  {policy} loaded, on the device: decode step p50 {_fmt(r['loaded_run_p50_ms'], 0)} "
            f"p99 {_fmt(r['loaded_run_p99_ms'], 0)}; prefill chunk p50 "
            f"{_fmt(r['prefill_chunk_run_p50_ms'], 0)} "
            f"p99 {_fmt(r['prefill_chunk_run_p99_ms'], 0)} "
            f"(its npud queue wait p50 {_fmt(r['prefill_chunk_wait_p50_ms'], 0)})",
            flush=True,
        )
        for f in r["failures"]:
            print(
                f"  {policy} {f['leg']} {f['role']} FAILED after {f['steps']} steps: {f['error']}",
                flush=True,
            )
    speed = _speed_check(
        direct_modelled if not args.skip_direct else None,
        pooled,
        modelled_step * args.slowdown,
    )
    results["device_speed"] = speed.as_dict()
    print(f"device speed of every leg: {speed.describe()}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


def _speed_check(
    direct: list[float] | None, pooled: dict[str, dict[str, _Pooled]], calibrated_s: float
) -> SpeedCheck:
    """Whether the direct baseline and every (policy, leg) ran their decode steps at the device
    speed the run calibrated the board to (``calibrated_s`` per step)."""
    steps: dict[str, list[float]] = {} if direct is None else {"direct": direct}
    for policy, legs in pooled.items():
        for leg, got in legs.items():
            steps[f"{policy}/{leg}"] = got.modelled
    return check_same_speed(steps, reference_s=calibrated_s)


if __name__ == "__main__":
    sys.exit(main())
