"""The opcodes of command-stream v1 and the static shape of each op's record.

Each op has a fixed list of tensor operands (by name, in wire order) and a fixed list of
scalar parameters (by name and struct code), so a record's length is known from its opcode
alone and the decoder can refuse a record whose length disagrees. The semantics of every op
are documented in ``docs/sim.md`` and on :class:`Op`.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass


class Op(enum.IntEnum):
    """An opcode; the value is its u16 code on the wire.

    - MATMUL(out[M,N], a[M,K], b[K,N] | b[N,K] with transpose_b): f32 accumulation.
    - ADD/MUL(out, a, b): elementwise; b is a's shape or [N] broadcast over rows of a[..., N].
    - RMSNORM(out[M,D], x[M,D], w[D], eps): x / sqrt(mean(x^2, -1) + eps) * w.
    - ROPE(out[T,H*Dh], x[T,H*Dh], n_heads, head_dim, start_pos, theta): rotate_half.
    - SOFTMAX(out, x), SILU(out, x): over/for the last axis / every element.
    - EMBED(out[T,D], table[V,D], ids[T] I32): row gather; an id out of range faults.
    - KV_WRITE(cache[Hkv,S,Dh], src[T,Hkv*Dh], start_pos): cache[:, start_pos+t] = src[t].
    - ATTENTION(out, q, k_cache, v_cache, n_heads, n_kv_heads, head_dim, start_pos): causal GQA.
    - ARGMAX(out[M] I32, x[M,N]): ties go to the lowest index.
    - COPY(out, x): same element count; casts between float dtypes.
    - BURN(seconds): no operands; occupies its engine for exactly that modelled time.
    - TOPK(values[M,K], ids[M,K] I32, x[M,N]): per row the K largest, highest first, ties to
      the lowest index (what a sampling step reads back instead of the whole row).
    - MATMUL's b and EMBED's table may be block-quantised (Q8_0, Q4_1; see ``dtypes``).
    """

    MATMUL = 1
    ADD = 2
    MUL = 3
    RMSNORM = 4
    ROPE = 5
    SOFTMAX = 6
    SILU = 7
    EMBED = 8
    KV_WRITE = 9
    ATTENTION = 10
    ARGMAX = 11
    COPY = 12
    BURN = 13
    TOPK = 14


MATMUL_TRANSPOSE_B = 0x1
"""Bit 0 of MATMUL's ``flags`` parameter: b is stored [N, K]."""


@dataclass(frozen=True, slots=True)
class OpSpec:
    """The static layout of one op's record: operand names and parameter names/codes."""

    operands: tuple[str, ...]
    writes: tuple[str, ...]  # the operands the op writes (the rest it only reads)
    params: tuple[tuple[str, str], ...]  # (name, struct code) in wire order

    @property
    def params_format(self) -> str:
        """The little-endian struct format of the parameter block."""
        return "<" + "".join(code for _, code in self.params)

    @property
    def params_size(self) -> int:
        """The size of the parameter block in bytes."""
        return struct.calcsize(self.params_format)


_UNARY = OpSpec(("out", "x"), ("out",), ())
_BINARY = OpSpec(("out", "a", "b"), ("out",), ())

SPECS: dict[Op, OpSpec] = {
    Op.MATMUL: OpSpec(("out", "a", "b"), ("out",), (("flags", "I"),)),
    Op.ADD: _BINARY,
    Op.MUL: _BINARY,
    Op.RMSNORM: OpSpec(("out", "x", "w"), ("out",), (("eps", "f"),)),
    Op.ROPE: OpSpec(
        ("out", "x"),
        ("out",),
        (("n_heads", "I"), ("head_dim", "I"), ("start_pos", "I"), ("theta", "f")),
    ),
    Op.SOFTMAX: _UNARY,
    Op.SILU: _UNARY,
    Op.EMBED: OpSpec(("out", "table", "ids"), ("out",), ()),
    Op.KV_WRITE: OpSpec(("cache", "src"), ("cache",), (("start_pos", "I"),)),
    Op.ATTENTION: OpSpec(
        ("out", "q", "k_cache", "v_cache"),
        ("out",),
        (("n_heads", "I"), ("n_kv_heads", "I"), ("head_dim", "I"), ("start_pos", "I")),
    ),
    Op.ARGMAX: _UNARY,
    Op.COPY: _UNARY,
    Op.BURN: OpSpec((), (), (("seconds", "d"),)),
    Op.TOPK: OpSpec(("values", "ids", "x"), ("values", "ids"), ()),
}
"""The record layout of every opcode."""
