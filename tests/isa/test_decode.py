"""The validating decoder: precise errors for malformed streams, and no other exception ever."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npud.isa import CommandStreamError, DType, Op, Program, T, decode
from tests.isa.test_format import full_program

GOOD = full_program().encode()


def err(blob: bytes, sizes: list[int] | None = None) -> CommandStreamError:
    with pytest.raises(CommandStreamError) as info:
        decode(blob, sizes)
    return info.value


def test_header_errors() -> None:
    """Short streams, bad magic, version, flags and total_size are header errors."""
    assert str(err(b"NPU")).startswith("header: field total_size: stream is 3 bytes")
    assert err(b"XPUC" + GOOD[4:]).field == "magic"
    assert err(GOOD[:4] + struct.pack("<H", 2) + GOOD[6:]).field == "version"
    assert err(GOOD[:6] + struct.pack("<H", 1) + GOOD[8:]).field == "flags"
    assert err(GOOD + b"\0").field == "total_size"
    assert err(GOOD[:8] + struct.pack("<I", 10**6) + GOOD[12:]).field == "op_count"


def outcome(blob: bytes, sizes: list[int]) -> CommandStreamError | None:
    """The decoder's error, or None when the stream decodes."""
    try:
        decode(blob, sizes)
    except CommandStreamError as e:
        return e
    return None


def test_truncated_record() -> None:
    """A stream cut inside a record (header patched to match) names that record."""
    blob = bytearray(GOOD[:300])
    struct.pack_into("<II", blob, 8, 3, len(blob))
    e = err(bytes(blob))
    assert e.op_index == 2
    assert e.field == "record_length"


def test_unknown_opcode_and_bad_lengths() -> None:
    """Unknown opcodes, operand counts, reserved bytes and record lengths are refused."""
    blob = bytearray(GOOD)
    struct.pack_into("<H", blob, 16, 999)
    e = err(bytes(blob))
    assert (e.op_index, e.field) == (0, "opcode")
    assert str(e) == "op 0 (opcode 999): field opcode: unknown opcode 999"
    for offset, value, field in ((18, 2, "n_operands"), (19, 1, "reserved")):
        blob = bytearray(GOOD)
        blob[offset] = value
        assert err(bytes(blob)).field == field
    blob = bytearray(GOOD)
    struct.pack_into("<I", blob, 20, 1000)
    assert str(err(bytes(blob))).startswith("op 0 (MATMUL): field record_length: expected 108")


def test_tensor_descriptor_errors() -> None:
    """Unknown dtype codes, ndim out of range, zero dims and junk beyond ndim are refused."""
    first = 16 + 8  # op 0's first tensor
    for offset, value, detail in (
        (first + 2, 9, "unknown dtype code 9"),
        (first + 3, 0, "ndim 0 out of range"),
        (first + 3, 5, "ndim 5 out of range"),
    ):
        blob = bytearray(GOOD)
        blob[offset] = value
        e = err(bytes(blob))
        assert (e.op_index, e.field) == (0, "out")
        assert detail in str(e)
    blob = bytearray(GOOD)
    struct.pack_into("<I", blob, first + 16, 0)
    assert "dimension outside" in str(err(bytes(blob)))
    blob = bytearray(GOOD)
    struct.pack_into("<I", blob, first + 28, 7)
    assert "beyond ndim" in str(err(bytes(blob)))


def test_bounds_against_bindings() -> None:
    """With binding sizes, unbound slots and operands past a buffer's end are refused."""
    blob = Program().add(T(1, 64, (4,)), T(0, 0, (4,)), T(0, 16, (4,))).encode()
    assert decode(blob, [32, 80])
    e = err(blob, [32])
    assert str(e) == "op 0 (ADD): field out: slot 1 out of range: the job binds 1 buffers"
    e = err(blob, [32, 79])
    assert str(e) == "op 0 (ADD): field out: bytes [64, 80) run past the end of slot 1 (79 bytes)"
    e = err(blob, [31, 80])
    assert e.field == "b"


def test_accepts_bytearray_and_memoryview() -> None:
    """The decoder reads any bytes-like object."""
    assert len(decode(bytearray(GOOD))) == len(decode(memoryview(GOOD))) == len(Op)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_crash(blob: bytes) -> None:
    """Any bytes either decode or raise CommandStreamError: nothing else."""
    e = outcome(blob, [1 << 20] * 4)
    assert e is None or str(e).startswith(("header: field ", "op "))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, len(GOOD) - 1), st.integers(0, 255)), min_size=1, max_size=6),
    st.lists(st.integers(0, 1 << 16), min_size=0, max_size=12),
)
def test_mutated_streams_never_crash(edits: list[tuple[int, int]], sizes: list[int]) -> None:
    """Byte edits of a valid stream either decode or raise CommandStreamError naming a field."""
    blob = bytearray(GOOD)
    for pos, value in edits:
        blob[pos] = value
    e = outcome(bytes(blob), sizes)
    if e is not None:
        assert e.field
        assert e.op_index is None or 0 <= e.op_index < len(Op)


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([DType.F32, DType.F16]),
            st.integers(1, 5),
            st.integers(1, 5),
            st.integers(0, 512),
        ),
        min_size=1,
        max_size=8,
    )
)
def test_valid_programs_round_trip(ops: list[tuple[DType, int, int, int]]) -> None:
    """Any program of well-typed ops survives encode/decode unchanged."""
    prog = Program()
    for dtype, m, n, offset in ops:
        prog.silu(T(0, offset, (m, n), dtype), T(1, offset, (m, n), DType.I8, 0.25))
    decoded = decode(prog.encode())
    assert [i.operands for i in decoded] == [i.operands for i in prog.instructions]
