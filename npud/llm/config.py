"""The architecture of a Llama-style decoder, read from an HF-like ``config.json``.

Only the keys that decide shapes and numerics are read; everything else in the file (the
tokenizer class, torch dtype, ...) is ignored, so the config of a real small Llama-family model
can be pointed at. A missing or ill-typed key is a :class:`~npud.llm.errors.ModelFileError`
that names the file and the key.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from npud.llm.errors import ModelFileError

CONFIG_FILE = "config.json"


@dataclass(frozen=True, slots=True)
class ModelConfig:
    """Shapes and constants of the decoder (HF ``LlamaConfig`` key names)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    bos_token_id: int | None = None
    eos_token_id: int | None = None

    @property
    def head_dim(self) -> int:
        """Width of one attention head (hidden_size / num_attention_heads)."""
        return self.hidden_size // self.num_attention_heads

    @property
    def q_width(self) -> int:
        """Width of the query projection (heads x head_dim)."""
        return self.num_attention_heads * self.head_dim

    @property
    def kv_width(self) -> int:
        """Width of the key and value projections (kv heads x head_dim)."""
        return self.num_key_value_heads * self.head_dim

    def validate(self, path: Path | str = CONFIG_FILE) -> None:
        """Check the shapes agree with each other.

        Raises:
            ModelFileError: a size is not positive, the heads do not divide the width, the
                kv heads do not divide the heads, or the head width is odd (RoPE halves it).
        """
        for name in (
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "vocab_size",
            "max_position_embeddings",
        ):
            if getattr(self, name) <= 0:
                raise ModelFileError(path, f"{name} must be positive, got {getattr(self, name)}")
        if self.hidden_size % self.num_attention_heads:
            raise ModelFileError(
                path,
                f"hidden_size {self.hidden_size} is not a multiple of "
                f"num_attention_heads {self.num_attention_heads}",
            )
        if self.num_attention_heads % self.num_key_value_heads:
            raise ModelFileError(
                path,
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}",
            )
        if self.head_dim % 2:
            raise ModelFileError(path, f"head_dim {self.head_dim} must be even for RoPE")
        if not self.rms_norm_eps > 0:
            raise ModelFileError(path, f"rms_norm_eps must be positive, got {self.rms_norm_eps}")
        if not self.rope_theta > 0:
            raise ModelFileError(path, f"rope_theta must be positive, got {self.rope_theta}")

    def to_json(self) -> dict[str, Any]:
        """The config as HF-like ``config.json`` content."""
        data: dict[str, Any] = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
        data.update({k: v for k, v in asdict(self).items() if v is not None})
        return data


_INT_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "vocab_size",
)


def _int(path: Path, raw: dict[str, Any], key: str, default: int | None = None) -> int:
    value = raw.get(key, default)
    if value is None:
        raise ModelFileError(path, f"missing required key {key!r}")
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelFileError(path, f"key {key!r} must be an integer, got {value!r}")
    return value


def _float(path: Path, raw: dict[str, Any], key: str, default: float) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ModelFileError(path, f"key {key!r} must be a number, got {value!r}")
    return float(value)


def _optional_token(path: Path, raw: dict[str, Any], key: str) -> int | None:
    value = raw.get(key)
    if isinstance(value, list):  # some configs list several EOS ids; the first is canonical
        value = value[0] if value else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ModelFileError(path, f"key {key!r} must be a token id, got {value!r}")
    return value


def load_config(model_dir: Path | str) -> ModelConfig:
    """Read and check ``model_dir/config.json``.

    Raises:
        ModelFileError: the file is missing or not JSON, a key is missing or ill-typed, or
            the shapes disagree (see :meth:`ModelConfig.validate`).
    """
    path = Path(model_dir) / CONFIG_FILE
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelFileError(path, "no such file (a model directory needs config.json)") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(path, f"cannot read the config: {exc}") from exc
    if not isinstance(raw, dict):
        raise ModelFileError(path, "the config must be a JSON object")
    ints = {key: _int(path, raw, key) for key in _INT_KEYS}
    tie = raw.get("tie_word_embeddings", False)
    if not isinstance(tie, bool):
        raise ModelFileError(path, f"key 'tie_word_embeddings' must be a boolean, got {tie!r}")
    config = ModelConfig(
        **ints,
        num_key_value_heads=_int(path, raw, "num_key_value_heads", ints["num_attention_heads"]),
        rms_norm_eps=_float(path, raw, "rms_norm_eps", 1e-5),
        rope_theta=_float(path, raw, "rope_theta", 10000.0),
        max_position_embeddings=_int(path, raw, "max_position_embeddings", 2048),
        tie_word_embeddings=tie,
        bos_token_id=_optional_token(path, raw, "bos_token_id"),
        eos_token_id=_optional_token(path, raw, "eos_token_id"),
    )
    config.validate(path)
    head_dim = raw.get("head_dim")
    if head_dim is not None and head_dim != config.head_dim:
        raise ModelFileError(
            path,
            f"head_dim {head_dim!r} differs from hidden_size / num_attention_heads "
            f"= {config.head_dim}: such models are not supported",
        )
    scaling = raw.get("rope_scaling")
    if scaling not in (None, {}) and not (
        isinstance(scaling, dict) and scaling.get("rope_type", scaling.get("type")) == "default"
    ):
        raise ModelFileError(path, f"rope_scaling {scaling!r} is not supported (plain RoPE only)")
    return config
