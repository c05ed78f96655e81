"""The simulated NPU's kernels are batch-invariant: a row computed among M rows is bit-identical
to the same row computed alone.

A decode step batched over several sequences runs each row-wise op (MATMUL, RMSNORM, the
elementwise ops, EMBED, ARGMAX) over all their rows at once; each sequence must get exactly the
bits it would get alone, or a near-tie between two logits can flip and batching would change a
generated text. Each property runs the op over M random rows, then each row alone in a buffer
of its own (so its address differs too), and compares the bytes.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from npud.devices.sim.executor import execute
from npud.isa import DType, Program, Tensor, decode

SETTINGS = settings(max_examples=40, deadline=None)


def _run(prog: Program, memory: list[bytearray]) -> None:
    execute(decode(prog.encode(), [len(m) for m in memory]), memory)


def _f32(values: np.ndarray) -> bytearray:
    return bytearray(values.astype(np.float32).tobytes())


def _rows(seed: int, m: int, width: int, scale: float = 1.0) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((m, width)) * scale).astype(np.float32)


def _binary_row_op(op: str, a: np.ndarray, b: np.ndarray) -> bytes:
    """Run ``op`` (matmul/add/mul) over every row of ``a`` at once; the output bytes."""
    m, k = a.shape
    n = b.shape[0]
    out_width = n if op == "matmul" else k
    memory = [_f32(a), _f32(b), bytearray(m * out_width * 4)]
    prog = Program()
    out = Tensor(2, 0, (m, out_width), DType.F32)
    at, bt = Tensor(0, 0, (m, k), DType.F32), Tensor(1, 0, b.shape, DType.F32)
    if op == "matmul":
        prog.matmul(out=out, a=at, b=bt, transpose_b=True)
    elif op == "add":
        prog.add(out=out, a=at, b=bt)
    else:
        prog.mul(out=out, a=at, b=bt)
    _run(prog, memory)
    return bytes(memory[2])


@SETTINGS
@given(
    m=st.integers(2, 9),
    k=st.integers(1, 300),
    n=st.integers(1, 300),
    seed=st.integers(0, 2**32 - 1),
)
def test_matmul_rows_equal_each_row_alone(m: int, k: int, n: int, seed: int) -> None:
    """MATMUL (b stored [N,K], as the LLM's projections are) gives each row of a the same bits
    as a one-row MATMUL of that row."""
    a = _rows(seed, m, k)
    b = _rows(seed + 1, n, k, scale=1 / np.sqrt(k))
    batched = _binary_row_op("matmul", a, b)
    width = n * 4
    for r in range(m):
        alone = _binary_row_op("matmul", a[r : r + 1], b)
        assert batched[r * width : (r + 1) * width] == alone, f"row {r} of {m}"


@SETTINGS
@given(
    m=st.integers(2, 9),
    k=st.integers(1, 200),
    n=st.integers(1, 200),
    seed=st.integers(0, 2**32 - 1),
)
def test_matmul_without_transpose_is_batch_invariant(m: int, k: int, n: int, seed: int) -> None:
    """MATMUL with b stored [K,N] is batch-invariant too."""
    a = _rows(seed, m, k)
    b = _rows(seed + 1, k, n)

    def run(rows: np.ndarray) -> bytes:
        memory = [_f32(rows), _f32(b), bytearray(rows.shape[0] * n * 4)]
        prog = Program().matmul(
            out=Tensor(2, 0, (rows.shape[0], n), DType.F32),
            a=Tensor(0, 0, rows.shape, DType.F32),
            b=Tensor(1, 0, (k, n), DType.F32),
        )
        _run(prog, memory)
        return bytes(memory[2])

    batched = run(a)
    for r in range(m):
        assert batched[r * n * 4 : (r + 1) * n * 4] == run(a[r : r + 1]), f"row {r} of {m}"


@SETTINGS
@given(
    m=st.integers(2, 9),
    d=st.integers(1, 300),
    op=st.sampled_from(["add", "mul"]),
    broadcast=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_elementwise_rows_equal_each_row_alone(
    m: int, d: int, op: str, broadcast: bool, seed: int
) -> None:
    """ADD and MUL (with b the same shape or a broadcast row) are batch-invariant."""
    a = _rows(seed, m, d)
    b = _rows(seed + 1, 1, d)[0] if broadcast else _rows(seed + 1, m, d)
    batched = _binary_row_op(op, a, b)
    for r in range(m):
        alone = _binary_row_op(op, a[r : r + 1], b if broadcast else b[r : r + 1])
        assert batched[r * d * 4 : (r + 1) * d * 4] == alone, f"row {r} of {m}"


def _unary(op: str, x: np.ndarray, w: np.ndarray) -> bytes:
    m, d = x.shape
    memory = [_f32(x), _f32(w), bytearray(m * d * 4), bytearray(m * 4)]
    prog = Program()
    xt, out = Tensor(0, 0, (m, d), DType.F32), Tensor(2, 0, (m, d), DType.F32)
    if op == "rmsnorm":
        prog.rmsnorm(out=out, x=xt, w=Tensor(1, 0, (d,), DType.F32), eps=1e-5)
    elif op == "silu":
        prog.silu(out=out, x=xt)
    elif op == "softmax":
        prog.softmax(out=out, x=xt)
    else:
        prog.argmax(out=Tensor(3, 0, (m,), DType.I32), x=xt)
        _run(prog, memory)
        return bytes(memory[3])
    _run(prog, memory)
    return bytes(memory[2])


@SETTINGS
@given(
    m=st.integers(2, 9),
    d=st.integers(1, 300),
    op=st.sampled_from(["rmsnorm", "silu", "softmax", "argmax"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_rowwise_ops_equal_each_row_alone(m: int, d: int, op: str, seed: int) -> None:
    """RMSNORM, SILU, SOFTMAX and ARGMAX give each row the same bits as that row alone."""
    x = _rows(seed, m, d, scale=3.0)
    if op == "argmax":  # plant exact ties: the lowest index must win in both runs
        x[:, d // 2] = x[:, 0] = x.max() + 1
    w = _rows(seed + 1, 1, d)[0]
    batched = _unary(op, x, w)
    size = 4 if op == "argmax" else d * 4
    for r in range(m):
        assert batched[r * size : (r + 1) * size] == _unary(op, x[r : r + 1], w), f"row {r}"


@SETTINGS
@given(
    ids=st.lists(st.integers(0, 49), min_size=2, max_size=9),
    d=st.integers(1, 64),
    seed=st.integers(0, 2**32 - 1),
)
def test_embed_rows_equal_each_row_alone(ids: list[int], d: int, seed: int) -> None:
    """EMBED gathers each id's row identically whatever ids sit beside it."""
    table = _rows(seed, 50, d)

    def run(chosen: list[int]) -> bytes:
        t = len(chosen)
        memory = [_f32(table), bytearray(np.asarray(chosen, "<i4").tobytes()), bytearray(t * d * 4)]
        prog = Program().embed(
            out=Tensor(2, 0, (t, d), DType.F32),
            table=Tensor(0, 0, (50, d), DType.F32),
            ids=Tensor(1, 0, (t,), DType.I32),
        )
        _run(prog, memory)
        return bytes(memory[2])

    batched = run(ids)
    for r, token in enumerate(ids):
        assert batched[r * d * 4 : (r + 1) * d * 4] == run([token])
        assert batched[r * d * 4 : (r + 1) * d * 4] == table[token].tobytes()


def _quantised_matmul(a: np.ndarray, blocks: bytes, dtype: DType, n: int) -> bytes:
    """MATMUL of every row of ``a`` with ``n`` rows of GGUF blocks (transposed), as the LLM's
    quantised projections run; the output bytes."""
    m, k = a.shape
    memory = [_f32(a), bytearray(blocks), bytearray(m * n * 4)]
    prog = Program().matmul(
        out=Tensor(2, 0, (m, n), DType.F32),
        a=Tensor(0, 0, (m, k), DType.F32),
        b=Tensor(1, 0, (n, k), dtype),
        transpose_b=True,
    )
    _run(prog, memory)
    return bytes(memory[2])


@SETTINGS
@given(
    m=st.integers(2, 9),
    blocks=st.integers(1, 6),
    n=st.integers(1, 80),
    dtype=st.sampled_from([DType.Q4_1, DType.Q8_0]),
    seed=st.integers(0, 2**32 - 1),
)
def test_quantised_matmul_rows_equal_each_row_alone(
    m: int, blocks: int, n: int, dtype: DType, seed: int
) -> None:
    """MATMUL over Q4_1 or Q8_0 weight blocks (a GGUF model's projections, as the batched
    decode step reads them) gives each row the same bits as that row alone."""
    from gguf import GGMLQuantizationType
    from gguf.quants import quantize

    k = 32 * blocks
    a = _rows(seed, m, k)
    w = _rows(seed + 1, n, k, scale=1 / np.sqrt(k))
    raw = quantize(w, GGMLQuantizationType[dtype.name]).tobytes()
    batched = _quantised_matmul(a, raw, dtype, n)
    width = n * 4
    for r in range(m):
        alone = _quantised_matmul(a[r : r + 1], raw, dtype, n)
        assert batched[r * width : (r + 1) * width] == alone, f"row {r} of {m}"


@SETTINGS
@given(
    m=st.integers(2, 9),
    width=st.integers(8, 400),
    k=st.integers(1, 8),
    seed=st.integers(0, 2**32 - 1),
)
def test_topk_rows_equal_each_row_alone(m: int, width: int, k: int, seed: int) -> None:
    """TOPK (the sampled rows' candidates) gives each row the same values and ids as that row
    alone, ties included (values rounded so that ties occur)."""
    x = np.round(_rows(seed, m, width) * 4) / 4

    def run(rows: np.ndarray) -> bytes:
        count = rows.shape[0]
        memory = [_f32(rows), bytearray(count * k * 8)]
        prog = Program().topk(
            values=Tensor(1, 0, (count, k), DType.F32),
            ids=Tensor(1, count * k * 4, (count, k), DType.I32),
            x=Tensor(0, 0, rows.shape, DType.F32),
        )
        _run(prog, memory)
        return bytes(memory[1])

    batched = run(x)
    for r in range(m):
        alone = run(x[r : r + 1])
        assert batched[r * k * 4 : (r + 1) * k * 4] == alone[: k * 4], f"values of row {r}"
        ids_at = m * k * 4 + r * k * 4
        assert batched[ids_at : ids_at + k * 4] == alone[k * 4 :], f"ids of row {r}"
