"""The OpenAI-compatible gateway under load: batching's throughput and the priority tiers.

One npud daemon on a slowed simulated board (as ``bench/decode.py``: a decode step of the tiny
model held at ``--step-ms``, so the engines, not the host's two CPUs, are the contended
resource) and two ``npud-llm serve`` gateways on it: one with the priority mapping (interactive
and batch tiers on their own prefill lanes and npud classes, users in turn) and one without it
(``--no-priorities``: one first-come-first-served lane). Every figure is measured by an HTTP
client streaming chat completions (server-sent events; one event per token here), in one run:

1. **one stream**: one greedy chat of ``--tokens`` tokens alone: decode tokens/s (tokens after
   the first over the time from the first to the last) and its inter-token gaps;
2. **four streams**: ``--streams`` such chats at once: aggregate decode tokens/s (every
   stream's tokens after its first, over the time from the first stream's first token to the
   last stream's last) over one stream's, and the per-stream inter-token p99 over one
   stream's p99;
3. **TTFT**: an interactive chat's time to first token (``--ttft-samples`` in a row) on the idle
   gateway, then while a batch-tier client (``service_tier: flex``, another user) keeps
   ``--flood`` long prompts (``--flood-tokens``) in flight; p99 under the flood over p99 idle,
   on the gateway with the priority mapping and on the one without.

Goals: aggregate >= 3x one stream; per-stream p99 <= 1.5x one stream's; interactive TTFT p99
under the flood <= 2x idle with the priority mapping (the run without it is the comparison).

Usage (from the repository root)::

    python -m bench.gateway [--step-ms 100] [--profile rk3588] [--tokens 48] [--streams 4]
                            [--ttft-samples 10] [--flood 3] [--flood-tokens 160] [--json out]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.daemon import running_daemon
from bench.decode import _modelled_step_s
from npud.llm.metrics import percentile
from npud.llm.tiny import make_tiny
from npud.testing.gateway import GatewayProcess, start_gateway

MODEL = "tiny"


@contextlib.contextmanager
def running_gateway(npud_socket: Path, model_dir: Path, *extra: str) -> Iterator[GatewayProcess]:
    """``npud-llm serve`` on a free loopback port until the block ends (SIGTERM then).

    Raises:
        GatewayDied: it exited or did not come up within 90 s.
    """
    tmp = Path(tempfile.mkdtemp(prefix="npud-llm-serve-"))
    try:
        gw = start_gateway(
            npud_socket,
            tmp,
            "--model",
            str(model_dir),
            "--served-model-name",
            MODEL,
            "--max-seq",
            "256",
            *extra,
            timeout_s=90.0,
            job_timeout_s=30.0,
        )
        try:
            yield gw
        finally:
            gw.stop(timeout_s=20.0)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@dataclass(slots=True)
class Stream:
    """What one streamed chat looked like from the client: when each token arrived."""

    start: float
    times: list[float] = field(default_factory=list)

    @property
    def ttft(self) -> float:
        """Seconds from the request to the first token."""
        return self.times[0] - self.start

    @property
    def gaps(self) -> list[float]:
        """Inter-token gaps after the first token."""
        return [b - a for a, b in zip(self.times, self.times[1:], strict=False)]


async def chat(
    client: httpx.AsyncClient,
    prompt: str,
    tokens: int,
    *,
    tier: str | None = None,
    user: str = "bench",
) -> Stream:
    """Stream one greedy chat completion; the arrival time of each content event."""
    body: dict[str, Any] = {
        "model": MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
        "user": user,
    }
    if tier is not None:
        body["service_tier"] = tier
    stream = Stream(time.perf_counter())
    async with client.stream("POST", "/v1/chat/completions", json=body) as reply:
        if reply.status_code != 200:
            raise RuntimeError(f"HTTP {reply.status_code}: {(await reply.aread())[:300]!r}")
        async for line in reply.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            if choices[0].get("delta", {}).get("content"):
                stream.times.append(time.perf_counter())
    return stream


def _rate(streams: list[Stream]) -> float:
    decoded = sum(len(s.times) - 1 for s in streams)
    span = max(s.times[-1] for s in streams) - min(s.times[0] for s in streams)
    return decoded / span


async def batching_legs(url: str, tokens: int, n: int) -> dict[str, Any]:
    """One stream alone, then ``n`` at once; the rates and inter-token percentiles."""
    async with httpx.AsyncClient(base_url=url, timeout=600) as client:
        await chat(client, "warm up", 4)
        one = await chat(client, "one stream alone", tokens)
        many = await asyncio.gather(
            *(chat(client, f"stream {i} of {n}", tokens, user=f"u{i}") for i in range(n))
        )
        health = (await client.get("/health")).json()
    one_p99 = percentile(one.gaps, 0.99)
    many_p99 = max(percentile(s.gaps, 0.99) for s in many)
    return {
        "one_tokens_per_s": _rate([one]),
        "many_tokens_per_s": _rate(list(many)),
        "throughput_ratio": _rate(list(many)) / _rate([one]),
        "one_itl_p50_ms": percentile(one.gaps, 0.5) * 1e3,
        "one_itl_p99_ms": one_p99 * 1e3,
        "many_itl_p50_ms": percentile([g for s in many for g in s.gaps], 0.5) * 1e3,
        "many_itl_p99_ms": many_p99 * 1e3,
        "itl_p99_ratio": many_p99 / one_p99,
        "mean_batch": health["batcher"]["decode_rows"] / max(1, health["batcher"]["decode_steps"]),
    }


async def ttft_legs(url: str, samples: int, flood: int, flood_tokens: int) -> dict[str, Any]:
    """Interactive TTFT idle, then beside a batch-tier flood of long prompts."""
    prompt = "What is the time to first token here?"
    long_prompt = "x" * flood_tokens
    async with httpx.AsyncClient(base_url=url, timeout=900) as client:
        await chat(client, "warm up", 2)
        idle = [(await chat(client, prompt, 2, user="alice")).ttft for _ in range(samples)]
        stop = asyncio.Event()

        async def flooder(i: int) -> int:
            done = 0
            while not stop.is_set():
                await chat(client, long_prompt + str(i), 1, tier="flex", user="bulk")
                done += 1
            return done

        floods = [asyncio.ensure_future(flooder(i)) for i in range(flood)]
        await asyncio.sleep(1.0)  # the flood is in full swing
        loaded = []
        for _ in range(samples):
            loaded.append((await chat(client, prompt, 2, user="alice")).ttft)
        stop.set()
        flooded = sum(await asyncio.gather(*floods))
    p99_idle, p99_loaded = percentile(idle, 0.99), percentile(loaded, 0.99)
    return {
        "idle_ttft_p50_ms": percentile(idle, 0.5) * 1e3,
        "idle_ttft_p99_ms": p99_idle * 1e3,
        "flood_ttft_p50_ms": percentile(loaded, 0.5) * 1e3,
        "flood_ttft_p99_ms": p99_loaded * 1e3,
        "ttft_p99_ratio": p99_loaded / p99_idle,
        "flood_prompts_done": flooded,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Start npud and both gateways; run every leg; the figures."""
    with tempfile.TemporaryDirectory(prefix="npud-bench-gateway-") as tmp:
        model_dir = make_tiny(Path(tmp) / "tiny")
        slowdown = args.slowdown
        if slowdown is None:
            slowdown = args.step_ms / 1e3 / _modelled_step_s(str(model_dir), args.profile)
        env = {
            "NPUD_SIM_PROFILE": args.profile,
            "NPUD_SIM_SLOWDOWN": repr(slowdown),
            "NPUD_SCHEDULER__TIME_SLICE_MS": repr(2 * args.step_ms),
            # the gateway asks for 30 s watchdogs on the slowed board: raise the ceilings to it
            "NPUD_LIMITS__LATENCY_TIMEOUT_MAX_S": "30",
        }
        out: dict[str, Any] = {"profile": args.profile, "slowdown": slowdown}
        with running_daemon("npud", env=env) as daemon:
            with running_gateway(daemon.socket, model_dir) as gw:
                out["batching"] = asyncio.run(batching_legs(gw.url, args.tokens, args.streams))
                out["priorities"] = asyncio.run(
                    ttft_legs(gw.url, args.ttft_samples, args.flood, args.flood_tokens)
                )
            with running_gateway(daemon.socket, model_dir, "--no-priorities") as gw:
                out["no_priorities"] = asyncio.run(
                    ttft_legs(gw.url, args.ttft_samples, args.flood, args.flood_tokens)
                )
    return out


def report(out: dict[str, Any]) -> str:
    """The figures as text, goals judged."""
    b, p, n = out["batching"], out["priorities"], out["no_priorities"]

    def ok(flag: bool) -> str:
        return "met" if flag else "MISSED"

    lines = [
        f"board {out['profile']} slowed x{out['slowdown']:.0f}",
        f"decode tokens/s: one stream {b['one_tokens_per_s']:.2f}, "
        f"{b['mean_batch']:.2f} rows/step; concurrent {b['many_tokens_per_s']:.2f} "
        f"-> {b['throughput_ratio']:.2f}x (goal >= 3x: {ok(b['throughput_ratio'] >= 3)})",
        f"inter-token p50/p99 ms: one {b['one_itl_p50_ms']:.0f}/{b['one_itl_p99_ms']:.0f}, "
        f"concurrent {b['many_itl_p50_ms']:.0f}/{b['many_itl_p99_ms']:.0f} (worst stream) "
        f"-> {b['itl_p99_ratio']:.2f}x (goal <= 1.5x: {ok(b['itl_p99_ratio'] <= 1.5)})",
    ]
    for name, leg in (("with priorities", p), ("without priorities", n)):
        lines.append(
            f"interactive TTFT p50/p99 ms {name}: idle {leg['idle_ttft_p50_ms']:.0f}/"
            f"{leg['idle_ttft_p99_ms']:.0f}, batch flood {leg['flood_ttft_p50_ms']:.0f}/"
            f"{leg['flood_ttft_p99_ms']:.0f} -> {leg['ttft_p99_ratio']:.2f}x "
            f"({leg['flood_prompts_done']} flood prompts done)"
        )
    lines.append(f"TTFT goal (<= 2x with priorities): {ok(p['ttft_p99_ratio'] <= 2)}")
    return "\n".join(lines)


def main() -> int:
    """``python -m bench.gateway``."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="rk3588")
    ap.add_argument("--step-ms", type=float, default=100.0)
    ap.add_argument("--slowdown", type=float)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--ttft-samples", type=int, default=10)
    ap.add_argument("--flood", type=int, default=3)
    ap.add_argument("--flood-tokens", type=int, default=160)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    out = run(args)
    print(report(out))
    if args.json:
        args.json.write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
