"""``npud-llm serve``: the OpenAI-compatible gateway as its own process.

::

    npud-llm serve [--model DIR|FILE.gguf|smollm2-135m] [--host 127.0.0.1] [--port 8000]
                   [--socket PATH] [--served-model-name NAME] [--max-batch 8] [--max-seq N]
                   [--no-priorities]

``npud-llm`` finds this command through the ``npud.llm.commands`` entry-point group (declared
in ``pyproject.toml``), so :mod:`npud.llm` never imports the gateway, which sits above it.
The server is uvicorn running the Starlette application of :mod:`npud.gateway.app`; it listens
on loopback unless told otherwise. Exit status: 0 after a clean shutdown (SIGTERM, Ctrl-C),
2 for a bad argument or model.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from npud.errors import InvalidArgument, NpudError
from npud.gateway.app import MAX_BODY, Settings, create_app
from npud.gateway.engine import Engine
from npud.gateway.text import BpeCodec, ByteCodec, Codec
from npud.llm.bpe import tokenizer_from_metadata
from npud.llm.catalog import CATALOG, cached_path
from npud.llm.model import Model, load_model
from npud.llm.tiny import ensure_default_model
from npud.llm.tokenizer import ByteTokenizer

DEFAULT_MAX_SEQ = 1024
"""The context per sequence when neither ``--max-seq`` nor a smaller model limit says: every
sequence holding a slot has a KV cache of this length on npud (SmolLM2's 8192 positions would
be 360 MiB per sequence)."""


def parser() -> argparse.ArgumentParser:
    """The ``serve`` command's arguments."""
    p = argparse.ArgumentParser(
        prog="npud-llm serve", description="Serve a model over an OpenAI-compatible HTTP API."
    )
    p.add_argument(
        "--model",
        help="a model directory, a .gguf file or a catalogued name such as smollm2-135m "
        "(default: the tiny model)",
    )
    p.add_argument("--served-model-name", help="the model's id in the API (default: dir name)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--socket", type=Path, help="npud's socket (default: npud's default)")
    p.add_argument("--device", default="", help="npud device (default: the first)")
    p.add_argument("--max-batch", type=int, default=8, help="sequences decoding at once")
    p.add_argument(
        "--max-seq", type=int, help=f"context per sequence (default: {DEFAULT_MAX_SEQ} or less)"
    )
    p.add_argument("--chunk", type=int, default=16, help="prefill chunk in tokens")
    p.add_argument("--depth", type=int, default=2, help="decode steps in flight")
    p.add_argument("--max-per-user", type=int, help="slots one user may hold (default: all)")
    p.add_argument(
        "--reserved-interactive", type=int, default=1, help="slots the batch tier may not take"
    )
    p.add_argument("--max-waiting", type=int, default=64, help="requests waiting for a slot")
    p.add_argument(
        "--no-priorities",
        action="store_true",
        help="one prefill lane, first come first served (ignore service_tier)",
    )
    p.add_argument("--job-timeout", type=float, default=0.0, help="per-job watchdog, s")
    p.add_argument("--max-body", type=int, default=MAX_BODY, help="largest request body, bytes")
    p.add_argument(
        "--api-key-env",
        default="NPUD_LLM_API_KEY",
        help="environment variable holding the API key clients must send (unset: none)",
    )
    p.add_argument("--log-level", default="info")
    return p


def _model(spec: str | None) -> Model:
    if spec is None:
        return load_model(ensure_default_model())
    if spec in CATALOG:
        path = cached_path(spec)
        if not path.exists():
            raise InvalidArgument(
                f"model {spec!r} is not in the cache yet: run `npud-llm pull {spec}`"
            )
        return load_model(path)
    return load_model(Path(spec))


def codec_for(model: Model) -> Codec:
    """The codec of ``model``: its own tokenizer and chat template for a GGUF file, else the
    byte tokenizer.

    Raises:
        InvalidArgument: the model has neither (its vocabulary is not the byte tokenizer's);
            ModelFileError for a GGUF file whose tokenizer metadata is broken.
    """
    if model.source is not None and model.source.is_file():
        from npud.llm.gguf_model import read_gguf

        return BpeCodec(tokenizer_from_metadata(model.source, read_gguf(model.source).metadata))
    tok = ByteTokenizer()
    if model.config.vocab_size < tok.vocab_size:
        raise InvalidArgument(
            f"the model's vocabulary ({model.config.vocab_size} ids) is not the byte "
            "tokenizer's and it brings no tokenizer of its own; the gateway cannot serve it"
        )
    return ByteCodec(tok)


def build(args: argparse.Namespace) -> tuple[object, Settings]:
    """The ASGI application and its settings for parsed ``args``.

    Raises:
        InvalidArgument: a bad option, or a model whose vocabulary the gateway cannot
            tokenize (ModelFileError for a broken model directory).
    """
    model = _model(args.model)
    codec = codec_for(model)
    if args.max_batch < 1 or args.port < 0 or args.max_body < 1:
        raise InvalidArgument("--max-batch and --max-body must be >= 1, --port >= 0")
    name = args.served_model_name or (model.source.name if model.source else "model")
    if args.model in CATALOG and not args.served_model_name:
        name = args.model
    max_seq = args.max_seq or min(DEFAULT_MAX_SEQ, model.config.max_position_embeddings)
    options = {
        "max_batch": args.max_batch,
        "max_seq": max_seq,
        "chunk": args.chunk,
        "depth": args.depth,
        "priorities": not args.no_priorities,
        "max_per_user": args.max_per_user,
        "reserved_interactive": 0 if args.max_batch == 1 else args.reserved_interactive,
        "max_waiting": args.max_waiting,
        "job_timeout_s": args.job_timeout,
        "device": args.device,
        "label": f"npud-llm-serve/{name}",
    }
    engine = Engine(model, args.socket, options)
    settings = Settings(name, args.max_body, os.environ.get(args.api_key_env) or None)
    return create_app(engine, codec, settings), settings


def main(argv: Sequence[str] | None = None) -> int:
    """Run the server until SIGTERM or Ctrl-C."""
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    try:
        app, settings = build(args)
    except (NpudError, OSError) as exc:
        print(f"npud-llm serve: {exc}", file=sys.stderr)
        return 2
    import uvicorn

    logging.getLogger("npud.gateway").info(
        "serving %s on http://%s:%d/v1", settings.model_name, args.host, args.port
    )
    uvicorn.run(
        app,  # type: ignore[arg-type]
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        timeout_graceful_shutdown=5,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
