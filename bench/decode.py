"""Decode latency under a long prefill: npud's policy against FIFO (issue 9, "must show" 3).

For each scheduling policy (``npud`` and ``fifo``) the benchmark starts its own daemon on the
simulated NPU (process mode, real time) and measures decode inter-token latency:

1. unloaded: one decoder alone;
2. loaded: ``--decoders`` concurrent decoders (separate processes, separate contexts) while
   another process in its own context runs long prefills back to back (a ``--prefill-tokens``
   prompt in 16-token THROUGHPUT chunks, all submitted at once, as a client would).

It reports each policy's decode inter-token p50/p99, loaded p99 over unloaded p99, and the
prefill throughput achieved meanwhile; plus, as a baseline without any daemon, one decoder on
the direct backend (the same simulated device in process mode, in the client's own process).

Usage::

    python bench/decode.py [--model DIR] [--decoders 4] [--tokens 64] [--prefill-tokens 240]
                           [--policies npud,fifo] [--json results.json]

The daemon is started as ``python -m npud.daemon.main --socket S --device sim`` with
``NPUD_POLICY`` and a private state directory; ``--npud CMD`` overrides the command. Each
decoder uses a short prompt and generates ``--tokens`` ids without stopping at EOS.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from npud.llm.metrics import percentile
from npud.llm.model import load_model
from npud.llm.tiny import ensure_default_model

DECODE_PROMPT = [256, *b"npud decode "]
JOB_TIMEOUT_S = (
    10.0  # a shared 2-core host stalls the device process; latency is measured, not policed
)


def _decoder(model_dir: str, socket: str, tokens: int, go: Any, out: Any) -> None:
    """One decoder process: wait for ``go``, generate, send back the inter-token gaps."""
    from npud.llm.daemon import DaemonBackend
    from npud.llm.generator import Generator

    model = load_model(model_dir)
    backend = DaemonBackend(socket_path=socket, label="bench/decode", job_timeout_s=JOB_TIMEOUT_S)
    with Generator(model, backend) as gen:
        gen.generate(DECODE_PROMPT, 4, stop_at_eos=False)  # warm: weights, stream, caches
        go.wait()
        backend.job_times.clear()
        result = gen.generate(DECODE_PROMPT, tokens, stop_at_eos=False)
        waits = [t.queue_wait_s for t in backend.job_times if t.kind.value == "decode"]
    out.put(("decode", (list(result.stats.inter_token_s), waits)))


def _prefiller(
    model_dir: str, socket: str, n_prompt: int, started: Any, stop: Any, out: Any
) -> None:
    """The long-prefill process: back-to-back prefills until ``stop``; reports throughput."""
    from npud.llm.daemon import DaemonBackend
    from npud.llm.generator import Generator

    model = load_model(model_dir)
    prompt = [256] + [(7 * i) % 256 for i in range(n_prompt - 1)]
    done_tokens = 0
    backend = DaemonBackend(socket_path=socket, label="bench/prefill", job_timeout_s=JOB_TIMEOUT_S)
    with Generator(model, backend) as gen:
        t0 = time.monotonic()
        started.set()
        while not stop.is_set():
            gen.generate(prompt, 1, stop_at_eos=False)
            done_tokens += n_prompt
        elapsed = time.monotonic() - t0
    out.put(("prefill", [done_tokens, elapsed]))


def _direct_baseline(model_dir: str, tokens: int) -> list[float]:
    from npud.llm.direct import DirectBackend
    from npud.llm.generator import Generator

    model = load_model(model_dir)
    with Generator(model, DirectBackend.on_sim(mode="process")) as gen:
        gen.generate(DECODE_PROMPT, 4, stop_at_eos=False)
        result = gen.generate(DECODE_PROMPT, tokens, stop_at_eos=False)
    return list(result.stats.inter_token_s)


@contextlib.contextmanager
def _daemon(policy: str, npud_cmd: list[str]) -> Iterator[str]:
    from npud.client import connect

    tmp = Path(tempfile.mkdtemp(prefix=f"npud-bench-{policy}-"))
    socket = tmp / "npud.sock"
    env = dict(os.environ, NPUD_POLICY=policy, NPUD_STATE_DIR=str(tmp / "state"))
    log = (tmp / "npud.log").open("w")
    proc = subprocess.Popen(
        [*npud_cmd, "--socket", str(socket), "--device", "sim"],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 30.0
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"npud exited with {proc.returncode}; see {tmp / 'npud.log'}")
            if socket.exists():
                try:
                    with connect(socket, session=False) as client:
                        client.version()
                    break
                except Exception:
                    pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"npud did not come up in 30 s; see {tmp / 'npud.log'}")
            time.sleep(0.1)
        yield str(socket)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


def _run_policy(policy: str, args: argparse.Namespace, model_dir: str) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    with _daemon(policy, args.npud_cmd) as socket:
        # Unloaded: one decoder alone.
        out = ctx.Queue()
        go = ctx.Event()
        go.set()
        proc = ctx.Process(target=_decoder, args=(model_dir, socket, args.tokens, go, out))
        proc.start()
        _, (unloaded, unloaded_waits) = out.get(timeout=600)
        proc.join()

        # Loaded: N decoders while another context runs long prefills back to back.
        out = ctx.Queue()
        go, started, stop = ctx.Event(), ctx.Event(), ctx.Event()
        prefill = ctx.Process(
            target=_prefiller, args=(model_dir, socket, args.prefill_tokens, started, stop, out)
        )
        decoders = [
            ctx.Process(target=_decoder, args=(model_dir, socket, args.tokens, go, out))
            for _ in range(args.decoders)
        ]
        prefill.start()
        for proc in decoders:
            proc.start()
        started.wait(timeout=120)
        time.sleep(0.5)  # let the first long prefill's chunks queue up
        go.set()
        loaded: list[float] = []
        loaded_waits: list[float] = []
        for _ in decoders:
            _, (gaps, waits) = out.get(timeout=600)
            loaded.extend(gaps)
            loaded_waits.extend(waits)
        stop.set()
        _, (prefill_tokens, prefill_s) = out.get(timeout=600)
        for proc in [*decoders, prefill]:
            proc.join()
    return {
        "policy": policy,
        "unloaded_p50_ms": percentile(unloaded, 0.5) * 1e3,
        "unloaded_p99_ms": percentile(unloaded, 0.99) * 1e3,
        "loaded_p50_ms": percentile(loaded, 0.5) * 1e3,
        "loaded_p99_ms": percentile(loaded, 0.99) * 1e3,
        "loaded_max_ms": max(loaded) * 1e3,
        "unloaded_wait_p99_ms": percentile(unloaded_waits, 0.99) * 1e3,
        "loaded_wait_p50_ms": percentile(loaded_waits, 0.5) * 1e3,
        "loaded_wait_p99_ms": percentile(loaded_waits, 0.99) * 1e3,
        "p99_ratio": percentile(loaded, 0.99) / percentile(unloaded, 0.99),
        "samples": len(loaded),
        "prefill_tokens_per_s": prefill_tokens / prefill_s if prefill_s > 0 else 0.0,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", help="model directory (default: the tiny model)")
    parser.add_argument("--decoders", type=int, default=4)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--prefill-tokens", type=int, default=240)
    parser.add_argument("--policies", default="npud,fifo")
    parser.add_argument("--npud", default=None, help="the daemon command (default: npud)")
    parser.add_argument("--skip-direct", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if args.npud:
        args.npud_cmd = shlex.split(args.npud)
    else:
        args.npud_cmd = [sys.executable, "-m", "npud.daemon.main"]
    model_dir = str(args.model or ensure_default_model())

    results: dict[str, Any] = {
        "model": model_dir,
        "decoders": args.decoders,
        "tokens": args.tokens,
        "prefill_tokens": args.prefill_tokens,
        "policies": [],
    }
    if not args.skip_direct:
        gaps = _direct_baseline(model_dir, args.tokens)
        results["direct"] = {
            "p50_ms": percentile(gaps, 0.5) * 1e3,
            "p99_ms": percentile(gaps, 0.99) * 1e3,
        }
        print(
            f"direct (no daemon, sim process mode): inter-token p50 "
            f"{results['direct']['p50_ms']:.2f} ms  p99 {results['direct']['p99_ms']:.2f} ms"
        )
    print(
        f"{'policy':<6} {'unloaded p50':>12} {'p99':>8} {'loaded p50':>11} {'p99':>8} "
        f"{'max':>8} {'p99 x':>6} {'prefill tok/s':>14}"
    )
    for policy in args.policies.split(","):
        r = _run_policy(policy, args, model_dir)
        results["policies"].append(r)
        print(
            f"{policy:<6} {r['unloaded_p50_ms']:>10.2f}ms {r['unloaded_p99_ms']:>6.2f}ms "
            f"{r['loaded_p50_ms']:>9.2f}ms {r['loaded_p99_ms']:>6.2f}ms "
            f"{r['loaded_max_ms']:>6.2f}ms "
            f"{r['p99_ratio']:>6.2f} {r['prefill_tokens_per_s']:>14.1f}   "
            f"npud queue wait p50 {r['loaded_wait_p50_ms']:.2f}ms "
            f"p99 {r['loaded_wait_p99_ms']:.2f}ms (unloaded p99 {r['unloaded_wait_p99_ms']:.2f}ms)",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
