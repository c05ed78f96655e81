"""The real model through npud: SmolLM2-135M-Instruct, daemon vs in process vs llama.cpp.

``python -m bench.model [--rounds 3] [--tokens 24] [--json OUT]`` measures, in one run on one
machine:

- decode tokens/s and TTFT of a chat prompt through a daemon (``DaemonBackend``) and in process
  on the same simulated NPU in process mode (``DirectBackend``), in rotating rounds so both see
  the same host load (P5's direct-vs-daemon comparison on a real model);
- the device-resident weight bytes (the plan's packs, the daemon's uploaded weight bytes and
  device memory in use) against the GGUF file's size;
- a cold load (create the buffers and upload ~97 MB of quantised weights) against a second
  process's attach (open the persistent buffers by content key, upload nothing), each timed
  from the start of ``Generator(...)`` to its return, in separate processes;
- llama.cpp's CPU decode rate and TTFT (llama-cpp-python, 2 threads) on the same prompt, as a
  reference point for what the host itself does with the same file.

The simulated NPU computes on the host's CPUs with numpy, so its tokens/s measure the host, not
an NPU: the ratios (daemon/direct, attach/cold) are the figures that carry over. A few minutes
on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.daemon import running_daemon
from npud.llm.metrics import percentile

QUESTION = "Which city is the capital of France?"


def _attach(socket: str, path: str, label: str) -> dict[str, Any]:
    """In this (fresh) process: load the model, build a generator on the daemon, time it."""
    from npud.llm.daemon import DaemonBackend
    from npud.llm.generator import Generator
    from npud.llm.gguf_model import load_gguf

    t0 = time.perf_counter()
    model = load_gguf(path)
    t1 = time.perf_counter()
    backend = DaemonBackend(socket_path=socket, label=label, job_timeout_s=120)
    gen = Generator(model, backend, max_seq=256)
    t2 = time.perf_counter()
    stats = backend.statistics()
    gen.close()
    return {
        "load_file_s": t1 - t0,
        "prepare_s": t2 - t1,
        "weight_bytes_uploaded": stats.weight_bytes_uploaded,
        "weight_packs_reused": stats.weight_packs_reused,
        "weight_bytes_on_device": gen.plan.weight_bytes,
    }


def _in_fresh_process(socket: str, path: str, label: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "bench.model", "--attach", socket, "--file", path, "--label", label],
        capture_output=True,
        text=True,
        timeout=900,
        check=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def _llama_cpp(path: str, prompt: list[int], tokens: int) -> dict[str, Any]:
    """llama.cpp's greedy decode of the same prompt on the host's CPUs (2 threads)."""
    try:
        from llama_cpp import Llama
    except ImportError as exc:
        return {"error": f"llama-cpp-python is not installed: {exc}"}
    import numpy as np

    llama = Llama(model_path=path, n_ctx=512, n_threads=2, verbose=False, seed=0)
    t0 = time.perf_counter()
    llama.eval(prompt)
    ttft = time.perf_counter() - t0
    gaps = []
    token = int(np.argmax(llama.eval_logits[-1]))
    for _ in range(tokens - 1):
        t = time.perf_counter()
        llama.eval([token])
        token = int(np.argmax(llama.eval_logits[-1]))
        gaps.append(time.perf_counter() - t)
    return {"ttft_s": ttft, "tokens_per_s": len(gaps) / sum(gaps), "threads": 2}


def run(rounds: int, tokens: int) -> dict[str, Any]:
    """The whole benchmark; returns its figures (see the module docstring)."""
    from npud.client import connect
    from npud.llm.bpe import load_tokenizer
    from npud.llm.catalog import DEFAULT_MODEL, pull
    from npud.llm.daemon import DaemonBackend
    from npud.llm.direct import DirectBackend
    from npud.llm.generator import Generator
    from npud.llm.gguf_model import load_gguf

    path = pull(DEFAULT_MODEL)
    prompt = load_tokenizer(path).chat_ids(QUESTION)
    model = load_gguf(path)
    out: dict[str, Any] = {"model": DEFAULT_MODEL, "file_bytes": path.stat().st_size}
    out["prompt_tokens"], out["tokens"], out["rounds"] = len(prompt), tokens, rounds
    with running_daemon("npud", env={"NPUD_SCHEDULER__TIME_SLICE_MS": "1000"}) as daemon:
        socket = str(daemon.socket)
        out["cold"] = _in_fresh_process(socket, str(path), "bench/cold")
        out["attach"] = _in_fresh_process(socket, str(path), "bench/attach")
        gens = {
            "direct": Generator(model, DirectBackend.on_sim(mode="process"), max_seq=256),
            "daemon": Generator(
                model,
                DaemonBackend(socket_path=socket, label="bench/decode", job_timeout_s=120),
                max_seq=256,
            ),
        }
        try:
            for gen in gens.values():
                gen.generate(prompt, 2, stop_at_eos=False)  # warm: caches, stream, estimates
            ttft: dict[str, list[float]] = {n: [] for n in gens}
            gaps: dict[str, list[float]] = {n: [] for n in gens}
            names = list(gens)
            for r in range(rounds):
                for name in names[r % 2 :] + names[: r % 2]:
                    res = gens[name].generate(prompt, tokens, stop_at_eos=False)
                    ttft[name].append(res.stats.ttft_s)
                    gaps[name] += list(res.stats.inter_token_s)
            with connect(socket) as client:
                dev = client.stats().devices[0]
            out["resident"] = {
                "weight_bytes_on_device": gens["daemon"].plan.weight_bytes,
                "daemon_uploaded_weight_bytes": dev.residency.uploaded_weight_bytes,
                "device_memory_used_bytes": sum(m.used_bytes for m in dev.memory),
                "persistent_buffers": dev.persistent_buffers,
            }
        finally:
            for gen in gens.values():
                gen.close()
    for name in ("direct", "daemon"):
        g = gaps[name]
        out[name] = {
            "tokens_per_s": len(g) / sum(g),
            "ttft_s": statistics.median(ttft[name]),
            "itl_p50_ms": percentile(g, 0.5) * 1e3,
            "itl_p99_ms": percentile(g, 0.99) * 1e3,
        }
    out["daemon_over_direct_tokens_per_s"] = (
        out["daemon"]["tokens_per_s"] / out["direct"]["tokens_per_s"]
    )
    out["attach_over_cold"] = out["attach"]["prepare_s"] / out["cold"]["prepare_s"]
    out["llama_cpp"] = _llama_cpp(str(path), prompt, tokens)
    return out


def _table(r: dict[str, Any]) -> str:
    rows = [
        f"model {r['model']}: file {r['file_bytes']:,} B; prompt {r['prompt_tokens']} tokens, "
        f"{r['tokens']} generated x {r['rounds']} rounds",
        f"resident weights on the device: {r['resident']['weight_bytes_on_device']:,} B "
        f"({r['resident']['weight_bytes_on_device'] / r['file_bytes']:.2f}x the file), "
        f"device memory in use {r['resident']['device_memory_used_bytes']:,} B",
        f"cold load (upload):  {r['cold']['prepare_s'] * 1e3:8.0f} ms, "
        f"{r['cold']['weight_bytes_uploaded']:,} B uploaded",
        f"second process:      {r['attach']['prepare_s'] * 1e3:8.0f} ms, "
        f"{r['attach']['weight_bytes_uploaded']:,} B uploaded, "
        f"{r['attach']['weight_packs_reused']} packs attached "
        f"({r['attach_over_cold']:.2f}x the cold load)",
    ]
    for name in ("direct", "daemon"):
        f = r[name]
        rows.append(
            f"{name:<8} decode {f['tokens_per_s']:6.2f} tok/s  TTFT {f['ttft_s'] * 1e3:7.0f} ms  "
            f"ITL p50 {f['itl_p50_ms']:6.0f} ms  p99 {f['itl_p99_ms']:6.0f} ms"
        )
    rows.append(f"daemon / direct decode rate: {r['daemon_over_direct_tokens_per_s']:.2f}")
    lc = r["llama_cpp"]
    if "error" in lc:
        rows.append(f"llama.cpp: {lc['error']}")
    else:
        rows.append(
            f"llama.cpp (CPU, {lc['threads']} threads) decode {lc['tokens_per_s']:6.2f} tok/s  "
            f"TTFT {lc['ttft_s'] * 1e3:7.0f} ms"
        )
    return "\n".join(rows)


def main() -> int:
    """``python -m bench.model``; prints the table (and writes ``--json``)."""
    parser = argparse.ArgumentParser(prog="python -m bench.model", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=24)
    parser.add_argument("--json", type=Path, help="write the figures here")
    parser.add_argument("--attach", help=argparse.SUPPRESS)  # internal: time one attach
    parser.add_argument("--file", help=argparse.SUPPRESS)
    parser.add_argument("--label", default="bench/attach", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.attach:
        print(json.dumps(_attach(args.attach, args.file, args.label)))
        return 0
    result = run(args.rounds, args.tokens)
    print(_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
