"""Block-quantised weights (Q8_0, Q4_1) and TOPK on the simulated NPU.

The reference is the ``gguf`` package: its ``quantize`` makes the blocks and its
``dequantize`` gives the values the device must compute with; products are compared in
float64. The executor's own dequantiser is a separate implementation of the same layout.
"""

from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType
from gguf.quants import dequantize as gguf_dequantize
from gguf.quants import quantize

from npud.devices.sim.cost import compute_dtype, op_cost
from npud.devices.sim.executor import DequantCache, dequantize
from npud.devices.sim.profiles import RK3588
from npud.isa import CommandStreamError, DType, Program, T, decode
from npud.vocab import MemoryTier
from tests.devices.sim.rig import Rig

QUANTS = [DType.Q8_0, DType.Q4_1]


def _blocks(values: np.ndarray, dtype: DType) -> tuple[np.ndarray, np.ndarray]:
    """Quantised bytes of ``values`` and the reals they stand for (gguf's dequantisation)."""
    qtype = GGMLQuantizationType[dtype.name]
    raw = quantize(values.astype(np.float32), qtype)
    return raw, gguf_dequantize(raw, qtype).astype(np.float64)


@pytest.mark.parametrize("dtype", QUANTS)
def test_dequantize_equals_gguf(dtype: DType) -> None:
    """The executor's dequantiser gives gguf's values bit for bit."""
    values = np.random.default_rng(1).normal(0, 2, (48, 96))
    raw, real = _blocks(values, dtype)
    np.testing.assert_array_equal(dequantize(raw, dtype, (48, 96)), real.astype(np.float32))


@pytest.mark.parametrize("dtype", QUANTS)
def test_matmul_with_block_weights(dtype: DType) -> None:
    """MATMUL a[M,K] @ b[N,K]^T with b in blocks equals the float64 product of the reals."""
    gen = np.random.default_rng(2)
    a_values = gen.normal(size=(5, 64))
    raw, w = _blocks(gen.normal(size=(24, 64)), dtype)
    rig = Rig()
    a = rig.input(a_values)
    b = rig.blocks(raw, dtype, (24, 64))
    out = rig.output((5, 24))
    rig.run(Program().matmul(out=out, a=a, b=b, transpose_b=True))
    expected = a_values.astype(np.float32).astype(np.float64) @ w.T
    np.testing.assert_allclose(rig.read(out), expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("dtype", QUANTS)
def test_embed_from_a_block_table(dtype: DType) -> None:
    """EMBED gathers and dequantises only the rows asked for."""
    raw, table = _blocks(np.random.default_rng(3).normal(size=(40, 32)), dtype)
    rig = Rig()
    t = rig.blocks(raw, dtype, (40, 32))
    ids = rig.input(np.array([7, 0, 39, 7]), DType.I32)
    out = rig.output((4, 32))
    rig.run(Program().embed(out=out, table=t, ids=ids))
    np.testing.assert_array_equal(rig.read(out), table[[7, 0, 39, 7]].astype(np.float32))


def test_topk_sorted_with_ties_to_the_lowest_index() -> None:
    """TOPK writes per row the K largest values, highest first, equal values by index."""
    x_values = np.array([[1.0, 9.0, 3.0, 9.0, -2.0, 3.0], [0.0, 0.0, 0.0, 5.0, 0.0, 1.0]])
    rig = Rig()
    x = rig.input(x_values)
    values, ids = rig.output((2, 4)), rig.output((2, 4), DType.I32)
    rig.run(Program().topk(values=values, ids=ids, x=x))
    assert rig.read(ids).tolist() == [[1, 3, 2, 5], [3, 5, 0, 1]]
    assert rig.read(values).tolist() == [[9.0, 9.0, 3.0, 3.0], [5.0, 1.0, 0.0, 0.0]]


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (
            lambda p: p.matmul(
                out=T(0, 0, (1, 8)), a=T(1, 0, (1, 32)), b=T(2, 0, (32, 8), DType.Q4_1)
            ),
            "b",
        ),
        (
            lambda p: p.matmul(
                out=T(0, 0, (1, 8)),
                a=T(1, 0, (1, 48)),
                b=T(2, 0, (8, 48), DType.Q8_0),
                transpose_b=True,
            ),
            "b",
        ),
        (lambda p: p.copy(out=T(0, 0, (1, 32)), x=T(1, 0, (1, 32), DType.Q8_0)), "x"),
        (
            lambda p: p.add(
                out=T(0, 0, (1, 32)), a=T(1, 0, (1, 32)), b=T(2, 0, (1, 32), DType.Q4_1)
            ),
            "b",
        ),
        (
            lambda p: p.topk(
                values=T(0, 0, (1, 9)), ids=T(1, 0, (1, 9), DType.I32), x=T(2, 0, (1, 8))
            ),
            "values",
        ),
    ],
    ids=["not-transposed", "partial-block", "copy", "elementwise", "k-too-large"],
)
def test_decoder_refuses_misused_blocks_and_topk(build, field: str) -> None:  # type: ignore[no-untyped-def]
    """Blocks only as transposed MATMUL b / EMBED table over whole blocks; TOPK's K <= N."""
    prog = Program()
    build(prog)
    with pytest.raises(CommandStreamError) as info:
        decode(prog.encode(validate=False))
    assert info.value.field == field


def test_block_weights_cost_their_packed_bytes() -> None:
    """A Q4_1 matmul moves 20 bytes per 32 weights and runs at the int8 rate: a memory-bound
    1-row product is several times faster than with f32 weights."""
    tiers = [MemoryTier.DRAM] * 3
    q = Program().matmul(
        out=T(0, 0, (1, 1536)),
        a=T(1, 0, (1, 576)),
        b=T(2, 0, (1536, 576), DType.Q4_1),
        transpose_b=True,
    )
    f = Program().matmul(
        out=T(0, 0, (1, 1536)), a=T(1, 0, (1, 576)), b=T(2, 0, (1536, 576)), transpose_b=True
    )
    cq = op_cost(q.instructions[0], tiers, RK3588)
    cf = op_cost(f.instructions[0], tiers, RK3588)
    assert compute_dtype(q.instructions[0]) is DType.I8
    assert q.instructions[0].operand("b").nbytes == 1536 * 576 // 32 * 20
    assert cq.memory_bound
    assert cf.memory_bound
    assert cf.seconds / cq.seconds > 5


def test_dequant_cache_is_exact_when_the_bytes_change() -> None:
    """The cache serves remembered values only for identical bytes: rewrite the buffer and the
    next read widens the new blocks."""
    cache = DequantCache()
    raw1, w1 = _blocks(np.random.default_rng(4).normal(size=(8, 32)), DType.Q8_0)
    raw2, w2 = _blocks(np.random.default_rng(5).normal(size=(8, 32)), DType.Q8_0)
    memory = bytearray(raw1.tobytes())
    t = T(0, 0, (8, 32), DType.Q8_0)
    np.testing.assert_array_equal(cache.values(memory, t), w1.astype(np.float32))
    np.testing.assert_array_equal(cache.values(memory, t), w1.astype(np.float32))
    memory[:] = raw2.tobytes()
    np.testing.assert_array_equal(cache.values(memory, t), w2.astype(np.float32))
    stats = cache.statistics()
    assert (stats.hits, stats.misses, stats.entries) == (1, 2, 1)
