"""``npud-llm``: run a Llama-style model on npud (or directly on the simulated NPU).

::

    npud-llm make-tiny DIR                  write the tiny demo model (config.json + safetensors)
    npud-llm info [--model DIR]             architecture, parameter count, buffers and their keys
    npud-llm run [--model DIR] --prompt TEXT [--max-tokens N] [--socket PATH | --direct]
    npud-llm serve [...]                    an OpenAI-compatible HTTP API (npud.gateway)

Without ``--model`` the tiny demo model is used, generated on first use into
``$XDG_CACHE_HOME/npud/tiny-llama`` (or ``$NPUD_LLM_MODEL``). ``run`` talks to the daemon at
``--socket`` (default: ``$NPUD_SOCKET`` or npud's default socket); ``--direct`` runs in this
process on a simulated NPU instead (``--sim-mode virtual`` reports modelled times).
The generated text is printed as it arrives, then the figures (TTFT, tokens/s, inter-token
p50/p99). Exit status: 0 on success, 2 for a bad model or argument, 1 for anything else.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from npud.errors import InvalidArgument, NpudError, Unavailable
from npud.llm.generator import DEFAULT_DEPTH, Generation, Generator
from npud.llm.model import Model, load_model
from npud.llm.plan import WeightDType, plan_memory
from npud.llm.tiny import TINY_SEED, ensure_default_model, make_tiny
from npud.llm.tokenizer import BYTE_VOCAB, ByteTokenizer


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="npud-llm", description="Run a small Llama-style model on npud."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    tiny = sub.add_parser("make-tiny", help="write the tiny demo model into DIR")
    tiny.add_argument("dir", type=Path)
    tiny.add_argument("--seed", type=int, default=TINY_SEED)

    info = sub.add_parser("info", help="describe a model and its device buffers")
    info.add_argument("--model", type=Path, help="model directory (default: the tiny model)")
    info.add_argument("--weights", choices=[d.value for d in WeightDType], default="f32")

    run = sub.add_parser("run", help="generate text")
    run.add_argument("--model", type=Path, help="model directory (default: the tiny model)")
    prompt = run.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="text (byte-level tokenizer, BOS prepended)")
    prompt.add_argument("--prompt-ids", help="comma-separated token ids (for real models)")
    run.add_argument("--max-tokens", type=int, default=32)
    run.add_argument("--chunk", type=int, default=16, help="prefill chunk in tokens")
    run.add_argument("--max-seq", type=int, help="KV cache length (default: model maximum)")
    run.add_argument("--weights", choices=[d.value for d in WeightDType], default="f32")
    run.add_argument("--no-eos", action="store_true", help="do not stop at the EOS id")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--socket", type=Path, help="npud's socket (default: npud's default)")
    where.add_argument("--direct", action="store_true", help="run in process on a sim NPU")
    run.add_argument("--sim-mode", choices=["virtual", "process"], default="virtual")
    run.add_argument("--device", default="", help="npud device name (default: the first)")
    run.add_argument(
        "--job-timeout", type=float, default=0.0, help="per-step watchdog, s (0: npud default)"
    )
    run.add_argument(
        "--depth",
        type=int,
        default=DEFAULT_DEPTH,
        help=f"decode steps kept in flight (default {DEFAULT_DEPTH}; 1: no pipelining)",
    )
    run.add_argument("--json", action="store_true", help="print one JSON object instead")
    sub.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API (npud-llm serve --help)",
        add_help=False,
    )
    return parser


COMMANDS = "npud.llm.commands"
"""The entry-point group of commands that live above this package (``serve``: the gateway).

Why an entry point: the gateway imports :mod:`npud.llm`, so :mod:`npud.llm` importing the
gateway would point the layers the wrong way; the installed package's metadata names the
function instead, and this module only looks it up by name."""


def _command(name: str) -> Any:
    from importlib.metadata import entry_points

    for entry in entry_points(group=COMMANDS):
        if entry.name == name:
            return entry.load()
    return None


def _model(path: Path | None) -> Model:
    return load_model(path if path is not None else ensure_default_model())


def _prompt_ids(args: argparse.Namespace, model: Model, tok: ByteTokenizer) -> list[int]:
    if args.prompt_ids is not None:
        try:
            return [int(x) for x in args.prompt_ids.split(",") if x.strip()]
        except ValueError:
            raise InvalidArgument(
                f"--prompt-ids: not a list of integers: {args.prompt_ids!r}"
            ) from None
    if model.config.vocab_size < tok.vocab_size:
        raise InvalidArgument(
            f"the byte tokenizer needs a vocabulary of {tok.vocab_size} ids; this model has "
            f"{model.config.vocab_size}: pass --prompt-ids from the model's own tokenizer"
        )
    return tok.encode(args.prompt)


def _info(args: argparse.Namespace) -> int:
    model = _model(args.model)
    plan = plan_memory(model, weight_dtype=args.weights)
    cfg = model.config
    print(f"model      {model.source}")
    print(
        f"shape      {cfg.num_hidden_layers} layers, width {cfg.hidden_size}, "
        f"{cfg.num_attention_heads} heads / {cfg.num_key_value_heads} kv heads "
        f"(head {cfg.head_dim}), mlp {cfg.intermediate_size}, vocab {cfg.vocab_size}, "
        f"{cfg.max_position_embeddings} positions"
    )
    print(f"parameters {model.parameter_count:,}")
    for slot, spec in enumerate(plan.buffers):
        key = spec.pack.key if spec.pack is not None else ""
        print(f"slot {slot:<3}  {spec.name:<18} {spec.kind:<8} {spec.size:>12,} B  {key}")
    return 0


def _backend(args: argparse.Namespace) -> Any:
    if args.direct:
        from npud.llm.direct import DirectBackend

        return DirectBackend.on_sim(mode=args.sim_mode)
    from npud.llm.daemon import DaemonBackend

    try:
        return DaemonBackend(
            socket_path=args.socket, device=args.device, job_timeout_s=args.job_timeout
        )
    except Unavailable as exc:
        raise Unavailable(
            f"{exc} (is npud running? start it with `npud`, or use --direct)"
        ) from None


def _report(
    result: Generation, backend_stats: Any, as_json: bool, text: str | None, depth: int
) -> None:
    s = result.stats
    if as_json:
        print(
            json.dumps(
                {
                    "prompt_ids": list(result.prompt),
                    "token_ids": list(result.tokens),
                    "text": text,
                    "stop": result.stop.value,
                    "prompt_tokens": s.prompt_tokens,
                    "generated_tokens": s.generated_tokens,
                    "prefill_chunks": s.prefill_chunks,
                    "depth": depth,
                    "ttft_s": s.ttft_s,
                    "decode_tokens_per_s": s.decode_tokens_per_s,
                    "itl_p50_s": s.itl_p50_s,
                    "itl_p99_s": s.itl_p99_s,
                    "backend": backend_stats.backend,
                    "weight_bytes_uploaded": backend_stats.weight_bytes_uploaded,
                    "weight_packs_uploaded": backend_stats.weight_packs_uploaded,
                    "weight_packs_reused": backend_stats.weight_packs_reused,
                }
            )
        )
        return
    print()
    print(f"-- {s.summary()} | stop: {result.stop} | depth {depth}")
    print(
        f"-- {backend_stats.backend}: weights uploaded {backend_stats.weight_bytes_uploaded:,} B "
        f"({backend_stats.weight_packs_uploaded} packs), "
        f"reused {backend_stats.weight_packs_reused} packs"
    )


def _run(args: argparse.Namespace) -> int:
    model = _model(args.model)
    tok = ByteTokenizer()
    prompt = _prompt_ids(args, model, tok)
    byte_level = model.config.vocab_size <= tok.vocab_size and args.prompt is not None
    stream = not args.json

    def on_token(token: int) -> None:
        if stream:
            if byte_level and token < BYTE_VOCAB:
                sys.stdout.buffer.write(tok.decode_token(token))
            elif not byte_level:
                sys.stdout.write(f"{token} ")
            sys.stdout.flush()

    backend = _backend(args)
    try:
        with Generator(
            model,
            backend,
            max_seq=args.max_seq,
            chunk=args.chunk,
            weight_dtype=args.weights,
            depth=args.depth,
        ) as gen:
            if stream and byte_level:
                sys.stdout.write(args.prompt)
                sys.stdout.flush()
            result = gen.generate(
                prompt, args.max_tokens, stop_at_eos=not args.no_eos, on_token=on_token
            )
            stats = backend.statistics()
    finally:
        backend.close()
    _report(result, stats, args.json, tok.decode(result.tokens) if byte_level else None, args.depth)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """The ``npud-llm`` entry point; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "serve":
        command = _command("serve")
        if command is None:
            print(
                f"npud-llm: error: no 'serve' command is installed (entry point group "
                f"{COMMANDS}); reinstall npud",
                file=sys.stderr,
            )
            return 2
        return int(command(argv[1:]))
    args = _parser().parse_args(argv)
    try:
        if args.command == "make-tiny":
            path = make_tiny(args.dir, seed=args.seed)
            print(f"wrote the tiny demo model to {path}")
            return 0
        if args.command == "info":
            return _info(args)
        return _run(args)
    except InvalidArgument as exc:
        print(f"npud-llm: error: {exc}", file=sys.stderr)
        return 2
    except NpudError as exc:
        print(f"npud-llm: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"npud-llm: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
