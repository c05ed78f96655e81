"""A loaded model: its architecture, its float32 weights and where they came from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from npud.llm.config import ModelConfig, load_config
from npud.llm.weights import F32Array, load_weights


@dataclass(slots=True, eq=False)
class Model:
    """A decoder ready to compile: config plus every tensor it needs (float32, HF layout).

    ``lm_head`` is the output projection (the embedding table when the weights are tied).
    The model owns its arrays; compiled programs and backends copy them into device buffers.
    """

    config: ModelConfig
    tensors: dict[str, F32Array]
    source: Path | None = None

    @property
    def lm_head(self) -> F32Array:
        """The output projection ``[vocab, hidden]``."""
        if self.config.tie_word_embeddings:
            return self.tensors["model.embed_tokens.weight"]
        return self.tensors["lm_head.weight"]

    @property
    def parameter_count(self) -> int:
        """Number of parameters (a tied head counted once)."""
        return sum(int(t.size) for t in self.tensors.values())


def load_model(model_dir: Path | str) -> Model:
    """Load ``model_dir`` (config.json + safetensors) and check it against its config.

    Raises:
        ModelFileError: anything wrong with the files; the message names the file and, for
            weights, the tensor.
    """
    model_dir = Path(model_dir)
    config = load_config(model_dir)
    return Model(config, load_weights(model_dir, config), model_dir)
