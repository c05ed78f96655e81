"""The simulated NPU's execution unit: runs decoded ops for real with numpy on buffer memory.

Every op reads its inputs into fresh float32 arrays (I8 tensors dequantised with their scale),
computes in float32 and only then writes its output, cast to the output dtype; so an op whose
output overlaps an input still sees the input as it was. Floating-point exceptions (overflow
in an f16 cast, ``exp`` of a large number) follow IEEE rules silently, as on the hardware.
The only data-dependent fault is an EMBED id outside the table, which fails the job.

The kernels are batch-invariant: a row of an op over M rows (MATMUL, RMSNORM, the elementwise
ops, EMBED, ARGMAX) is computed with the same arithmetic in the same order whatever M is and
whichever rows sit beside it, so a decode step batched over several sequences gives each of
them the bits it would get alone (``tests/devices/test_sim_batch_invariance.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from npud.isa import CommandStreamError, DType, Instruction, Op, Tensor, accesses, decode

F32 = npt.NDArray[np.float32]
Memory = Any  # a writable buffer: bytearray, mmap, or a writable memoryview


class JobCancelled(Exception):
    """The job was cancelled between two of its ops (process mode: abort or engine reset)."""


@dataclass(frozen=True, slots=True)
class ExecStats:
    """What one program moved."""

    bytes_read: int
    bytes_written: int


class _Machine:
    """Loads and stores tensors in the bound buffers."""

    __slots__ = ("memory",)

    def __init__(self, memory: Sequence[Memory]) -> None:
        self.memory = memory

    def raw(self, t: Tensor) -> npt.NDArray[Any]:
        arr = np.frombuffer(
            self.memory[t.slot], dtype=t.dtype.numpy, count=t.numel, offset=t.offset
        )
        return arr.reshape(t.shape)

    def load(self, t: Tensor) -> F32:
        arr = self.raw(t).astype(np.float32)
        if t.dtype is DType.I8:
            arr *= np.float32(t.scale)
        return arr

    def store(self, t: Tensor, value: npt.NDArray[Any]) -> None:
        dst = self.raw(t)
        value = value.reshape(t.shape)
        if t.dtype is DType.I8:
            q = np.clip(np.rint(value / np.float32(t.scale)), -128, 127)
            dst[...] = q.astype(np.int8)
        else:
            dst[...] = value.astype(t.dtype.numpy)


def _matmul(m: _Machine, ins: Instruction) -> None:
    # Why one matrix-vector product per row: a GEMM over M rows is blocked and vectorised
    # according to M, so a row's result can round differently with other rows beside it, and
    # a near-tie between two logits can flip. A decode step batched over sequences must give
    # each sequence exactly what it gets alone, so each output row is one GEMV of the same
    # shape, whatever M is: the same arithmetic in the same order for that row.
    a, b = m.load(ins.operand("a")), m.load(ins.operand("b"))
    w = b if ins.params.transpose_b else b.T  # [N, K]
    out = np.empty((a.shape[0], w.shape[0]), dtype=np.float32)
    for row in range(a.shape[0]):
        out[row] = w @ a[row]
    m.store(ins.operand("out"), out)


def _add(m: _Machine, ins: Instruction) -> None:
    m.store(ins.operand("out"), m.load(ins.operand("a")) + m.load(ins.operand("b")))


def _mul(m: _Machine, ins: Instruction) -> None:
    m.store(ins.operand("out"), m.load(ins.operand("a")) * m.load(ins.operand("b")))


def _rmsnorm(m: _Machine, ins: Instruction) -> None:
    # Row by row for the same reason as MATMUL: each row's mean is one reduction of one row.
    x, w = m.load(ins.operand("x")), m.load(ins.operand("w"))
    rows = x.reshape(-1, x.shape[-1])
    out = np.empty_like(rows)
    eps = np.float32(ins.params.eps)
    for row in range(rows.shape[0]):
        v = rows[row]
        out[row] = v / np.sqrt(np.mean(v * v) + eps) * w
    m.store(ins.operand("out"), out)


def _rope(m: _Machine, ins: Instruction) -> None:
    p = ins.params
    x = m.load(ins.operand("x"))
    t, h, dh = x.shape[0], p.n_heads, p.head_dim
    x = x.reshape(t, h, dh)
    half = dh // 2
    inv_freq = np.float64(p.theta) ** (-2.0 * np.arange(half, dtype=np.float64) / dh)
    angle = (p.start_pos + np.arange(t, dtype=np.float64))[:, None] * inv_freq[None, :]
    cos = np.cos(angle).astype(np.float32)[:, None, :]
    sin = np.sin(angle).astype(np.float32)[:, None, :]
    x1, x2 = x[..., :half], x[..., half:]
    out = np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    m.store(ins.operand("out"), out)


def _softmax_last(x: F32) -> F32:
    e = np.exp(x - np.max(x, axis=-1, keepdims=True))
    result: F32 = e / np.sum(e, axis=-1, keepdims=True)
    return result


def _softmax(m: _Machine, ins: Instruction) -> None:
    m.store(ins.operand("out"), _softmax_last(m.load(ins.operand("x"))))


def _silu(m: _Machine, ins: Instruction) -> None:
    x = m.load(ins.operand("x"))
    m.store(ins.operand("out"), x / (np.float32(1.0) + np.exp(-x)))


def _embed(m: _Machine, ins: Instruction) -> None:
    table_t = ins.operand("table")
    ids = m.raw(ins.operand("ids")).astype(np.int64)
    vocab = table_t.shape[0]
    bad = np.flatnonzero((ids < 0) | (ids >= vocab))
    if bad.size:
        pos = int(bad[0])
        raise CommandStreamError(
            ins.index,
            ins.op.name,
            "ids",
            f"id {int(ids[pos])} at position {pos} out of range [0, {vocab})",
        )
    rows = m.raw(table_t)[ids].astype(np.float32)
    if table_t.dtype is DType.I8:
        rows *= np.float32(table_t.scale)
    m.store(ins.operand("out"), rows)


def _kv_write(m: _Machine, ins: Instruction) -> None:
    cache_t = ins.operand("cache")
    src = m.load(ins.operand("src"))
    hkv, _, dh = cache_t.shape
    t = src.shape[0]
    start = ins.params.start_pos
    cache = m.raw(cache_t)
    cache[:, start : start + t, :] = src.reshape(t, hkv, dh).transpose(1, 0, 2).astype(cache.dtype)


def _attention(m: _Machine, ins: Instruction) -> None:
    # Grouped-query attention, vectorised per kv head: the `group` query heads that share kv
    # head k are stacked into one (group*T, Dh) matrix, so each kv head is one matmul pair.
    p = ins.params
    q = m.load(ins.operand("q"))
    t = q.shape[0]
    h, hkv, dh = p.n_heads, p.n_kv_heads, p.head_dim
    group = h // hkv
    last = p.start_pos + t
    k = m.load(ins.operand("k_cache"))[:, :last, :]  # (Hkv, L, Dh)
    v = m.load(ins.operand("v_cache"))[:, :last, :]
    qh = q.reshape(t, hkv, group, dh).transpose(1, 2, 0, 3).reshape(hkv, group * t, dh)
    scores = (qh @ k.transpose(0, 2, 1)) * np.float32(1.0 / np.sqrt(dh))  # (Hkv, G*T, L)
    query_pos = np.tile(p.start_pos + np.arange(t), group)  # row r is token r % T
    mask = np.arange(last)[None, :] > query_pos[:, None]
    scores = np.where(mask[None, :, :], np.float32(-np.inf), scores)
    out = _softmax_last(scores.astype(np.float32)) @ v  # (Hkv, G*T, Dh)
    out = out.reshape(hkv, group, t, dh).transpose(2, 0, 1, 3).reshape(t, h * dh)
    m.store(ins.operand("out"), out)


def _argmax(m: _Machine, ins: Instruction) -> None:
    x = m.load(ins.operand("x"))
    m.raw(ins.operand("out"))[...] = np.argmax(x, axis=-1).astype(np.int32)


def _copy(m: _Machine, ins: Instruction) -> None:
    out_t, x_t = ins.operand("out"), ins.operand("x")
    if x_t.dtype is DType.I32:
        m.raw(out_t)[...] = m.raw(x_t).reshape(out_t.shape).copy()
    else:
        m.store(out_t, m.load(x_t))


def _burn(m: _Machine, ins: Instruction) -> None:
    del m, ins  # BURN only occupies time, which the cost model accounts for


_KERNELS: dict[Op, Callable[[_Machine, Instruction], None]] = {
    Op.MATMUL: _matmul,
    Op.ADD: _add,
    Op.MUL: _mul,
    Op.RMSNORM: _rmsnorm,
    Op.ROPE: _rope,
    Op.SOFTMAX: _softmax,
    Op.SILU: _silu,
    Op.EMBED: _embed,
    Op.KV_WRITE: _kv_write,
    Op.ATTENTION: _attention,
    Op.ARGMAX: _argmax,
    Op.COPY: _copy,
    Op.BURN: _burn,
}


def execute(
    instructions: Sequence[Instruction],
    memory: Sequence[Memory],
    *,
    cancelled: Callable[[], bool] | None = None,
) -> ExecStats:
    """Run decoded, validated instructions on the bound buffers, by slot.

    ``memory[slot]`` must be a writable buffer at least as large as the decoder was told.
    Ops run in order; an op that faults leaves earlier ops' writes in place (as a real
    device would) and nothing of its own. ``cancelled``, if given, is polled before each op:
    a job cancelled mid-way stops there, its earlier ops' writes kept.

    Raises:
        CommandStreamError: a data-dependent fault (an EMBED id out of range), naming the op.
        JobCancelled: ``cancelled()`` returned True before an op.
    """
    machine = _Machine(memory)
    read = written = 0
    with np.errstate(all="ignore"):
        for ins in instructions:
            if cancelled is not None and cancelled():
                raise JobCancelled(f"cancelled before op {ins.index} ({ins.op.name})")
            _KERNELS[ins.op](machine, ins)
            for a in accesses(ins):
                if a.write:
                    written += a.bytes_moved
                else:
                    read += a.bytes_moved
    return ExecStats(read, written)


def decode_job(
    command: bytes, binding_sizes: Sequence[int], writable: Sequence[bool]
) -> list[Instruction]:
    """Decode a job's command stream against its bindings (sizes and read/write use).

    Raises:
        CommandStreamError: the stream is malformed, an operand is out of its buffer or its
            slot is unbound, or an op writes a slot bound read-only.
    """
    instructions = decode(command, binding_sizes)
    for ins in instructions:
        for a in accesses(ins):
            if a.write and not writable[a.tensor.slot]:
                raise CommandStreamError(
                    ins.index,
                    ins.op.name,
                    a.name,
                    f"writes slot {a.tensor.slot}, which the job bound read-only",
                )
    return instructions
