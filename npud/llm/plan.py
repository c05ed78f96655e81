"""The memory plan: which buffers a model needs on the device and where each tensor lives.

Buffers, in binding-slot order (every compiled step binds all of them, so slot numbers are
fixed for a model):

====  ===================  ========  =====================================================
slot  name                 kind      contents
====  ===================  ========  =====================================================
0     ``tokens``           state     I32 ``[S+1]``: the prompt ids, then each generated id;
                                     ARGMAX of the step ending at position p writes p+1, and
                                     the next decode step embeds it from there
1     ``kv``               state     per layer K then V, each ``[Hkv, S, Dh]``
2     ``scratch``          scratch   activations for up to one prefill chunk of tokens
3     ``weights.global``   weights   embedding table, final norm, output head (if untied)
4+l   ``weights.layer.l``  weights   the nine tensors of decoder layer ``l``
====  ===================  ========  =====================================================

Weights are packed one buffer per layer (plus one global) rather than one per tensor: a real
model keeps a modest binding count (L + 4), and each pack is keyed by the SHA-256 of its bytes,
so two processes loading the same model find the same persistent buffers, and a fine-tuned model
that changes one layer re-uploads only that layer. Keeping the generated ids on the device means
a decode step needs nothing uploaded: it reads its input from the previous step's ARGMAX.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from npud.errors import InvalidArgument
from npud.isa import DType, Tensor
from npud.llm.config import ModelConfig
from npud.llm.model import Model, QuantizedTensor
from npud.llm.sampling import MAX_CANDIDATES
from npud.llm.weights import layer_tensor_names

ALIGN = 64
"""Byte alignment of every tensor inside its buffer."""


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


class BufferKind(enum.StrEnum):
    """What a planned buffer holds; backends map it to the daemon's buffer usage."""

    WEIGHTS = "weights"
    STATE = "state"
    SCRATCH = "scratch"


class WeightDType(enum.StrEnum):
    """How weight matrices are stored on the device (norm vectors always stay f32).

    ``native`` keeps each matrix as the model holds it: a GGUF model's Q8_0/Q4_1 blocks go to
    the device unchanged, float32 matrices stay float32. The other choices convert every
    matrix (dequantising blocks first).
    """

    NATIVE = "native"
    F32 = "f32"
    F16 = "f16"
    I8 = "i8"  # symmetric per-tensor scale: real = q * max|w| / 127


@dataclass(frozen=True, slots=True)
class PlacedTensor:
    """Where one named model tensor sits: its buffer, offset, dtype and scale."""

    buffer: str
    offset: int
    shape: tuple[int, ...]
    dtype: DType
    scale: float = 0.0

    def ref(self, slot: int) -> Tensor:
        """The ISA operand for this tensor bound at ``slot``."""
        return Tensor(slot, self.offset, self.shape, self.dtype, self.scale)


@dataclass(frozen=True, slots=True)
class WeightPack:
    """One weights buffer: its packed bytes and content key (``sha256:<hex>``)."""

    name: str
    data: bytes = field(repr=False)
    key: str

    @property
    def size(self) -> int:
        """Bytes in the pack."""
        return len(self.data)


@dataclass(frozen=True, slots=True)
class BufferSpec:
    """A buffer the plan needs: name, byte size, kind, and the pack for weights."""

    name: str
    size: int
    kind: BufferKind
    pack: WeightPack | None = None


def _encode(
    source: npt.NDArray[np.float32] | QuantizedTensor, dtype: WeightDType
) -> tuple[bytes, DType, float]:
    if isinstance(source, QuantizedTensor):
        if dtype is WeightDType.NATIVE:
            return source.data, source.dtype, 0.0
        array = source.dequantize()
    else:
        array = source
    if dtype is WeightDType.F16 and array.ndim == 2:
        return array.astype("<f2").tobytes(), DType.F16, 0.0
    if dtype is WeightDType.I8 and array.ndim == 2:
        peak = float(np.max(np.abs(array)))
        scale = peak / 127.0 if peak > 0 else 1.0
        q = np.clip(np.rint(array / scale), -127, 127).astype(np.int8)
        return q.tobytes(), DType.I8, scale
    return array.astype("<f4").tobytes(), DType.F32, 0.0


def _pack(
    name: str,
    tensors: list[tuple[str, npt.NDArray[np.float32] | QuantizedTensor]],
    dtype: WeightDType,
) -> tuple[WeightPack, dict[str, PlacedTensor]]:
    # Why the key covers only the bytes: the offsets are a pure function of the tensor list
    # and the code that packs it, so equal bytes mean an equal layout for the same npud.
    blob = bytearray()
    placed: dict[str, PlacedTensor] = {}
    for tensor_name, source in tensors:
        data, wire_dtype, scale = _encode(source, dtype)
        offset = _align(len(blob))
        blob += bytes(offset - len(blob)) + data
        placed[tensor_name] = PlacedTensor(name, offset, tuple(source.shape), wire_dtype, scale)
    blob += bytes(_align(len(blob)) - len(blob))
    key = "sha256:" + hashlib.sha256(blob).hexdigest()
    return WeightPack(name, bytes(blob), key), placed


@dataclass(frozen=True, slots=True)
class ScratchLayout:
    """Offsets of the activation tensors inside the scratch buffer (for ``chunk`` tokens)."""

    chunk: int
    offsets: dict[str, int]
    widths: dict[str, int]
    size: int

    def ref(self, slot: int, name: str, rows: int, *, row: int = 0) -> Tensor:
        """``rows`` rows of activation ``name`` starting at ``row``, as an f32 operand."""
        width = self.widths[name]
        return Tensor(slot, self.offsets[name] + row * width * 4, (rows, width), DType.F32)

    def candidates(self, slot: int, rows: int, k: int) -> tuple[Tensor, Tensor]:
        """TOPK outputs for ``rows`` rows of ``k``: values ``[rows, k]`` f32, then the ids
        ``[rows, k]`` I32 right after them, so one readback of ``8 * rows * k`` bytes from
        the values' offset returns both."""
        base = self.offsets["cands"]
        values = Tensor(slot, base, (rows, k), DType.F32)
        return values, Tensor(slot, base + rows * k * 4, (rows, k), DType.I32)


@dataclass(frozen=True, slots=True)
class MemoryPlan:
    """Every buffer and tensor placement for running ``model`` with a given context length.

    ``max_seq`` is the KV cache length S (prompt plus generated tokens); ``chunk`` the prefill
    chunk size (the largest step the scratch buffer holds).
    """

    max_seq: int
    chunk: int
    weight_dtype: WeightDType
    buffers: tuple[BufferSpec, ...]
    weights: dict[str, PlacedTensor]
    scratch: ScratchLayout
    kv_bytes: int  # bytes of one [Hkv, S, Dh] f32 cache (one of K or V of one layer)

    def slot(self, name: str) -> int:
        """The binding slot of buffer ``name``.

        Raises:
            KeyError: no such buffer in the plan.
        """
        for index, spec in enumerate(self.buffers):
            if spec.name == name:
                return index
        raise KeyError(name)

    def packs(self) -> Iterator[WeightPack]:
        """The weight packs, in slot order."""
        for spec in self.buffers:
            if spec.pack is not None:
                yield spec.pack

    @property
    def weight_bytes(self) -> int:
        """Total bytes of all weight packs."""
        return sum(p.size for p in self.packs())

    def statistics(self) -> PlanStatistics:
        """Sizes of the plan's buffers by kind."""
        by_kind = dict.fromkeys(BufferKind, 0)
        for spec in self.buffers:
            by_kind[spec.kind] += spec.size
        return PlanStatistics(
            buffers=len(self.buffers),
            weight_bytes=by_kind[BufferKind.WEIGHTS],
            state_bytes=by_kind[BufferKind.STATE],
            scratch_bytes=by_kind[BufferKind.SCRATCH],
        )


@dataclass(frozen=True, slots=True)
class PlanStatistics:
    """A memory plan's footprint."""

    buffers: int
    weight_bytes: int
    state_bytes: int
    scratch_bytes: int


def scratch_layout(cfg: ModelConfig, rows: int, *, head_rows: int) -> ScratchLayout:
    """Offsets of the activations of a step over ``rows`` tokens, ``head_rows`` of which go
    through the final norm and the output head (1 for a prefill chunk, every row for a decode
    step batched over sequences)."""
    widths = {
        "x0": cfg.hidden_size,  # the residual stream, ping-ponged between x0 and x1
        "x1": cfg.hidden_size,
        "h": cfg.hidden_size,  # normalised input of attention / MLP
        "q": cfg.q_width,
        "k": cfg.kv_width,
        "v": cfg.kv_width,
        "q_rot": cfg.q_width,
        "k_rot": cfg.kv_width,
        "attn": cfg.q_width,
        "proj": cfg.hidden_size,  # o_proj / down_proj output, added to the residual
        "gate": cfg.intermediate_size,
        "up": cfg.intermediate_size,
        "act": cfg.intermediate_size,
        "mlp": cfg.intermediate_size,
        "final": cfg.hidden_size,
        "logits": cfg.vocab_size,
        "cands": 2 * MAX_CANDIDATES,  # TOPK of the logits: values, then ids
    }
    offsets: dict[str, int] = {}
    cursor = 0
    for name, width in widths.items():
        n = head_rows if name in ("final", "logits", "cands") else rows
        offsets[name] = cursor
        cursor = _align(cursor + n * width * 4)
    return ScratchLayout(rows, offsets, widths, cursor)


TOKENS, KV, SCRATCH, GLOBAL = "tokens", "kv", "scratch", "weights.global"


def layer_buffer(layer: int) -> str:
    """The name of the weights buffer of decoder layer ``layer``."""
    return f"weights.layer.{layer}"


def plan_memory(
    model: Model,
    *,
    max_seq: int | None = None,
    chunk: int = 16,
    weight_dtype: WeightDType | str = WeightDType.NATIVE,
) -> MemoryPlan:
    """Lay out ``model`` in device buffers.

    Args:
        model: the loaded model (its arrays are copied into the packs).
        max_seq: KV cache length; defaults to ``max_position_embeddings``.
        chunk: prefill chunk size in tokens.
        weight_dtype: storage of the weight matrices.

    Raises:
        InvalidArgument: ``max_seq`` or ``chunk`` is not positive, or ``max_seq`` exceeds the
            model's ``max_position_embeddings``.
    """
    cfg = model.config
    seq = cfg.max_position_embeddings if max_seq is None else max_seq
    if not 0 < seq <= cfg.max_position_embeddings:
        raise InvalidArgument(
            f"max_seq {seq} must be within 1..{cfg.max_position_embeddings} "
            "(the model's max_position_embeddings)"
        )
    if chunk <= 0:
        raise InvalidArgument(f"prefill chunk must be positive, got {chunk}")
    wdtype = WeightDType(weight_dtype)
    chunk = min(chunk, seq)

    global_names = ["model.embed_tokens.weight", "model.norm.weight"]
    if not cfg.tie_word_embeddings:
        global_names.append("lm_head.weight")
    global_tensors = [(n, model.weight(n)) for n in global_names]
    packs_and_places = [_pack(GLOBAL, global_tensors, wdtype)]
    for layer in range(cfg.num_hidden_layers):
        names = layer_tensor_names(layer)
        packs_and_places.append(
            _pack(layer_buffer(layer), [(n, model.weight(n)) for n in names], wdtype)
        )
    weights: dict[str, PlacedTensor] = {}
    for _, placed in packs_and_places:
        weights.update(placed)
    if cfg.tie_word_embeddings:
        weights["lm_head.weight"] = weights["model.embed_tokens.weight"]

    # every row may go through the head: scoring a sequence reads each row's candidates
    scratch = scratch_layout(cfg, chunk, head_rows=chunk)

    kv_bytes = cfg.num_key_value_heads * seq * cfg.head_dim * 4
    buffers = [
        BufferSpec(TOKENS, _align((seq + 1) * 4), BufferKind.STATE),
        BufferSpec(KV, 2 * cfg.num_hidden_layers * kv_bytes, BufferKind.STATE),
        BufferSpec(SCRATCH, scratch.size, BufferKind.SCRATCH),
    ]
    buffers += [
        BufferSpec(pack.name, pack.size, BufferKind.WEIGHTS, pack) for pack, _ in packs_and_places
    ]
    return MemoryPlan(seq, chunk, wdtype, tuple(buffers), weights, scratch, kv_bytes)
