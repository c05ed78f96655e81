"""The simulated NPU's execution unit: runs decoded ops for real with numpy on buffer memory.

Every op reads its inputs into fresh float32 arrays (I8 tensors dequantised with their scale,
Q8_0/Q4_1 weights block by block, see :func:`dequantize`), computes in float32 and only then
writes its output, cast to the output dtype; so an op whose output overlaps an input still
sees the input as it was. Floating-point exceptions (overflow
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
from npud.isa.dtypes import QUANTIZED_DTYPES

F32 = npt.NDArray[np.float32]
Memory = Any  # a writable buffer: bytearray, mmap, or a writable memoryview


def dequantize(raw: npt.NDArray[np.uint8], dtype: DType, shape: tuple[int, ...]) -> F32:
    """Float32 values of block-quantised bytes (GGUF layout; see :mod:`npud.isa.dtypes`).

    ``raw`` holds whole blocks, row-major; ``shape``'s last dimension is a multiple of 32.
    The result is a new array the caller owns.
    """
    blocks = raw.reshape(-1, dtype.itemsize)
    if dtype is DType.Q8_0:
        d = blocks[:, :2].copy().view("<f2").astype(np.float32)
        q = blocks[:, 2:].view(np.int8).astype(np.float32)
        return (q * d).reshape(shape)
    d = blocks[:, 0:2].copy().view("<f2").astype(np.float32)
    m = blocks[:, 2:4].copy().view("<f2").astype(np.float32)
    packed = blocks[:, 4:]
    q = np.concatenate([packed & 0x0F, packed >> 4], axis=1).astype(np.float32)
    return (q * d + m).reshape(shape)


class DequantCache:
    """Float32 values of block-quantised weights, kept between jobs (a simulation speed-up).

    Why it exists, and why it is exact: the device holds the weights as blocks (the cost
    model charges their packed bytes), and every job reads them through :func:`dequantize`.
    Widening a 100 MB model's blocks to float32 on every decode step costs the host seconds
    per token, so the executor remembers the values of each weight operand it widened, with a
    private copy of the bytes they came from. A later job reuses them only after comparing
    those bytes with the operand's bytes now (a vectorised comparison, ~20x cheaper than
    widening again), so a rewritten buffer, a reused handle or another buffer at the same
    address is never served stale values: the results are the same bytes as without the
    cache. Bounded by ``limit_bytes`` of float32 values, least recently used first out.
    Shared by the threads of one device process, hence its lock (held only for dict updates).
    """

    __slots__ = ("_entries", "_held", "_hits", "_lock", "_misses", "limit_bytes")

    def __init__(self, limit_bytes: int = 1 << 30) -> None:
        import threading
        from collections import OrderedDict

        self.limit_bytes = limit_bytes
        self._entries: OrderedDict[tuple[int, int, DType, tuple[int, ...]], tuple[Any, F32]]
        self._entries = OrderedDict()
        self._lock = threading.Lock()
        self._held = 0
        self._hits = 0
        self._misses = 0

    def values(self, memory: Memory, t: Tensor) -> F32:
        """The float32 values of quantised operand ``t`` in ``memory`` (read-only array)."""
        raw = np.frombuffer(memory, dtype=np.uint8, count=t.nbytes, offset=t.offset)
        word = np.uint64 if t.nbytes % 8 == 0 else np.uint8
        key = (id(memory), t.offset, t.dtype, t.shape)
        with self._lock:
            hit = self._entries.get(key)
            if hit is not None:
                self._entries.move_to_end(key)
        if hit is not None and np.array_equal(hit[0], raw.view(word)):
            self._hits += 1
            return hit[1]
        self._misses += 1
        values = dequantize(raw, t.dtype, t.shape)
        values.flags.writeable = False
        if values.nbytes <= self.limit_bytes:
            with self._lock:
                old = self._entries.pop(key, None)
                if old is not None:
                    self._held -= old[1].nbytes
                self._entries[key] = (raw.copy().view(word), values)
                self._held += values.nbytes
                while self._held > self.limit_bytes:
                    _, (_, evicted) = self._entries.popitem(last=False)
                    self._held -= evicted.nbytes
        return values

    def statistics(self) -> DequantCacheStatistics:
        """Entries, float32 bytes held, hits and misses so far."""
        with self._lock:
            return DequantCacheStatistics(len(self._entries), self._held, self._hits, self._misses)


@dataclass(frozen=True, slots=True)
class DequantCacheStatistics:
    """A :class:`DequantCache`'s state."""

    entries: int
    bytes_held: int
    hits: int
    misses: int


DEQUANT_CACHE = DequantCache()
"""The cache every job of this process shares unless ``execute`` is given another."""


class JobCancelled(Exception):
    """The job was cancelled between two of its ops (process mode: abort or engine reset)."""


@dataclass(frozen=True, slots=True)
class ExecStats:
    """What one program moved."""

    bytes_read: int
    bytes_written: int


class _Machine:
    """Loads and stores tensors in the bound buffers."""

    __slots__ = ("cache", "memory")

    def __init__(self, memory: Sequence[Memory], cache: DequantCache | None) -> None:
        self.memory = memory
        self.cache = cache

    def raw(self, t: Tensor) -> npt.NDArray[Any]:
        """The operand's elements in place (a block dtype: its bytes, one row of blocks each)."""
        if t.dtype in QUANTIZED_DTYPES:
            arr = np.frombuffer(
                self.memory[t.slot], dtype=np.uint8, count=t.nbytes, offset=t.offset
            )
            return arr.reshape(*t.shape[:-1], t.dtype.nbytes(t.shape[-1]))
        arr = np.frombuffer(
            self.memory[t.slot], dtype=t.dtype.numpy, count=t.numel, offset=t.offset
        )
        return arr.reshape(t.shape)

    def load(self, t: Tensor) -> F32:
        if t.dtype in QUANTIZED_DTYPES:
            if self.cache is not None:
                return self.cache.values(self.memory[t.slot], t)
            return dequantize(self.raw(t), t.dtype, t.shape)
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
    if table_t.dtype in QUANTIZED_DTYPES:
        picked = m.raw(table_t)[ids]
        rows = dequantize(picked, table_t.dtype, (ids.size, table_t.shape[1]))
        m.store(ins.operand("out"), rows)
        return
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


def _topk(m: _Machine, ins: Instruction) -> None:
    # Why a stable sort of the negated row: it orders by value descending and keeps equal
    # values in index order, which is the documented tie rule (lowest index first).
    x = m.load(ins.operand("x"))
    values_t = ins.operand("values")
    k = values_t.shape[1]
    order = np.argsort(-x, axis=-1, kind="stable")[:, :k]
    m.store(values_t, np.take_along_axis(x, order, axis=-1))
    m.raw(ins.operand("ids"))[...] = order.astype(np.int32)


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
    Op.TOPK: _topk,
}


def execute(
    instructions: Sequence[Instruction],
    memory: Sequence[Memory],
    *,
    cancelled: Callable[[], bool] | None = None,
    cache: DequantCache | None = DEQUANT_CACHE,
) -> ExecStats:
    """Run decoded, validated instructions on the bound buffers, by slot.

    ``memory[slot]`` must be a writable buffer at least as large as the decoder was told.
    Ops run in order; an op that faults leaves earlier ops' writes in place (as a real
    device would) and nothing of its own. ``cancelled``, if given, is polled before each op:
    a job cancelled mid-way stops there, its earlier ops' writes kept. ``cache`` keeps
    widened quantised weights between jobs (``None``: widen them in every job; the results
    are the same bytes either way).

    Raises:
        CommandStreamError: a data-dependent fault (an EMBED id out of range), naming the op.
        JobCancelled: ``cancelled()`` returned True before an op.
    """
    if not instructions:  # an empty stream (a null job): nothing to set up
        return ExecStats(0, 0)
    machine = _Machine(memory, cache)
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
