"""Every op of the ISA against an independent float64 numpy reference, per dtype path.

Tolerances: f32 outputs agree with the float64 reference to 1e-5 relative (1e-4 absolute for
reductions over tens of terms); f16 outputs to 1e-2 (f16 has an 11-bit mantissa); integer
outputs (ARGMAX, I32 COPY, I8 quantisation) exactly.
"""

from __future__ import annotations

import numpy as np
import pytest

from npud.isa import DType, Program
from tests.devices.sim.rig import Rig

RNG_SEED = 1234
F32_TOL = {"rtol": 1e-5, "atol": 1e-4}
F16_TOL = {"rtol": 1e-2, "atol": 1e-2}
TOL = {DType.F32: F32_TOL, DType.F16: F16_TOL}
SCALE = 0.05  # the I8 dequantisation scale used throughout


def rng() -> np.random.Generator:
    return np.random.default_rng(RNG_SEED)


def stored(values: np.ndarray, dtype: DType) -> np.ndarray:
    """What the device sees for ``values`` stored as ``dtype``, as float64 reals."""
    if dtype is DType.F16:
        return values.astype(np.float16).astype(np.float64)
    if dtype is DType.F32:
        return values.astype(np.float32).astype(np.float64)
    raise AssertionError(dtype)


def quantised(shape: tuple[int, ...], gen: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random int8 values and their float64 reals (q * SCALE)."""
    q = gen.integers(-127, 128, size=shape).astype(np.int8)
    return q, q.astype(np.float64) * np.float64(np.float32(SCALE))


def operand(rig: Rig, shape: tuple[int, ...], dtype: DType, gen: np.random.Generator):
    """A random input tensor in ``dtype`` and its float64 reference values."""
    if dtype is DType.I8:
        q, real = quantised(shape, gen)
        return rig.input(q, DType.I8, SCALE), real
    values = gen.standard_normal(shape)
    return rig.input(values, dtype), stored(values, dtype)


def check(rig: Rig, out, expected: np.ndarray) -> None:
    got = rig.read(out).astype(np.float64)
    np.testing.assert_allclose(got, expected, **TOL[out.dtype])


PATHS = [
    pytest.param(DType.F32, DType.F32, id="f32"),
    pytest.param(DType.F16, DType.F16, id="f16"),
    pytest.param(DType.I8, DType.F32, id="i8"),
]


# ---- MATMUL -----------------------------------------------------------------------------


@pytest.mark.parametrize("transpose_b", [False, True])
@pytest.mark.parametrize(
    ("a_dtype", "b_dtype", "out_dtype"),
    [
        (DType.F32, DType.F32, DType.F32),
        (DType.F16, DType.F16, DType.F16),
        (DType.F32, DType.I8, DType.F32),
        (DType.F16, DType.I8, DType.F32),
    ],
)
def test_matmul(transpose_b: bool, a_dtype: DType, b_dtype: DType, out_dtype: DType) -> None:
    """MATMUL equals a @ b (or a @ b.T) computed in float64."""
    gen, rig = rng(), Rig()
    m, k, n = 5, 24, 7
    a, a_ref = operand(rig, (m, k), a_dtype, gen)
    b, b_ref = operand(rig, (n, k) if transpose_b else (k, n), b_dtype, gen)
    out = rig.output((m, n), out_dtype)
    rig.run(Program().matmul(out, a, b, transpose_b=transpose_b))
    check(rig, out, a_ref @ (b_ref.T if transpose_b else b_ref))


# ---- ADD / MUL --------------------------------------------------------------------------


@pytest.mark.parametrize("broadcast", [False, True])
@pytest.mark.parametrize(("in_dtype", "out_dtype"), PATHS)
@pytest.mark.parametrize("op", ["add", "mul"])
def test_elementwise(op: str, in_dtype: DType, out_dtype: DType, broadcast: bool) -> None:
    """ADD and MUL equal numpy's, with b of a's shape or broadcast over rows."""
    gen, rig = rng(), Rig()
    a, a_ref = operand(rig, (3, 4, 6), in_dtype, gen)
    b, b_ref = operand(rig, (6,) if broadcast else (3, 4, 6), in_dtype, gen)
    out = rig.output((3, 4, 6), out_dtype)
    rig.run(getattr(Program(), op)(out, a, b))
    expected = a_ref + b_ref if op == "add" else a_ref * b_ref
    check(rig, out, expected)


# ---- RMSNORM ----------------------------------------------------------------------------


@pytest.mark.parametrize(("in_dtype", "out_dtype"), PATHS)
def test_rmsnorm(in_dtype: DType, out_dtype: DType) -> None:
    """RMSNORM equals x / sqrt(mean(x^2) + eps) * w."""
    gen, rig = rng(), Rig()
    x, x_ref = operand(rig, (4, 32), in_dtype, gen)
    w, w_ref = operand(rig, (32,), in_dtype, gen)
    out = rig.output((4, 32), out_dtype)
    eps = 1e-5
    rig.run(Program().rmsnorm(out, x, w, eps=eps))
    eps32 = float(np.float32(eps))
    expected = x_ref / np.sqrt(np.mean(x_ref**2, axis=-1, keepdims=True) + eps32) * w_ref
    check(rig, out, expected)


# ---- ROPE -------------------------------------------------------------------------------


def rope_reference(
    x: np.ndarray, n_heads: int, head_dim: int, start_pos: int, theta: float
) -> np.ndarray:
    """Rotate-half RoPE written token by token, head by head."""
    t_count = x.shape[0]
    out = np.empty_like(x)
    half = head_dim // 2
    for t in range(t_count):
        pos = start_pos + t
        for h in range(n_heads):
            v = x[t, h * head_dim : (h + 1) * head_dim]
            rotated = np.empty(head_dim)
            for i in range(half):
                angle = pos * theta ** (-2.0 * i / head_dim)
                c, s = np.cos(angle), np.sin(angle)
                rotated[i] = v[i] * c - v[i + half] * s
                rotated[i + half] = v[i + half] * c + v[i] * s
            out[t, h * head_dim : (h + 1) * head_dim] = rotated
    return out


@pytest.mark.parametrize(("in_dtype", "out_dtype"), PATHS)
def test_rope(in_dtype: DType, out_dtype: DType) -> None:
    """ROPE rotates each head's halves by position * theta^(-2i/Dh)."""
    gen, rig = rng(), Rig()
    n_heads, head_dim, start_pos = 3, 8, 5
    x, x_ref = operand(rig, (4, n_heads * head_dim), in_dtype, gen)
    out = rig.output((4, n_heads * head_dim), out_dtype)
    rig.run(
        Program().rope(
            out, x, n_heads=n_heads, head_dim=head_dim, start_pos=start_pos, theta=10000.0
        )
    )
    check(rig, out, rope_reference(x_ref, n_heads, head_dim, start_pos, 10000.0))


# ---- SOFTMAX / SILU ---------------------------------------------------------------------


@pytest.mark.parametrize(("in_dtype", "out_dtype"), PATHS)
def test_softmax_is_stable(in_dtype: DType, out_dtype: DType) -> None:
    """SOFTMAX over the last axis matches the reference even for inputs near f16's range."""
    gen, rig = rng(), Rig()
    if in_dtype is DType.I8:
        x, x_ref = operand(rig, (3, 10), in_dtype, gen)
    else:
        values = gen.standard_normal((3, 10)) * 1000.0  # exp() would overflow without the shift
        x, x_ref = rig.input(values, in_dtype), stored(values, in_dtype)
    out = rig.output((3, 10), out_dtype)
    rig.run(Program().softmax(out, x))
    e = np.exp(x_ref - x_ref.max(axis=-1, keepdims=True))
    check(rig, out, e / e.sum(axis=-1, keepdims=True))
    assert np.all(np.isfinite(rig.read(out)))


@pytest.mark.parametrize(("in_dtype", "out_dtype"), PATHS)
def test_silu(in_dtype: DType, out_dtype: DType) -> None:
    """SILU equals x * sigmoid(x)."""
    gen, rig = rng(), Rig()
    x, x_ref = operand(rig, (5, 9), in_dtype, gen)
    out = rig.output((5, 9), out_dtype)
    rig.run(Program().silu(out, x))
    check(rig, out, x_ref / (1.0 + np.exp(-x_ref)))


# ---- EMBED ------------------------------------------------------------------------------


@pytest.mark.parametrize(("table_dtype", "out_dtype"), PATHS)
def test_embed(table_dtype: DType, out_dtype: DType) -> None:
    """EMBED gathers the rows named by ids (repeats allowed)."""
    gen, rig = rng(), Rig()
    table, table_ref = operand(rig, (11, 6), table_dtype, gen)
    ids = np.array([3, 0, 10, 3], dtype=np.int32)
    ids_t = rig.input(ids, DType.I32)
    out = rig.output((4, 6), out_dtype)
    rig.run(Program().embed(out, table, ids_t))
    check(rig, out, table_ref[ids])


@pytest.mark.parametrize("bad_id", [11, -1])
def test_embed_out_of_range_fails_the_job(bad_id: int) -> None:
    """An id outside the table fails the job naming EMBED and field ids; nothing is written."""
    gen, rig = rng(), Rig()
    table, _ = operand(rig, (11, 6), DType.F32, gen)
    ids_t = rig.input(np.array([1, bad_id], dtype=np.int32), DType.I32)
    out = rig.output((2, 6), DType.F32, init=np.full((2, 6), 7.0))
    completion = rig.run_blob(Program().embed(out, table, ids_t).encode())
    assert completion.status == "error"
    assert completion.error is not None
    assert completion.error.startswith("op 0 (EMBED): field ids:")
    assert str(bad_id) in completion.error
    np.testing.assert_array_equal(rig.read(out), np.full((2, 6), 7.0, np.float32))


# ---- KV_WRITE ---------------------------------------------------------------------------


@pytest.mark.parametrize(("src_dtype", "cache_dtype"), [*PATHS])
def test_kv_write(src_dtype: DType, cache_dtype: DType) -> None:
    """KV_WRITE stores src[t] as cache[:, start_pos + t, :] and leaves the rest untouched."""
    gen, rig = rng(), Rig()
    hkv, s, dh, t, start = 2, 10, 4, 3, 6
    initial = gen.standard_normal((hkv, s, dh))
    cache = rig.output((hkv, s, dh), cache_dtype, init=initial)
    src, src_ref = operand(rig, (t, hkv * dh), src_dtype, gen)
    rig.run(Program().kv_write(cache, src, start_pos=start))
    expected = stored(initial, cache_dtype)
    for tok in range(t):
        for h in range(hkv):
            expected[h, start + tok, :] = src_ref[tok, h * dh : (h + 1) * dh]
    check(rig, cache, expected)


def test_kv_write_past_the_cache_fails() -> None:
    """start_pos + T beyond the cache length fails the job naming start_pos."""
    gen, rig = rng(), Rig()
    cache = rig.output((2, 8, 4), DType.F32)
    src, _ = operand(rig, (3, 8), DType.F32, gen)
    completion = rig.run_blob(Program().kv_write(cache, src, start_pos=6).encode(validate=False))
    assert completion.status == "error"
    assert completion.error == (
        "op 0 (KV_WRITE): field start_pos: start_pos 6 + 3 tokens exceeds cache length 8"
    )


# ---- ATTENTION --------------------------------------------------------------------------


def attention_reference(
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    n_heads: int,
    n_kv_heads: int,
    head_dim: int,
    start_pos: int,
) -> np.ndarray:
    """Causal grouped-query attention, one (token, head) at a time."""
    t_count = q.shape[0]
    out = np.zeros_like(q)
    group = n_heads // n_kv_heads
    for t in range(t_count):
        visible = start_pos + t + 1
        for h in range(n_heads):
            kv = h // group
            qv = q[t, h * head_dim : (h + 1) * head_dim]
            scores = np.array([qv @ k[kv, j] for j in range(visible)]) / np.sqrt(head_dim)
            w = np.exp(scores - scores.max())
            w /= w.sum()
            out[t, h * head_dim : (h + 1) * head_dim] = sum(w[j] * v[kv, j] for j in range(visible))
    return out


@pytest.mark.parametrize(
    ("q_dtype", "cache_dtype", "out_dtype"),
    [
        (DType.F32, DType.F32, DType.F32),
        (DType.F16, DType.F16, DType.F16),
        (DType.F32, DType.I8, DType.F32),
    ],
)
@pytest.mark.parametrize(("n_heads", "n_kv_heads"), [(4, 2), (2, 2), (4, 1)])
def test_attention(
    q_dtype: DType, cache_dtype: DType, out_dtype: DType, n_heads: int, n_kv_heads: int
) -> None:
    """ATTENTION is causal GQA over the cache prefix, scale 1/sqrt(Dh), positions beyond ignored."""
    gen, rig = rng(), Rig()
    dh, s, t, start = 8, 16, 3, 4
    q, q_ref = operand(rig, (t, n_heads * dh), q_dtype, gen)
    k, k_ref = operand(rig, (n_kv_heads, s, dh), cache_dtype, gen)
    v, v_ref = operand(rig, (n_kv_heads, s, dh), cache_dtype, gen)
    out = rig.output((t, n_heads * dh), out_dtype)
    rig.run(
        Program().attention(
            out, q, k, v, n_heads=n_heads, n_kv_heads=n_kv_heads, head_dim=dh, start_pos=start
        )
    )
    expected = attention_reference(q_ref, k_ref, v_ref, n_heads, n_kv_heads, dh, start)
    check(rig, out, expected)


# ---- ARGMAX / COPY ----------------------------------------------------------------------


@pytest.mark.parametrize("x_dtype", [DType.F32, DType.F16, DType.I8])
def test_argmax_ties_go_to_lowest_index(x_dtype: DType) -> None:
    """ARGMAX is exact and picks the lowest index among equal maxima."""
    gen, rig = rng(), Rig()
    if x_dtype is DType.I8:
        values = gen.integers(-100, 100, size=(4, 9))
    else:
        values = np.round(gen.standard_normal((4, 9)), 1)
    values[1, [2, 5, 8]] = values.max() + 3  # a three-way tie in row 1
    values[2, :] = values[2, 0]  # all equal in row 2
    x = rig.input(values, x_dtype, SCALE if x_dtype is DType.I8 else 0.0)
    out = rig.output((4,), DType.I32)
    rig.run(Program().argmax(out, x))
    expected = np.array([int(np.argmax(row)) for row in values], dtype=np.int32)
    np.testing.assert_array_equal(rig.read(out), expected)
    assert rig.read(out)[1] == 2
    assert rig.read(out)[2] == 0


@pytest.mark.parametrize(
    ("src", "dst"),
    [
        (DType.F32, DType.F16),
        (DType.F16, DType.F32),
        (DType.I8, DType.F32),
        (DType.F32, DType.F32),
    ],
)
def test_copy_casts_floats(src: DType, dst: DType) -> None:
    """COPY reshapes and casts between float dtypes."""
    gen, rig = rng(), Rig()
    x, x_ref = operand(rig, (4, 6), src, gen)
    out = rig.output((24,), dst)
    rig.run(Program().copy(out, x))
    check(rig, out, x_ref.reshape(24))


def test_copy_quantises_to_i8_exactly() -> None:
    """COPY into I8 rounds x/scale to nearest (ties to even) and saturates at [-128, 127]."""
    rig = Rig()
    values = np.array([0.0, 0.024, 0.026, -0.075, 0.125, 100.0, -100.0, 6.35], dtype=np.float32)
    x = rig.input(values, DType.F32)
    out = rig.output((8,), DType.I8, scale=SCALE)
    rig.run(Program().copy(out, x))
    expected = np.clip(np.rint(values / np.float32(SCALE)), -128, 127).astype(np.int8)
    np.testing.assert_array_equal(rig.read(out), expected)
    assert list(rig.read(out)[5:7]) == [127, -128]


def test_copy_i32_is_exact() -> None:
    """COPY of I32 moves the integers bit for bit."""
    rig = Rig()
    ids = np.array([[0, -1], [2**31 - 1, -(2**31)]], dtype=np.int32)
    x = rig.input(ids, DType.I32)
    out = rig.output((4,), DType.I32)
    rig.run(Program().copy(out, x))
    np.testing.assert_array_equal(rig.read(out), ids.reshape(4))


def test_ops_chain_in_order_and_may_alias() -> None:
    """Ops see earlier ops' writes, and an op may write over its own input."""
    gen, rig = rng(), Rig()
    x, x_ref = operand(rig, (2, 8), DType.F32, gen)
    buf = rig.output((2, 8), DType.F32)
    prog = Program()
    prog.silu(buf, x)
    prog.mul(buf, buf, x)  # in place: buf = silu(x) * x
    prog.add(buf, buf, buf)
    rig.run(prog)
    check(rig, buf, 2 * (x_ref / (1 + np.exp(-x_ref))) * x_ref)


def test_burn_writes_nothing() -> None:
    """BURN reports no bytes moved and touches no buffer."""
    rig = Rig()
    out = rig.output((4,), DType.F32, init=np.arange(4.0))
    completion = rig.run(Program().burn(0.25))
    assert (completion.bytes_read, completion.bytes_written) == (0, 0)
    np.testing.assert_array_equal(rig.read(out), np.arange(4.0, dtype=np.float32))
