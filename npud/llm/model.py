"""A loaded model: its architecture, its weights and where they came from.

Weights are float32 arrays (HF layout, ``[out, in]``), except that a model read from a GGUF file
keeps its block-quantised matrices as they are in the file (:class:`QuantizedTensor`: Q8_0 or
Q4_1 blocks, row-major over ``[out, in]``), so they can go to the device unchanged. Whoever
needs float32 (a float32 memory plan, a reference) asks :meth:`Model.array`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from npud.isa import DType
from npud.llm.config import ModelConfig, load_config
from npud.llm.weights import F32Array, load_weights


@dataclass(frozen=True, slots=True)
class QuantizedTensor:
    """A weight matrix as block-quantised bytes: ``shape`` ``[rows, cols]``, ``dtype`` Q8_0/Q4_1.

    ``data`` holds ``rows`` rows of ``cols / 32`` blocks each, in GGUF's block layout (which
    :class:`npud.isa.DType` documents).
    """

    dtype: DType
    shape: tuple[int, int]
    data: bytes = field(repr=False)

    @property
    def size(self) -> int:
        """Number of elements."""
        return self.shape[0] * self.shape[1]

    def dequantize(self) -> F32Array:
        """The float32 values (a new array), with the ``gguf`` package's dequantisation."""
        from gguf import GGMLQuantizationType
        from gguf.quants import dequantize

        qtype = GGMLQuantizationType[self.dtype.name]
        raw = np.frombuffer(self.data, dtype=np.uint8).reshape(self.shape[0], -1)
        return np.ascontiguousarray(dequantize(raw, qtype), dtype=np.float32)


@dataclass(slots=True, eq=False)
class Model:
    """A decoder ready to compile: config plus every tensor it needs (HF names and layout).

    A tensor is in ``tensors`` (float32) or in ``quantized`` (blocks), never both. The model
    owns its arrays; compiled programs and backends copy them into device buffers.
    """

    config: ModelConfig
    tensors: dict[str, F32Array]
    source: Path | None = None
    quantized: dict[str, QuantizedTensor] = field(default_factory=dict)

    def array(self, name: str) -> F32Array:
        """Tensor ``name`` as float32 (dequantised on demand for a quantised one).

        Raises:
            KeyError: the model has no such tensor.
        """
        if name in self.quantized:
            return self.quantized[name].dequantize()
        return self.tensors[name]

    def weight(self, name: str) -> F32Array | QuantizedTensor:
        """Tensor ``name`` as stored: a float32 array or quantised blocks.

        Raises:
            KeyError: the model has no such tensor.
        """
        if name in self.quantized:
            return self.quantized[name]
        return self.tensors[name]

    @property
    def head_name(self) -> str:
        """The name of the output projection (the embedding table when the weights are tied)."""
        return "model.embed_tokens.weight" if self.config.tie_word_embeddings else "lm_head.weight"

    @property
    def lm_head(self) -> F32Array:
        """The output projection ``[vocab, hidden]`` as float32."""
        return self.array(self.head_name)

    @property
    def parameter_count(self) -> int:
        """Number of parameters (a tied head counted once)."""
        dense = sum(int(t.size) for t in self.tensors.values())
        return dense + sum(q.size for q in self.quantized.values())

    @property
    def file_weight_bytes(self) -> int:
        """Bytes of the weights as held (float32 arrays at 4 bytes, blocks as they are)."""
        dense = sum(int(t.nbytes) for t in self.tensors.values())
        return dense + sum(len(q.data) for q in self.quantized.values())


def load_model(path: Path | str) -> Model:
    """Load a model directory (config.json + safetensors) or a ``.gguf`` file.

    Raises:
        ModelFileError: anything wrong with the files; the message names the file and, for
            weights, the tensor (for GGUF metadata, the key).
    """
    path = Path(path)
    if path.suffix == ".gguf" or (path.is_file() and _is_gguf(path)):
        from npud.llm.gguf_model import load_gguf

        return load_gguf(path)
    config = load_config(path)
    return Model(config, load_weights(path, config), path)


def _is_gguf(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False
