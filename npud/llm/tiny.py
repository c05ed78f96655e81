"""The tiny demo model: a seeded, randomly initialised Llama-style decoder.

It is small enough for the simulated NPU to run for real in tests (about 0.36 M parameters:
2 layers, width 128, 4 query heads over 2 key/value heads, SwiGLU width 256, a byte-level
vocabulary of 258, 256 positions), and written exactly like a real checkpoint (config.json +
model.safetensors with HF tensor names) so that the loader, the compiler and the backends are
exercised on the same path a real small model takes. Its weights are random: the text it
generates is gibberish; what matters is that every backend produces the same token ids as an
independent numpy reference.

Initialisation
--------------
With textbook small init (std 0.02) a 2-layer random model's logits are nearly flat, and with an
output head tied to (or resembling) the embedding table greedy decoding repeats the current token
forever, because the residual stream is dominated by its own embedding. Instead the embedding rows
have unit scale, every projection uses std 1/sqrt(fan_in) (so activations keep their scale
through the layers), and the output head is an independent random matrix: the next token then
depends on the current one and on the context through attention, which keeps greedy outputs
varied (the tests check they are not one repeated token). The head rows of printable ASCII bytes
are 3x larger than the rest, so the gibberish it prints is at least readable characters.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import numpy.typing as npt

from npud.llm.config import CONFIG_FILE, ModelConfig
from npud.llm.tokenizer import ByteTokenizer
from npud.llm.weights import WEIGHTS_FILE, layer_tensor_names, save_weights

TINY_SEED = 1234


def tiny_config() -> ModelConfig:
    """The architecture of the tiny demo model."""
    tok = ByteTokenizer()
    return ModelConfig(
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=tok.vocab_size,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        max_position_embeddings=256,
        tie_word_embeddings=False,
        bos_token_id=tok.bos_id,
        eos_token_id=tok.eos_id,
    )


def random_tensors(
    config: ModelConfig, *, seed: int = TINY_SEED
) -> dict[str, npt.NDArray[np.float32]]:
    """Seeded weights for ``config`` (see the module docstring for the scales)."""
    rng = np.random.default_rng(seed)
    d = config.hidden_size

    def dense(out_features: int, in_features: int) -> npt.NDArray[np.float32]:
        w = rng.standard_normal((out_features, in_features)) / np.sqrt(in_features)
        return np.asarray(w, dtype=np.float32)

    def norm(width: int) -> npt.NDArray[np.float32]:
        return (1.0 + 0.1 * rng.standard_normal(width)).astype(np.float32)

    embed = rng.standard_normal((config.vocab_size, d)).astype(np.float32)
    tensors = {"model.embed_tokens.weight": embed}
    for layer in range(config.num_hidden_layers):
        names = layer_tensor_names(layer)
        values = (
            norm(d),
            dense(config.q_width, d),
            dense(config.kv_width, d),
            dense(config.kv_width, d),
            dense(d, config.q_width),
            norm(d),
            dense(config.intermediate_size, d),
            dense(config.intermediate_size, d),
            dense(d, config.intermediate_size),
        )
        tensors.update(zip(names, values, strict=True))
    tensors["model.norm.weight"] = norm(d)
    if not config.tie_word_embeddings:
        head = 4.0 * rng.standard_normal((config.vocab_size, d)) / np.sqrt(d)
        row_scale = np.full(config.vocab_size, 0.3)
        row_scale[0x20:0x7F] = 1.0  # printable ASCII
        tensors["lm_head.weight"] = (head * row_scale[:, None]).astype(np.float32)
    return tensors


def write_model(
    model_dir: Path | str,
    config: ModelConfig,
    tensors: dict[str, npt.NDArray[np.float32]],
) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``model_dir`` (created if needed).

    Returns the directory. Raises ``OSError`` when it cannot be written.
    """
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    (model_dir / CONFIG_FILE).write_text(json.dumps(config.to_json(), indent=2) + "\n")
    save_weights(model_dir / WEIGHTS_FILE, tensors)
    return model_dir


def make_tiny(model_dir: Path | str, *, seed: int = TINY_SEED) -> Path:
    """Generate the tiny demo model into ``model_dir`` (deterministic for a given seed).

    Raises ``OSError`` when the directory cannot be written.
    """
    config = tiny_config()
    return write_model(model_dir, config, random_tensors(config, seed=seed))


def default_model_dir() -> Path:
    """Where the tiny model lives when no ``--model`` is given.

    ``$NPUD_LLM_MODEL`` if set, else ``$XDG_CACHE_HOME/npud/tiny-llama`` (``~/.cache/...``).
    """
    if env := os.environ.get("NPUD_LLM_MODEL"):
        return Path(env)
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "npud" / "tiny-llama"


def ensure_default_model() -> Path:
    """The default model directory, generating the tiny model there on first use.

    The model is written to a temporary sibling and renamed, so a concurrent first use never
    sees half a model. Raises ``OSError`` when the cache directory is not writable.
    """
    target = default_model_dir()
    if (target / CONFIG_FILE).exists() and (target / WEIGHTS_FILE).exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = target.parent / f".{target.name}.{os.getpid()}.tmp"
    make_tiny(staging)
    try:
        staging.rename(target)
    except OSError:
        # Someone else finished first (the target exists and is not empty): use theirs.
        for child in staging.iterdir():
            child.unlink()
        staging.rmdir()
    return target
