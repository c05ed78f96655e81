"""Model weights from safetensors files, checked tensor by tensor against the config.

A model directory holds ``config.json`` and one or more ``*.safetensors`` files (sharded
models list their shards in ``model.safetensors.index.json``). Tensor names are the HF Llama
ones (``model.layers.N.self_attn.q_proj.weight`` ...). Every tensor the architecture needs must
be present exactly once, with the shape the config implies and a floating dtype (F64, F32, F16
or BF16); the loader converts them to float32 and hands back plain numpy arrays the caller owns.

Diagnosing a damaged file
-------------------------
The ``safetensors`` package refuses a truncated file as a whole ("incomplete metadata"), which
does not say *what* was lost. So the loader first reads each file's header itself (an 8-byte
little-endian length, then a JSON table of ``name -> dtype, shape, data_offsets``) and checks
every entry against the file's real size; the first tensor whose bytes run past the end is
named in the error. Only files that pass are opened with ``safetensors`` (numpy flavour). BF16,
which numpy lacks, is widened to float32 from the raw bytes (a BF16 value is the top half of an
f32).
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from npud.llm.config import ModelConfig
from npud.llm.errors import ModelFileError

F32Array = npt.NDArray[np.float32]

INDEX_FILE = "model.safetensors.index.json"
WEIGHTS_FILE = "model.safetensors"

# Bytes per element of every safetensors dtype we may meet; the floating ones are accepted.
_ITEMSIZE = {
    "BOOL": 1,
    "U8": 1,
    "I8": 1,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
    "I16": 2,
    "U16": 2,
    "F16": 2,
    "BF16": 2,
    "I32": 4,
    "U32": 4,
    "F32": 4,
    "I64": 8,
    "U64": 8,
    "F64": 8,
}
_FLOATING = frozenset({"F64", "F32", "F16", "BF16"})
_MAX_HEADER = 100 * 1024 * 1024  # the safetensors format's own limit


@dataclass(frozen=True, slots=True)
class TensorEntry:
    """One tensor as a safetensors header describes it."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # absolute file offset of the first byte
    end: int  # absolute file offset one past the last byte


def layer_tensor_names(layer: int) -> tuple[str, ...]:
    """The names of the nine tensors of decoder layer ``layer``."""
    p = f"model.layers.{layer}"
    return (
        f"{p}.input_layernorm.weight",
        f"{p}.self_attn.q_proj.weight",
        f"{p}.self_attn.k_proj.weight",
        f"{p}.self_attn.v_proj.weight",
        f"{p}.self_attn.o_proj.weight",
        f"{p}.post_attention_layernorm.weight",
        f"{p}.mlp.gate_proj.weight",
        f"{p}.mlp.up_proj.weight",
        f"{p}.mlp.down_proj.weight",
    )


def expected_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """Every tensor the architecture needs, with its shape (HF layout: ``[out, in]``)."""
    d, i, v = config.hidden_size, config.intermediate_size, config.vocab_size
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (v, d)}
    for layer in range(config.num_hidden_layers):
        names = layer_tensor_names(layer)
        layer_shapes = (
            (d,),
            (config.q_width, d),
            (config.kv_width, d),
            (config.kv_width, d),
            (d, config.q_width),
            (d,),
            (i, d),
            (i, d),
            (d, i),
        )
        shapes.update(zip(names, layer_shapes, strict=True))
    shapes["model.norm.weight"] = (d,)
    if not config.tie_word_embeddings:
        shapes["lm_head.weight"] = (v, d)
    return shapes


def read_header(path: Path) -> list[TensorEntry]:
    """Parse and check a safetensors header against the file's size.

    Raises:
        ModelFileError: the file is unreadable, its header is cut short or not a JSON table,
            an entry is malformed, or a tensor's bytes run past the end of the file (that
            tensor is named).
    """
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            prefix = f.read(8)
            if len(prefix) < 8:
                raise ModelFileError(path, f"truncated: {size} bytes, shorter than the header")
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > _MAX_HEADER or 8 + header_len > size:
                raise ModelFileError(
                    path,
                    f"truncated or corrupt: the header claims {header_len} bytes but the "
                    f"file has {size}",
                )
            header_bytes = f.read(header_len)
    except OSError as exc:
        raise ModelFileError(path, f"cannot read: {exc.strerror or exc}") from exc
    try:
        header = json.loads(header_bytes)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(path, f"corrupt header (not JSON): {exc}") from exc
    if not isinstance(header, dict):
        raise ModelFileError(path, "corrupt header (not a JSON object)")
    data_start = 8 + header_len
    entries: list[TensorEntry] = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        entries.append(_entry(path, name, info, data_start))
    for entry in entries:
        if entry.end > size:
            raise ModelFileError(
                path,
                f"truncated: its bytes end at offset {entry.end} but the file has {size} bytes",
                tensor=entry.name,
            )
    return entries


def _entry(path: Path, name: str, info: Any, data_start: int) -> TensorEntry:
    if not isinstance(info, dict):
        raise ModelFileError(path, "malformed header entry", tensor=name)
    dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if dtype not in _ITEMSIZE:
        raise ModelFileError(path, f"unknown dtype {dtype!r}", tensor=name)
    if not (isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape)):
        raise ModelFileError(path, f"malformed shape {shape!r}", tensor=name)
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(n, int) and n >= 0 for n in offsets)
        and offsets[0] <= offsets[1]
    ):
        raise ModelFileError(path, f"malformed data_offsets {offsets!r}", tensor=name)
    nbytes = math.prod(shape) * _ITEMSIZE[dtype]
    if offsets[1] - offsets[0] != nbytes:
        raise ModelFileError(
            path,
            f"data_offsets span {offsets[1] - offsets[0]} bytes but {dtype}{shape} needs {nbytes}",
            tensor=name,
        )
    return TensorEntry(name, dtype, tuple(shape), data_start + offsets[0], data_start + offsets[1])


def weight_files(model_dir: Path) -> list[Path]:
    """The safetensors files of a model directory (the index's shards, or every file).

    Raises:
        ModelFileError: the index is unreadable or names a missing shard, or there is no
            safetensors file at all.
    """
    index = model_dir / INDEX_FILE
    if index.exists():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
            shards = sorted({str(shard) for shard in weight_map.values()})
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ModelFileError(index, f"cannot read the shard index: {exc}") from exc
        files = [model_dir / shard for shard in shards]
        for file in files:
            if not file.exists():
                raise ModelFileError(file, "shard listed in the index does not exist")
        return files
    files = sorted(model_dir.glob("*.safetensors"))
    if not files:
        raise ModelFileError(model_dir, "no *.safetensors file in the model directory")
    return files


def _read_f32(path: Path, entry: TensorEntry, handle: Any) -> F32Array:
    if entry.dtype == "BF16":
        with path.open("rb") as f:
            f.seek(entry.begin)
            raw = np.frombuffer(f.read(entry.end - entry.begin), dtype="<u2")
        return (raw.astype(np.uint32) << 16).view(np.float32).reshape(entry.shape)
    array = np.asarray(handle.get_tensor(entry.name))
    return np.ascontiguousarray(array, dtype=np.float32)


def _read_all(path: Path, entries: list[TensorEntry]) -> Iterator[tuple[str, F32Array]]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="numpy") as handle:
            for entry in entries:
                yield entry.name, _read_f32(path, entry, handle)
    except SafetensorError as exc:
        raise ModelFileError(path, f"rejected by safetensors: {exc}") from exc


def load_weights(model_dir: Path | str, config: ModelConfig) -> dict[str, F32Array]:
    """Load every tensor the architecture needs from ``model_dir`` as float32.

    Tensors the architecture does not use (rotary caches, a tied ``lm_head``) are skipped
    without being read. The caller owns the returned arrays.

    Raises:
        ModelFileError: a file is damaged or truncated, a needed tensor is missing or present
            twice, has the wrong shape, or has a non-floating dtype; the message names the file
            and the tensor.
    """
    model_dir = Path(model_dir)
    wanted = expected_shapes(config)
    found: dict[str, F32Array] = {}
    where: dict[str, Path] = {}
    for path in weight_files(model_dir):
        entries = {e.name: e for e in read_header(path) if e.name in wanted}
        for name, entry in entries.items():
            if name in where:
                raise ModelFileError(path, f"also present in {where[name]}", tensor=name)
            if entry.dtype not in _FLOATING:
                raise ModelFileError(
                    path,
                    f"dtype {entry.dtype} is not a floating type (want F32, F16, BF16 or F64)",
                    tensor=name,
                )
            if entry.shape != wanted[name]:
                raise ModelFileError(
                    path,
                    f"shape {list(entry.shape)} does not match the config, which implies "
                    f"{list(wanted[name])}",
                    tensor=name,
                )
            where[name] = path
        if entries:
            found.update(_read_all(path, list(entries.values())))
    missing = [name for name in wanted if name not in found]
    if missing:
        extra = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise ModelFileError(
            model_dir, f"missing from every safetensors file{extra}", tensor=missing[0]
        )
    return found


def save_weights(path: Path | str, tensors: Mapping[str, npt.NDArray[Any]]) -> None:
    """Write ``tensors`` to one safetensors file (numpy flavour), replacing it.

    Raises:
        OSError: the file cannot be written.
    """
    from safetensors.numpy import save_file

    save_file({name: np.ascontiguousarray(t) for name, t in tensors.items()}, str(path))
