"""Llama-architecture models from GGUF files (llama.cpp's format), weights kept quantised.

A GGUF file is a header (magic ``GGUF``, version, tensor and key counts), a table of typed
metadata keys (``llama.block_count``, ``tokenizer.ggml.tokens``, ...), a table of tensor
descriptors (name, dimensions innermost first, ``ggml`` type, offset) and, aligned to
``general.alignment`` (default 32), the tensor data. The type codes, block sizes and
dequantisation come from the ``gguf`` package; the tables are parsed here with ``struct``,
because ``gguf.GGUFReader`` builds a numpy view per array element and takes tens of seconds
on a 49,152-token vocabulary, and because its failures on a damaged file (a reshape error)
do not say which tensor or key is at fault. Every problem is a
:class:`~npud.llm.errors.ModelFileError` naming the file and the key or tensor.

Names map to the HF ones the compiler uses (``blk.N.attn_q.weight`` ->
``model.layers.N.self_attn.q_proj.weight``; no ``output.weight`` means tied embeddings).
Q8_0 and Q4_1 matrices stay blocks (:class:`~npud.llm.model.QuantizedTensor`), F32 and F16
tensors become float32; any other quantisation is refused, naming the tensor.

The Q/K row order (why rows are un-permuted)
--------------------------------------------
llama.cpp rotates adjacent pairs ``(x[2i], x[2i+1])`` of a head; HF Llama (and npud's ROPE)
rotates the halves ``(x[i], x[i + Dh/2])``. llama.cpp's converter therefore stores the rows
of ``attn_q`` and ``attn_k`` permuted within each head: row ``2i + j`` of a head in the file is
HF row ``j * Dh/2 + i``. The loader undoes that (a reshape ``[heads, Dh/2, 2, cols]`` ->
``[heads, 2, Dh/2, cols]``), which moves whole rows, so it is exact on quantised blocks too.
The test against llama.cpp's logits (cosine >= 0.999) is what proves the choice: with the rows
left permuted the top-1 agreement falls to about a fifth.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from npud.isa import DType
from npud.llm.config import ModelConfig
from npud.llm.errors import ModelFileError
from npud.llm.model import Model, QuantizedTensor
from npud.llm.weights import F32Array, expected_shapes

MAGIC = b"GGUF"
_MAX_COUNT = 1 << 24  # more keys, tensors or array elements than this is a corrupt count
_MAX_STRING = 1 << 26

_SCALARS = {  # GGUFValueType code -> struct format
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9

_LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_GLOBAL_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_LAYER = re.compile(r"blk\.(\d+)\.(\w+)\.weight")


@dataclass(frozen=True, slots=True)
class GgufTensor:
    """A tensor descriptor: name, dims (innermost first), ggml type code, absolute offset."""

    name: str
    dims: tuple[int, ...]
    type_code: int
    begin: int
    end: int


@dataclass(frozen=True, slots=True)
class GgufFile:
    """A parsed GGUF header: metadata by key and tensor descriptors by name."""

    path: Path
    version: int
    metadata: dict[str, Any]
    tensors: dict[str, GgufTensor]

    def key(self, key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
        """Metadata ``key`` checked to be of ``kind``; ``default`` when absent and given.

        Raises:
            ModelFileError: the key is missing (and no default) or of another type.
        """
        if key not in self.metadata:
            if default is not None:
                return default
            raise ModelFileError(self.path, f"missing metadata key {key!r}")
        value = self.metadata[key]
        if isinstance(value, bool) and kind is not bool:
            raise ModelFileError(self.path, f"metadata key {key!r} has the wrong type: {value!r}")
        if not isinstance(value, kind):
            raise ModelFileError(
                self.path, f"metadata key {key!r} has the wrong type: {type(value).__name__}"
            )
        return value


class _Cursor:
    """Reads little-endian values from the header bytes, failing with the file's name."""

    __slots__ = ("data", "path", "pos", "what")

    def __init__(self, path: Path, data: bytes | memoryview) -> None:
        self.path, self.data, self.pos, self.what = path, data, 0, "the header"

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.data):
            raise ModelFileError(
                self.path, f"truncated: the file ends inside {self.what} (at byte {self.pos})"
            )
        (value,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += size
        return value

    def count(self, what: str) -> int:
        n = int(self.take("<Q"))
        if n > _MAX_COUNT:
            raise ModelFileError(self.path, f"corrupt: {what} count {n} is implausible")
        return n

    def string(self) -> str:
        n = int(self.take("<Q"))
        if n > _MAX_STRING or self.pos + n > len(self.data):
            raise ModelFileError(
                self.path, f"truncated or corrupt: a string in {self.what} runs past the end"
            )
        raw = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise ModelFileError(self.path, f"corrupt: a string in {self.what}: {exc}") from exc

    def value(self, type_code: int) -> Any:
        if type_code in _SCALARS:
            return self.take(_SCALARS[type_code])
        if type_code == _STRING:
            return self.string()
        if type_code == _ARRAY:
            item_type = int(self.take("<I"))
            n = self.count("array element")
            if item_type in _SCALARS and item_type != 7:
                dtype = np.dtype(_SCALARS[item_type])
                size = n * dtype.itemsize
                if self.pos + size > len(self.data):
                    raise ModelFileError(self.path, f"truncated: the file ends inside {self.what}")
                array = np.frombuffer(self.data, dtype=dtype, count=n, offset=self.pos)
                self.pos += size
                return array.tolist()
            return [self.value(item_type) for _ in range(n)]
        raise ModelFileError(self.path, f"corrupt: unknown value type {type_code} in {self.what}")


def read_gguf(path: Path | str) -> GgufFile:
    """Parse ``path``'s header, metadata and tensor table, and check the data fits the file.

    The tensor data is not read. Raises:
        ModelFileError: unreadable, not GGUF (wrong magic), an unsupported version, a table
            cut short or corrupt (naming the key or tensor being read), or a tensor whose bytes
            run past the end of the file (naming it).
    """
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(min(size, 64 << 20))
    except OSError as exc:
        raise ModelFileError(path, f"cannot read: {exc.strerror or exc}") from exc
    if head[:4] != MAGIC:
        raise ModelFileError(path, f"not a GGUF file: magic {head[:4]!r}, expected {MAGIC!r}")
    cur = _Cursor(path, head)
    cur.pos = 4
    version = int(cur.take("<I"))
    if version not in (2, 3):
        raise ModelFileError(path, f"GGUF version {version} is not supported (2 or 3)")
    n_tensors = cur.count("tensor")
    n_keys = cur.count("metadata key")
    metadata: dict[str, Any] = {}
    key = ""
    for _ in range(n_keys):
        cur.what = f"the metadata table (the key after {key!r})" if key else "the metadata table"
        key = cur.string()
        cur.what = f"metadata key {key!r}"
        metadata[key] = cur.value(int(cur.take("<I")))
    descriptors: list[tuple[str, tuple[int, ...], int, int]] = []
    for _ in range(n_tensors):
        cur.what = "the tensor table"
        name = cur.string()
        cur.what = f"the descriptor of tensor {name!r}"
        ndim = int(cur.take("<I"))
        if not 1 <= ndim <= 4:
            raise ModelFileError(path, f"corrupt: {ndim} dimensions", tensor=name)
        dims = tuple(int(cur.take("<Q")) for _ in range(ndim))
        descriptors.append((name, dims, int(cur.take("<I")), int(cur.take("<Q"))))
    align = metadata.get("general.alignment", 32)
    if not isinstance(align, int) or align <= 0 or align & (align - 1):
        raise ModelFileError(path, f"metadata key 'general.alignment' is invalid: {align!r}")
    data_start = (cur.pos + align - 1) // align * align
    tensors: dict[str, GgufTensor] = {}
    for name, dims, type_code, offset in descriptors:
        try:
            block, block_bytes = GGML_QUANT_SIZES[GGMLQuantizationType(type_code)]
        except (ValueError, KeyError):
            raise ModelFileError(path, f"unknown ggml type {type_code}", tensor=name) from None
        numel = int(np.prod(dims))
        if dims[0] % block:
            raise ModelFileError(
                path, f"row of {dims[0]} is not a whole number of {block}-blocks", tensor=name
            )
        begin = data_start + offset
        end = begin + numel // block * block_bytes
        if end > size:
            raise ModelFileError(
                path,
                f"truncated: its bytes end at offset {end} but the file has {size} bytes",
                tensor=name,
            )
        tensors[name] = GgufTensor(name, dims, type_code, begin, end)
    return GgufFile(path, version, metadata, tensors)


def _config(g: GgufFile) -> ModelConfig:
    arch = g.key("general.architecture", str)
    if arch != "llama":
        raise ModelFileError(
            g.path,
            f"metadata key 'general.architecture' is {arch!r}: only 'llama' is supported",
        )
    n_heads = int(g.key("llama.attention.head_count", int))
    hidden = int(g.key("llama.embedding_length", int))
    tokens = g.metadata.get("tokenizer.ggml.tokens")
    vocab = g.key("llama.vocab_size", int, len(tokens) if isinstance(tokens, list) else None)
    config = ModelConfig(
        hidden_size=hidden,
        intermediate_size=int(g.key("llama.feed_forward_length", int)),
        num_hidden_layers=int(g.key("llama.block_count", int)),
        num_attention_heads=n_heads,
        num_key_value_heads=int(g.key("llama.attention.head_count_kv", int, n_heads)),
        vocab_size=int(vocab),
        rms_norm_eps=float(g.key("llama.attention.layer_norm_rms_epsilon", (int, float))),
        rope_theta=float(g.key("llama.rope.freq_base", (int, float), 10000.0)),
        max_position_embeddings=int(g.key("llama.context_length", int)),
        tie_word_embeddings="output.weight" not in g.tensors,
        bos_token_id=g.metadata.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=g.metadata.get("tokenizer.ggml.eos_token_id"),
    )
    config.validate(g.path)
    rope_dims = g.metadata.get("llama.rope.dimension_count", config.head_dim)
    if rope_dims != config.head_dim:
        raise ModelFileError(
            g.path,
            f"metadata key 'llama.rope.dimension_count' is {rope_dims}: only RoPE over the "
            f"whole head ({config.head_dim}) is supported",
        )
    scaling = g.metadata.get("llama.rope.scaling.type", "none")
    if scaling not in ("none", ""):
        raise ModelFileError(
            g.path, f"metadata key 'llama.rope.scaling.type' is {scaling!r}: not supported"
        )
    return config


def hf_name(gguf_name: str) -> str | None:
    """The HF Llama name of a GGUF tensor name, or ``None`` for one the decoder does not use."""
    if gguf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[gguf_name]
    match = _LAYER.fullmatch(gguf_name)
    if match and match.group(2) in _LAYER_NAMES:
        return f"model.layers.{match.group(1)}.{_LAYER_NAMES[match.group(2)]}.weight"
    return None


def unpermute_rows(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo llama.cpp's per-head interleaving of Q/K rows (see the module docstring).

    ``rows`` is ``[heads * Dh, ...]`` (floats, or the bytes of quantised rows); returns a new
    contiguous array in HF row order.
    """
    head_dim = rows.shape[0] // n_heads
    shaped = rows.reshape(n_heads, head_dim // 2, 2, *rows.shape[1:])
    return np.ascontiguousarray(shaped.swapaxes(1, 2).reshape(rows.shape))


def permute_rows(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """llama.cpp's converter's Q/K permutation (HF order -> file order); for tests and writers."""
    head_dim = rows.shape[0] // n_heads
    shaped = rows.reshape(n_heads, 2, head_dim // 2, *rows.shape[1:])
    return np.ascontiguousarray(shaped.swapaxes(1, 2).reshape(rows.shape))


_DENSE: dict[int, str] = {0: "<f4", 1: "<f2"}  # ggml F32, F16
_BLOCKS = {8: DType.Q8_0, 3: DType.Q4_1}  # ggml Q8_0, Q4_1


def load_gguf(path: Path | str) -> Model:
    """Load a Llama-architecture GGUF file as a :class:`Model` (quantised matrices kept).

    Raises:
        ModelFileError: the file is damaged, truncated or not GGUF; the architecture, a
            metadata key, a tensor's shape or its quantisation is unsupported or missing. The
            message names the file and the key or tensor.
    """
    g = read_gguf(path)
    config = _config(g)
    wanted = expected_shapes(config)
    dense: dict[str, F32Array] = {}
    quantized: dict[str, QuantizedTensor] = {}
    mm = np.memmap(g.path, dtype=np.uint8, mode="r")
    try:
        for t in g.tensors.values():
            name = hf_name(t.name)
            if name is None or name not in wanted:
                continue
            shape = tuple(reversed(t.dims))
            if shape != wanted[name]:
                raise ModelFileError(
                    g.path,
                    f"shape {list(shape)} (HF order) does not match the metadata, which "
                    f"implies {list(wanted[name])}",
                    tensor=t.name,
                )
            heads = None
            if name.endswith("q_proj.weight"):
                heads = config.num_attention_heads
            elif name.endswith("k_proj.weight"):
                heads = config.num_key_value_heads
            raw = np.asarray(mm[t.begin : t.end])
            if t.type_code in _DENSE:
                values = raw.view(_DENSE[t.type_code]).reshape(shape).astype(np.float32)
                dense[name] = unpermute_rows(values, heads) if heads else values
            elif t.type_code in _BLOCKS and len(shape) == 2:
                rows = raw.reshape(shape[0], -1)
                rows = unpermute_rows(rows, heads) if heads else rows
                quantized[name] = QuantizedTensor(_BLOCKS[t.type_code], shape, rows.tobytes())
            else:
                from gguf import GGMLQuantizationType

                kind = GGMLQuantizationType(t.type_code).name
                raise ModelFileError(
                    g.path,
                    f"quantisation {kind} is not supported (Q8_0, Q4_1, F16 or F32)",
                    tensor=t.name,
                )
    finally:
        del mm
    missing = [n for n in wanted if n not in dense and n not in quantized]
    if missing:
        gguf_names = {v: k for k, v in _GLOBAL_NAMES.items()}
        first = missing[0]
        match = re.fullmatch(r"model\.layers\.(\d+)\.(.+)\.weight", first)
        if match:
            short = {v: k for k, v in _LAYER_NAMES.items()}[match.group(2)]
            first = f"blk.{match.group(1)}.{short}.weight"
        else:
            first = gguf_names.get(first, first)
        extra = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelFileError(g.path, f"missing from the file{extra}", tensor=first)
    return Model(config, dense, g.path, quantized)
