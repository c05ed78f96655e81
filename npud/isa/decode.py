"""The validating decoder: bytes in, checked :class:`~npud.isa.program.Instruction` list out.

The decoder is the device's first line of defence: a command stream arrives from a client
that npud does not trust, so every length, code and bound is checked before any of it is
used, and the only exception it raises for any input whatsoever is
:class:`~npud.isa.errors.CommandStreamError` (property-tested on arbitrary bytes).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

from npud.isa.dtypes import DType
from npud.isa.errors import CommandStreamError
from npud.isa.layout import HEADER, MAGIC, RECORD_HEADER, TENSOR, VERSION
from npud.isa.opcodes import SPECS, Op
from npud.isa.program import Instruction, Params
from npud.isa.signatures import check_signature
from npud.isa.tensor import MAX_NDIM, Tensor

MAX_DIM = 1 << 31
"""The largest extent of one dimension (dims are u32 on the wire; 2**31 keeps sizes sane)."""


def _header_error(field: str, detail: str) -> CommandStreamError:
    return CommandStreamError(None, None, field, detail)


def _parse_tensor(data: bytes, pos: int, index: int, op: Op, name: str) -> Tensor:
    slot, dtype_code, ndim, scale, offset, *dims = TENSOR.unpack_from(data, pos)

    def fail(detail: str) -> CommandStreamError:
        return CommandStreamError(index, op.name, name, detail)

    try:
        dtype = DType(dtype_code)
    except ValueError:
        raise fail(f"unknown dtype code {dtype_code}") from None
    if not 1 <= ndim <= MAX_NDIM:
        raise fail(f"ndim {ndim} out of range [1, {MAX_NDIM}]")
    used, unused = dims[:ndim], dims[ndim:]
    if any(d == 0 or d > MAX_DIM for d in used):
        raise fail(f"shape {used} has a dimension outside [1, {MAX_DIM}]")
    if any(unused):
        raise fail(f"dims beyond ndim {ndim} must be 0, got {dims}")
    if not math.isfinite(scale):
        raise fail(f"scale {scale} is not finite")
    if dtype is DType.I8 and scale <= 0:
        raise fail(f"I8 tensor needs a scale > 0, got {scale}")
    if used[-1] % dtype.block:
        raise fail(
            f"shape {used}: the last dimension must be a multiple of the {dtype.name} "
            f"block of {dtype.block}"
        )
    return Tensor(slot, offset, tuple(used), dtype, scale)


def _check_bounds(ins: Instruction, binding_sizes: Sequence[int]) -> None:
    for name, t in ins.named_operands():
        if t.slot >= len(binding_sizes):
            raise CommandStreamError(
                ins.index,
                ins.op.name,
                name,
                f"slot {t.slot} out of range: the job binds {len(binding_sizes)} buffers",
            )
        size = binding_sizes[t.slot]
        if t.end > size:
            raise CommandStreamError(
                ins.index,
                ins.op.name,
                name,
                f"bytes [{t.offset}, {t.end}) run past the end of slot {t.slot} ({size} bytes)",
            )


def decode(
    blob: bytes | bytearray | memoryview, binding_sizes: Sequence[int] | None = None
) -> list[Instruction]:
    """Decode and validate a v1 command stream.

    Args:
        blob: the stream, exactly ``total_size`` bytes long.
        binding_sizes: the byte size of each bound buffer, by slot. When given, every
            operand's slot must be bound and its bytes must lie inside that buffer.

    Returns:
        The instructions, in order; the caller owns the list.

    Raises:
        CommandStreamError: anything malformed: truncation, bad magic or version, an unknown
            opcode or dtype, a bad record length, a wrong dtype or mismatched shapes for an
            op, an operand out of its buffer or an unbound slot. The message names the op
            index, the opcode and the field.
    """
    data = bytes(blob)
    if len(data) < HEADER.size:
        raise _header_error(
            "total_size", f"stream is {len(data)} bytes, shorter than the {HEADER.size}-byte header"
        )
    magic, version, flags, op_count, total_size = HEADER.unpack_from(data, 0)
    if magic != MAGIC:
        raise _header_error("magic", f"expected {MAGIC!r}, got {magic!r}")
    if version != VERSION:
        raise _header_error("version", f"unsupported version {version} (this decoder reads 1)")
    if flags != 0:
        raise _header_error("flags", f"reserved flags must be 0, got {flags:#x}")
    if total_size != len(data):
        raise _header_error(
            "total_size", f"header says {total_size} bytes, the stream is {len(data)} bytes"
        )
    if op_count > (len(data) - HEADER.size) // RECORD_HEADER.size:
        raise _header_error(
            "op_count", f"{op_count} records cannot fit in {len(data) - HEADER.size} bytes"
        )

    instructions: list[Instruction] = []
    pos = HEADER.size
    for index in range(op_count):
        if pos + RECORD_HEADER.size > len(data):
            raise CommandStreamError(index, "?", "record_length", "stream truncated in header")
        code, n_operands, reserved, length = RECORD_HEADER.unpack_from(data, pos)
        try:
            op = Op(code)
        except ValueError:
            raise CommandStreamError(
                index, f"opcode {code}", "opcode", f"unknown opcode {code}"
            ) from None
        spec = SPECS[op]
        if n_operands != len(spec.operands):
            raise CommandStreamError(
                index,
                op.name,
                "n_operands",
                f"expected {len(spec.operands)} operands, got {n_operands}",
            )
        if reserved != 0:
            raise CommandStreamError(index, op.name, "reserved", f"must be 0, got {reserved}")
        expected = RECORD_HEADER.size + TENSOR.size * n_operands + spec.params_size
        if length != expected:
            raise CommandStreamError(
                index, op.name, "record_length", f"expected {expected} bytes, got {length}"
            )
        if pos + length > len(data):
            raise CommandStreamError(
                index,
                op.name,
                "record_length",
                f"record of {length} bytes at offset {pos} runs past the stream end "
                f"({len(data)} bytes)",
            )
        cursor = pos + RECORD_HEADER.size
        operands = []
        for name in spec.operands:
            operands.append(_parse_tensor(data, cursor, index, op, name))
            cursor += TENSOR.size
        values = dict(
            zip(
                (name for name, _ in spec.params),
                struct.unpack_from(spec.params_format, data, cursor),
                strict=True,
            )
        )
        ins = Instruction(index, op, tuple(operands), Params(**values))
        check_signature(ins)
        if binding_sizes is not None:
            _check_bounds(ins, binding_sizes)
        instructions.append(ins)
        pos += length
    if pos != len(data):
        raise _header_error(
            "op_count", f"{len(data) - pos} bytes follow the last of {op_count} records"
        )
    return instructions
