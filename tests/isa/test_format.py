"""The v1 wire format: byte layout, round trips, and the builder's validation."""

from __future__ import annotations

import struct

import pytest

from npud.errors import InvalidArgument
from npud.isa import SPECS, CommandStreamError, DType, Op, Program, T, Tensor, decode


def full_program() -> Program:
    """One of every op, with valid operands."""
    p = Program()
    p.matmul(T(0, 0, (2, 3)), T(1, 0, (2, 4), DType.F16), T(2, 0, (3, 4), DType.I8, 0.5),
             transpose_b=True)  # fmt: skip
    p.add(T(0, 0, (2, 3)), T(0, 0, (2, 3)), T(3, 0, (3,)))
    p.mul(T(0, 0, (2, 3)), T(0, 0, (2, 3)), T(0, 0, (2, 3)))
    p.rmsnorm(T(0, 0, (2, 3)), T(0, 0, (2, 3)), T(3, 0, (3,)), eps=1e-6)
    p.rope(T(4, 0, (2, 8)), T(4, 0, (2, 8)), n_heads=2, head_dim=4, start_pos=7, theta=5e5)
    p.softmax(T(0, 0, (2, 3)), T(0, 0, (2, 3)))
    p.silu(T(0, 0, (2, 3)), T(0, 0, (2, 3)))
    p.embed(T(4, 0, (2, 8)), T(5, 0, (10, 8), DType.F16), T(6, 0, (2,), DType.I32))
    p.kv_write(T(7, 0, (2, 16, 4)), T(4, 0, (2, 8)), start_pos=3)
    p.attention(T(4, 0, (2, 8)), T(4, 0, (2, 8)), T(7, 0, (2, 16, 4)), T(8, 0, (2, 16, 4)),
                n_heads=2, n_kv_heads=2, head_dim=4, start_pos=3)  # fmt: skip
    p.argmax(T(6, 0, (2,), DType.I32), T(0, 0, (2, 3)))
    p.copy(T(9, 0, (6,), DType.F16), T(0, 0, (2, 3)))
    p.topk(T(10, 0, (2, 2)), T(11, 0, (2, 2), DType.I32), T(0, 0, (2, 3)))
    p.burn(0.125)
    return p


def test_every_op_round_trips() -> None:
    """Decoding an encoded program gives back the same instructions, one per op."""
    prog = full_program()
    decoded = decode(prog.encode())
    assert {ins.op for ins in decoded} == set(Op)
    for built, got in zip(prog.instructions, decoded, strict=True):
        assert got.op is built.op
        assert got.index == built.index
        assert [(t.slot, t.offset, t.shape, t.dtype) for t in got.operands] == [
            (t.slot, t.offset, t.shape, t.dtype) for t in built.operands
        ]
    assert decoded[0].params.transpose_b
    assert decoded[0].operand("b").scale == 0.5
    assert decoded[4].params.start_pos == 7
    assert decoded[4].params.theta == 5e5
    assert decoded[-1].params.seconds == 0.125


def test_byte_layout_is_as_documented() -> None:
    """Header, record header and tensor descriptor sit at the documented offsets, little-endian."""
    blob = Program().add(T(1, 64, (2, 3)), T(0, 8, (2, 3)), T(2, 0, (3,), DType.F16)).encode()
    assert blob[:4] == b"NPUC"
    assert struct.unpack_from("<HHII", blob, 4) == (1, 0, 1, len(blob))
    assert len(blob) == 16 + 8 + 3 * 32
    assert struct.unpack_from("<HBBI", blob, 16) == (int(Op.ADD), 3, 0, 8 + 3 * 32)
    slot, dtype, ndim, scale, offset, *dims = struct.unpack_from("<HBBfQ4I", blob, 24)
    assert (slot, dtype, ndim, scale, offset, dims) == (1, 1, 2, 0.0, 64, [2, 3, 0, 0])
    third = struct.unpack_from("<HBBfQ4I", blob, 24 + 64)
    assert third[:3] == (2, int(DType.F16), 1)


def test_record_lengths_follow_the_spec() -> None:
    """Each record is 8 + 32 per operand + the op's parameter block."""
    blob = full_program().encode()
    pos = 16
    for ins in decode(blob):
        spec = SPECS[ins.op]
        (length,) = struct.unpack_from("<I", blob, pos + 4)
        assert length == 8 + 32 * len(spec.operands) + spec.params_size
        pos += length
    assert pos == len(blob)


def test_builder_refuses_invalid_programs() -> None:
    """encode() validates: a shape mismatch raises CommandStreamError naming op and field."""
    prog = Program().burn(0.0)
    prog.matmul(T(0, 0, (2, 5)), T(1, 0, (2, 4)), T(2, 0, (4, 3)))
    with pytest.raises(CommandStreamError) as info:
        prog.encode()
    err = info.value
    assert isinstance(err, InvalidArgument)
    assert (err.op_index, err.opcode, err.field) == (1, "MATMUL", "out")
    assert str(err).startswith("op 1 (MATMUL): field out: shape [2, 5] does not match [2, 3]")
    prog.encode(validate=False)  # tests may still build it


def test_tensor_accepts_lists() -> None:
    """A tensor's shape may be given as a list; byte size follows dtype."""
    t = Tensor(0, 16, [2, 3], DType.F16)  # type: ignore[arg-type]
    assert t.shape == (2, 3)
    assert (t.numel, t.nbytes, t.end) == (6, 12, 28)


@pytest.mark.parametrize(
    ("build", "field", "detail"),
    [
        (lambda p: p.matmul(T(0, 0, (2, 3)), T(1, 0, (2, 4), DType.I8, 1.0), T(2, 0, (4, 3))),
         "a", "dtype I8 not allowed"),
        (lambda p: p.argmax(T(0, 0, (2,)), T(1, 0, (2, 3))), "out", "dtype F32"),
        (lambda p: p.embed(T(0, 0, (2, 4)), T(1, 0, (9, 4)), T(2, 0, (2,))), "ids", "dtype F32"),
        (lambda p: p.add(T(0, 0, (2, 3)), T(1, 0, (2, 3)), T(2, 0, (2,))), "b", "broadcast"),
        (lambda p: p.rope(T(0, 0, (2, 6)), T(1, 0, (2, 6)), n_heads=2, head_dim=3, start_pos=0),
         "head_dim", "even"),
        (lambda p: p.attention(T(0, 0, (1, 8)), T(1, 0, (1, 8)), T(2, 0, (3, 4, 4)),
                               T(3, 0, (3, 4, 4)), n_heads=2, n_kv_heads=3, head_dim=4,
                               start_pos=0), "n_kv_heads", "multiple"),
        (lambda p: p.rmsnorm(T(0, 0, (2, 3)), T(1, 0, (2, 3)), T(2, 0, (3,)), eps=0.0),
         "eps", "> 0"),
        (lambda p: p.copy(T(0, 0, (4,), DType.I32), T(1, 0, (4,))), "out", "cannot cast"),
        (lambda p: p.burn(-1.0), "seconds", "within"),
        (lambda p: p.matmul(T(0, 0, (2, 3)), T(1, 0, (2, 4)), T(2, 0, (4, 3), DType.I8)),
         "b", "scale > 0"),
    ],
)  # fmt: skip
def test_typing_rules(build, field: str, detail: str) -> None:
    """Each op's dtype and shape rules reject bad operands, naming the field."""
    prog = Program()
    build(prog)
    with pytest.raises(CommandStreamError) as info:
        prog.encode()
    assert info.value.field == field
    assert detail in str(info.value)
