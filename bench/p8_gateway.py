"""P8 gateway: what the OpenAI-compatible gateway gets from batching and the priority tiers.

A wrapper of ``bench/gateway.py`` (its module docstring says how it measures): one npud on a
slowed simulated board, ``npud-llm serve`` with and without the priority mapping, an HTTP
client streaming chat completions. Every figure is a ratio to a baseline measured in the same
run on the same daemon: four streams' aggregate decode tokens/s and per-stream inter-token p99
against one stream alone; an interactive chat's TTFT p99 beside a batch-tier flood of long
prompts against its TTFT on the idle gateway, with the priority mapping (the goal) and without
it (the comparison).
"""

from __future__ import annotations

import argparse

from bench import gateway
from bench.results import BenchResult, Metric

THROUGHPUT_GOAL = 3.0
ITL_GOAL = 1.5
TTFT_GOAL = 2.0


def params(quick: bool) -> argparse.Namespace:
    """The run's sizes: ``bench/gateway.py``'s defaults, or a few tokens for ``--quick``."""
    if quick:
        return argparse.Namespace(
            profile="rk3588",
            step_ms=40.0,
            slowdown=None,
            tokens=6,
            streams=4,
            ttft_samples=2,
            flood=1,
            flood_tokens=48,
        )
    return argparse.Namespace(
        profile="rk3588",
        step_ms=100.0,
        slowdown=None,
        tokens=48,
        streams=4,
        ttft_samples=10,
        flood=3,
        flood_tokens=160,
    )


def run(quick: bool) -> BenchResult:
    """Run ``bench/gateway.py``'s legs and report them as metrics with their baselines."""
    args = params(quick)
    out = gateway.run(args)
    b, p, n = out["batching"], out["priorities"], out["no_priorities"]
    result = BenchResult("P8", "gateway: batched streams and priority tiers over HTTP")
    result.params = {k: v for k, v in vars(args).items() if v is not None}
    result.params["slowdown"] = out["slowdown"]
    result.add(
        Metric(
            f"decode tok/s, {args.streams} streams",
            b["many_tokens_per_s"],
            "tok/s",
            b["one_tokens_per_s"],
            "one stream",
            f">= {THROUGHPUT_GOAL:g}x one stream",
            b["throughput_ratio"] >= THROUGHPUT_GOAL,
        )
    )
    result.add(
        Metric(
            f"inter-token p99, worst of {args.streams}",
            b["many_itl_p99_ms"],
            "ms",
            b["one_itl_p99_ms"],
            "one stream",
            f"<= {ITL_GOAL:g}x one stream",
            b["itl_p99_ratio"] <= ITL_GOAL,
        )
    )
    result.add(
        Metric(
            "interactive TTFT p99, batch flood",
            p["flood_ttft_p99_ms"],
            "ms",
            p["idle_ttft_p99_ms"],
            "idle gateway",
            f"<= {TTFT_GOAL:g}x idle",
            p["ttft_p99_ratio"] <= TTFT_GOAL,
        )
    )
    result.add(
        Metric(
            "same, --no-priorities",
            n["flood_ttft_p99_ms"],
            "ms",
            n["idle_ttft_p99_ms"],
            "idle gateway",
        )
    )
    result.notes.append(
        f"The tiny model on a simulated {args.profile} slowed x{out['slowdown']:.0f} so a decode "
        f"step takes about {args.step_ms:g} ms (the engines, not the host's CPUs, are the "
        f"contended resource); {args.tokens} tokens per stream, {b['mean_batch']:.2f} rows per "
        f"decode step at {args.streams} streams; TTFT from {args.ttft_samples} chats idle and "
        f"{args.ttft_samples} beside {args.flood} batch-tier client(s) streaming "
        f"{args.flood_tokens}-token prompts ({p['flood_prompts_done']} flood prompts done with "
        f"the priority mapping, {n['flood_prompts_done']} without). Every chat is an HTTP "
        "stream of server-sent events from `npud-llm serve`."
    )
    return result
