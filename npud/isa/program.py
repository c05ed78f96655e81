"""Building command streams: :class:`Program` collects ops and encodes them to bytes.

A program is a list of :class:`Instruction` records. The builder methods take operands as
:class:`~npud.isa.tensor.Tensor` references (binding slot + byte offset + shape + dtype) and
scalar parameters by keyword; :meth:`Program.encode` packs them into the v1 wire format and,
by default, runs the validating decoder over the result, so a program that encodes is one
the device will accept (bounds against the bound buffers are checked again at submit time).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from npud.isa.layout import HEADER, MAGIC, RECORD_HEADER, TENSOR, VERSION
from npud.isa.opcodes import MATMUL_TRANSPOSE_B, SPECS, Op
from npud.isa.tensor import Tensor


@dataclass(frozen=True, slots=True)
class Params:
    """The scalar parameters of one op; each op uses the subset its spec names."""

    flags: int = 0
    eps: float = 0.0
    n_heads: int = 0
    n_kv_heads: int = 0
    head_dim: int = 0
    start_pos: int = 0
    theta: float = 0.0
    seconds: float = 0.0

    @property
    def transpose_b(self) -> bool:
        """MATMUL: whether b is stored [N, K]."""
        return bool(self.flags & MATMUL_TRANSPOSE_B)


@dataclass(frozen=True, slots=True)
class Instruction:
    """One decoded (or built) op record: its index in the stream, opcode, operands, params."""

    index: int
    op: Op
    operands: tuple[Tensor, ...]
    params: Params = Params()

    def operand(self, name: str) -> Tensor:
        """The operand called ``name`` in the op's spec (``"out"``, ``"a"``, ...).

        Raises:
            KeyError: the op has no operand of that name.
        """
        names = SPECS[self.op].operands
        if name not in names:
            raise KeyError(f"{self.op.name} has no operand {name!r} (it has {names})")
        return self.operands[names.index(name)]

    def named_operands(self) -> Iterator[tuple[str, Tensor]]:
        """``(name, tensor)`` pairs in wire order."""
        return zip(SPECS[self.op].operands, self.operands, strict=True)


def _pack_params(op: Op, params: Params) -> bytes:
    spec = SPECS[op]
    values = [getattr(params, name) for name, _ in spec.params]
    return struct.pack(spec.params_format, *values)


def encode_instructions(instructions: Sequence[Instruction]) -> bytes:
    """Pack instructions into a v1 stream without validating them (tests build bad ones)."""
    records = []
    for ins in instructions:
        body = bytearray()
        for t in ins.operands:
            dims = [*t.shape, *([0] * (4 - len(t.shape)))]
            body += TENSOR.pack(t.slot, int(t.dtype), t.ndim, t.scale, t.offset, *dims)
        body += _pack_params(ins.op, ins.params)
        length = RECORD_HEADER.size + len(body)
        records.append(RECORD_HEADER.pack(int(ins.op), len(ins.operands), 0, length) + body)
    total = HEADER.size + sum(len(r) for r in records)
    return HEADER.pack(MAGIC, VERSION, 0, len(records), total) + b"".join(records)


class Program:
    """A command-stream builder (an identity object: it accumulates ops).

    Example::

        prog = Program()
        prog.matmul(out=T(2, 0, (1, 8)), a=T(0, 0, (1, 4)), b=T(1, 0, (8, 4)), transpose_b=True)
        blob = prog.encode()
    """

    __slots__ = ("_instructions",)

    def __init__(self) -> None:
        self._instructions: list[Instruction] = []

    @property
    def instructions(self) -> tuple[Instruction, ...]:
        """The ops added so far, in order."""
        return tuple(self._instructions)

    def __len__(self) -> int:
        return len(self._instructions)

    def _add(self, op: Op, operands: Sequence[Tensor], params: Params = Params()) -> Program:
        self._instructions.append(Instruction(len(self._instructions), op, tuple(operands), params))
        return self

    def matmul(self, out: Tensor, a: Tensor, b: Tensor, *, transpose_b: bool = False) -> Program:
        """out[M,N] = a[M,K] @ b[K,N] (or a @ b[N,K].T when ``transpose_b``), f32 accumulate."""
        flags = MATMUL_TRANSPOSE_B if transpose_b else 0
        return self._add(Op.MATMUL, (out, a, b), Params(flags=flags))

    def add(self, out: Tensor, a: Tensor, b: Tensor) -> Program:
        """out = a + b (b is a's shape, or [N] broadcast over the rows of a[..., N])."""
        return self._add(Op.ADD, (out, a, b))

    def mul(self, out: Tensor, a: Tensor, b: Tensor) -> Program:
        """out = a * b (b is a's shape, or [N] broadcast over the rows of a[..., N])."""
        return self._add(Op.MUL, (out, a, b))

    def rmsnorm(self, out: Tensor, x: Tensor, w: Tensor, *, eps: float = 1e-5) -> Program:
        """out = x / sqrt(mean(x^2, axis=-1) + eps) * w."""
        return self._add(Op.RMSNORM, (out, x, w), Params(eps=eps))

    def rope(
        self,
        out: Tensor,
        x: Tensor,
        *,
        n_heads: int,
        head_dim: int,
        start_pos: int,
        theta: float = 10000.0,
    ) -> Program:
        """Rotary position embedding, rotate_half convention, token t at start_pos + t."""
        params = Params(n_heads=n_heads, head_dim=head_dim, start_pos=start_pos, theta=theta)
        return self._add(Op.ROPE, (out, x), params)

    def softmax(self, out: Tensor, x: Tensor) -> Program:
        """Numerically stable softmax over the last axis."""
        return self._add(Op.SOFTMAX, (out, x))

    def silu(self, out: Tensor, x: Tensor) -> Program:
        """out = x * sigmoid(x)."""
        return self._add(Op.SILU, (out, x))

    def embed(self, out: Tensor, table: Tensor, ids: Tensor) -> Program:
        """out[t] = table[ids[t]]; an id outside [0, V) fails the job."""
        return self._add(Op.EMBED, (out, table, ids))

    def kv_write(self, cache: Tensor, src: Tensor, *, start_pos: int) -> Program:
        """cache[:, start_pos + t, :] = src[t].reshape(Hkv, Dh)."""
        return self._add(Op.KV_WRITE, (cache, src), Params(start_pos=start_pos))

    def attention(
        self,
        out: Tensor,
        q: Tensor,
        k_cache: Tensor,
        v_cache: Tensor,
        *,
        n_heads: int,
        n_kv_heads: int,
        head_dim: int,
        start_pos: int,
    ) -> Program:
        """Causal grouped-query attention of q's tokens over the cache, scale 1/sqrt(Dh)."""
        params = Params(
            n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=head_dim, start_pos=start_pos
        )
        return self._add(Op.ATTENTION, (out, q, k_cache, v_cache), params)

    def argmax(self, out: Tensor, x: Tensor) -> Program:
        """out[m] = argmax(x[m, :]) as I32, ties to the lowest index."""
        return self._add(Op.ARGMAX, (out, x))

    def topk(self, values: Tensor, ids: Tensor, x: Tensor) -> Program:
        """values/ids[m] = the K largest of x[m, :] and their indices, ties to the lowest index."""
        return self._add(Op.TOPK, (values, ids, x))

    def copy(self, out: Tensor, x: Tensor) -> Program:
        """out = x with the same element count, cast to out's dtype."""
        return self._add(Op.COPY, (out, x))

    def burn(self, seconds: float) -> Program:
        """Occupy the engine for exactly ``seconds`` of modelled time (no operands)."""
        return self._add(Op.BURN, (), Params(seconds=seconds))

    def encode(self, *, validate: bool = True) -> bytes:
        """The program as a v1 command stream; the caller owns the returned bytes.

        Raises:
            CommandStreamError: ``validate`` is set and an op is malformed (wrong dtype,
                mismatched shapes, bad parameter); the message names the op and the field.
        """
        blob = encode_instructions(self._instructions)
        if validate:
            from npud.isa.decode import decode

            decode(blob)
        return blob
