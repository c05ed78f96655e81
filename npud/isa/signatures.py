"""The typing rules of each op: which dtypes its operands take and how their shapes agree.

The decoder applies these to every record, so a stream the device accepts can be executed
without further checks except the data-dependent ones (an EMBED id out of range).
"""

from __future__ import annotations

import math
from collections.abc import Callable

from npud.isa.dtypes import COMPUTE_DTYPES, FLOAT_DTYPES, QUANTIZED_DTYPES, WEIGHT_DTYPES, DType
from npud.isa.errors import CommandStreamError
from npud.isa.opcodes import MATMUL_TRANSPOSE_B, Op
from npud.isa.program import Instruction
from npud.isa.tensor import Tensor


class _Checker:
    """Raises :class:`CommandStreamError` naming this instruction and the field."""

    __slots__ = ("ins",)

    def __init__(self, ins: Instruction) -> None:
        self.ins = ins

    def fail(self, field: str, detail: str) -> CommandStreamError:
        return CommandStreamError(self.ins.index, self.ins.op.name, field, detail)

    def t(self, name: str) -> Tensor:
        return self.ins.operand(name)

    def dtype_in(self, name: str, allowed: frozenset[DType]) -> Tensor:
        tensor = self.t(name)
        if tensor.dtype not in allowed:
            names = "/".join(sorted(d.name for d in allowed))
            raise self.fail(name, f"dtype {tensor.dtype.name} not allowed (expected {names})")
        return tensor

    def ndim(self, name: str, ndim: int) -> Tensor:
        tensor = self.t(name)
        if tensor.ndim != ndim:
            raise self.fail(name, f"expected {ndim} dimensions, got shape {list(tensor.shape)}")
        return tensor

    def shape(self, name: str, expected: tuple[int, ...], why: str) -> None:
        tensor = self.t(name)
        if tensor.shape != expected:
            raise self.fail(
                name, f"shape {list(tensor.shape)} does not match {list(expected)} ({why})"
            )

    def positive(self, field: str, value: int | float) -> None:
        if not value > 0:
            raise self.fail(field, f"must be > 0, got {value}")


def _matmul(c: _Checker) -> None:
    if c.ins.params.flags & ~MATMUL_TRANSPOSE_B:
        raise c.fail("flags", f"unknown flag bits {c.ins.params.flags:#x}")
    for name in ("out", "a", "b"):
        c.ndim(name, 2)
    c.dtype_in("out", COMPUTE_DTYPES)
    a = c.dtype_in("a", COMPUTE_DTYPES)
    b = c.dtype_in("b", WEIGHT_DTYPES)
    if b.dtype in QUANTIZED_DTYPES and not c.ins.params.transpose_b:
        raise c.fail(
            "b", f"a {b.dtype.name} b must be stored [N,K] (transpose_b): blocks run along K"
        )
    m, k = a.shape
    if c.ins.params.transpose_b:
        n, kb = b.shape
        layout = "[N,K] with transpose_b"
    else:
        kb, n = b.shape
        layout = "[K,N]"
    if kb != k:
        raise c.fail("b", f"shape {list(b.shape)} ({layout}) has K={kb}, a has K={k}")
    c.shape("out", (m, n), "[M,N] from a[M,K] and b")


def _elementwise(c: _Checker) -> None:
    a = c.dtype_in("a", FLOAT_DTYPES)
    b = c.dtype_in("b", FLOAT_DTYPES)
    c.dtype_in("out", COMPUTE_DTYPES)
    if b.shape != a.shape and b.shape != (a.shape[-1],):
        raise c.fail(
            "b",
            f"shape {list(b.shape)} does not match a {list(a.shape)} "
            f"(must equal it or be [{a.shape[-1]}] to broadcast over rows)",
        )
    c.shape("out", a.shape, "same as a")


def _unary(c: _Checker) -> None:
    x = c.dtype_in("x", FLOAT_DTYPES)
    c.dtype_in("out", COMPUTE_DTYPES)
    c.shape("out", x.shape, "same as x")


def _rmsnorm(c: _Checker) -> None:
    _unary(c)
    x = c.t("x")
    c.dtype_in("w", FLOAT_DTYPES)
    c.shape("w", (x.shape[-1],), "[D], the last dimension of x")
    eps = c.ins.params.eps
    if not (math.isfinite(eps) and eps > 0):
        raise c.fail("eps", f"must be finite and > 0, got {eps}")


def _rope(c: _Checker) -> None:
    _unary(c)
    x = c.ndim("x", 2)
    p = c.ins.params
    c.positive("n_heads", p.n_heads)
    c.positive("head_dim", p.head_dim)
    if p.head_dim % 2:
        raise c.fail("head_dim", f"must be even, got {p.head_dim}")
    if p.n_heads * p.head_dim != x.shape[1]:
        raise c.fail(
            "x",
            f"shape {list(x.shape)}: second dimension must be n_heads*head_dim "
            f"= {p.n_heads}*{p.head_dim} = {p.n_heads * p.head_dim}",
        )
    if not (math.isfinite(p.theta) and p.theta > 0):
        raise c.fail("theta", f"must be finite and > 0, got {p.theta}")


def _argmax(c: _Checker) -> None:
    x = c.ndim("x", 2)
    c.dtype_in("x", FLOAT_DTYPES)
    c.dtype_in("out", frozenset({DType.I32}))
    c.shape("out", (x.shape[0],), "[M] from x[M,N]")


def _topk(c: _Checker) -> None:
    x = c.ndim("x", 2)
    c.dtype_in("x", FLOAT_DTYPES)
    values = c.ndim("values", 2)
    c.dtype_in("values", COMPUTE_DTYPES)
    c.dtype_in("ids", frozenset({DType.I32}))
    m, k = values.shape
    if m != x.shape[0] or not 0 < k <= x.shape[1]:
        raise c.fail(
            "values", f"shape {list(values.shape)}: want [M, K] with K <= N of x {list(x.shape)}"
        )
    c.shape("ids", values.shape, "same as values")


def _copy(c: _Checker) -> None:
    out, x = c.t("out"), c.t("x")
    for name, t in (("out", out), ("x", x)):
        if t.dtype in QUANTIZED_DTYPES:
            raise c.fail(name, f"COPY does not convert {t.dtype.name} blocks")
    if (out.dtype is DType.I32) != (x.dtype is DType.I32):
        raise c.fail(
            "out", f"cannot cast {x.dtype.name} to {out.dtype.name} (I32 copies only to I32)"
        )
    if out.numel != x.numel:
        raise c.fail("out", f"{out.numel} elements, x has {x.numel}")


def _embed(c: _Checker) -> None:
    out = c.ndim("out", 2)
    table = c.ndim("table", 2)
    ids = c.ndim("ids", 1)
    c.dtype_in("out", COMPUTE_DTYPES)
    c.dtype_in("table", WEIGHT_DTYPES)
    c.dtype_in("ids", frozenset({DType.I32}))
    c.shape("out", (ids.shape[0], table.shape[1]), "[T,D] from ids[T] and table[V,D]")
    del out


def _kv_write(c: _Checker) -> None:
    cache = c.ndim("cache", 3)
    src = c.ndim("src", 2)
    c.dtype_in("cache", COMPUTE_DTYPES)
    c.dtype_in("src", FLOAT_DTYPES)
    hkv, s, dh = cache.shape
    t = src.shape[0]
    c.shape("src", (t, hkv * dh), "[T, Hkv*Dh] from cache[Hkv,S,Dh]")
    start = c.ins.params.start_pos
    if start + t > s:
        raise c.fail("start_pos", f"start_pos {start} + {t} tokens exceeds cache length {s}")


def _attention(c: _Checker) -> None:
    q = c.ndim("q", 2)
    k = c.ndim("k_cache", 3)
    c.ndim("v_cache", 3)
    c.dtype_in("q", FLOAT_DTYPES)
    c.dtype_in("k_cache", FLOAT_DTYPES)
    c.dtype_in("v_cache", FLOAT_DTYPES)
    c.dtype_in("out", COMPUTE_DTYPES)
    p = c.ins.params
    c.positive("n_heads", p.n_heads)
    c.positive("n_kv_heads", p.n_kv_heads)
    c.positive("head_dim", p.head_dim)
    if p.n_heads % p.n_kv_heads:
        raise c.fail(
            "n_kv_heads", f"n_heads {p.n_heads} is not a multiple of n_kv_heads {p.n_kv_heads}"
        )
    t = q.shape[0]
    c.shape("q", (t, p.n_heads * p.head_dim), "[T, n_heads*head_dim]")
    c.shape("out", q.shape, "same as q")
    s = k.shape[1]
    c.shape("k_cache", (p.n_kv_heads, s, p.head_dim), "[n_kv_heads, S, head_dim]")
    c.shape("v_cache", k.shape, "same as k_cache")
    if p.start_pos + t > s:
        raise c.fail("start_pos", f"start_pos {p.start_pos} + {t} tokens exceeds cache length {s}")


def _burn(c: _Checker) -> None:
    seconds = c.ins.params.seconds
    if not (math.isfinite(seconds) and 0 <= seconds <= MAX_BURN_S):
        raise c.fail("seconds", f"must be within [0, {MAX_BURN_S}], got {seconds}")


MAX_BURN_S = 3600.0
"""The longest BURN a stream may ask for (an hour: longer is a typo, not a benchmark)."""

_RULES: dict[Op, Callable[[_Checker], None]] = {
    Op.MATMUL: _matmul,
    Op.ADD: _elementwise,
    Op.MUL: _elementwise,
    Op.RMSNORM: _rmsnorm,
    Op.ROPE: _rope,
    Op.SOFTMAX: _unary,
    Op.SILU: _unary,
    Op.EMBED: _embed,
    Op.KV_WRITE: _kv_write,
    Op.ATTENTION: _attention,
    Op.ARGMAX: _argmax,
    Op.COPY: _copy,
    Op.TOPK: _topk,
    Op.BURN: _burn,
}


def check_signature(ins: Instruction) -> None:
    """Check the dtypes, shapes and parameters of one instruction.

    Raises:
        CommandStreamError: the first rule the instruction breaks, naming op and field.
    """
    _RULES[ins.op](_Checker(ins))
