"""Decode templates: one decode step compiled once, re-targeted to any position by patching.

Every decode step of a model is the same program but for its position: the position enters
only as the ``start_pos`` parameters (ROPE, KV_WRITE, ATTENTION) and as the byte offsets of the
operands in the ``tokens`` buffer (the id EMBED reads, the id ARGMAX writes). Building the
program op by op and encoding it costs ~0.7 ms of Python per step for the tiny model (more for
a real one): host CPU that, with decode pipelined, runs beside the device's work and on a small
host competes with it. A :class:`DecodeTemplate` keeps the encoded bytes of one compiled step
and the byte offsets of those fields, found by walking the instructions with the stream's
documented layout (:mod:`npud.isa.layout`), and writes a new position into a copy: a few
microseconds. ``tests/llm/test_template.py`` checks the patched bytes equal a full compile at
every position.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from npud.errors import InvalidArgument
from npud.isa.layout import HEADER, RECORD_HEADER, TENSOR
from npud.isa.opcodes import SPECS
from npud.isa.program import Instruction

_OFFSET_AT = struct.calcsize("<HBBf")  # where a tensor record's u64 byte offset starts
_OFFSET = struct.Struct("<Q")
_START_POS = struct.Struct("<I")


def _as_tuple(value: int | Sequence[int]) -> tuple[int, ...]:
    return (value,) if isinstance(value, int) else tuple(value)


class DecodeTemplate:
    """The encoded command of one decode step, and where its position-dependent fields are.

    A step batched over several sequences (rows) has one position per row: the template is
    compiled with every row at a distinct position, so a ``start_pos`` field belongs to the row
    whose position it holds, and a ``tokens`` operand to the row whose buffer slot it names.

    Args:
        instructions: the step's program, as encoded into ``command``.
        command: the encoded stream (owned by the template from now on; bytes are immutable).
        position: the position of each row the step was compiled for (one int: one row).
        tokens_slot: the binding slot of each row's ``tokens`` buffer, in row order.

    Raises:
        InvalidArgument: ``command`` is not the encoding of ``instructions`` (its length
            disagrees with the layout), so the template could patch the wrong bytes; or the
            rows' positions are not distinct, or their count differs from their slots'.
    """

    __slots__ = ("_command", "_start_sites", "_token_sites", "position")

    def __init__(
        self,
        instructions: Sequence[Instruction],
        command: bytes,
        position: int | Sequence[int],
        tokens_slot: int | Sequence[int],
    ) -> None:
        positions, slots = _as_tuple(position), _as_tuple(tokens_slot)
        if len(positions) != len(slots) or len(set(positions)) != len(positions):
            raise InvalidArgument(
                f"a decode template needs one distinct position per row: {positions} for "
                f"{len(slots)} rows"
            )
        row_of_slot = {slot: row for row, slot in enumerate(slots)}
        row_at = {pos: row for row, pos in enumerate(positions)}
        self._command = command
        self.position = positions
        # (byte offset, row, tensor offset - position * 4) and (byte offset, row)
        token_sites: list[tuple[int, int, int]] = []
        start_sites: list[tuple[int, int]] = []
        at = HEADER.size
        for ins in instructions:
            spec = SPECS[ins.op]
            field = at + RECORD_HEADER.size
            for tensor in ins.operands:
                row = row_of_slot.get(tensor.slot)
                if row is not None:
                    relative = tensor.offset - positions[row] * 4
                    token_sites.append((field + _OFFSET_AT, row, relative))
                field += TENSOR.size
            for name, code in spec.params:
                if name == "start_pos":
                    if ins.params.start_pos not in row_at:
                        raise InvalidArgument(
                            f"op {ins.index} ({ins.op.name}) is at position "
                            f"{ins.params.start_pos}, which is no row's"
                        )
                    start_sites.append((field, row_at[ins.params.start_pos]))
                field += struct.calcsize("<" + code)
            at = field
        if at != len(command):
            raise InvalidArgument(
                f"a decode template's layout ends at byte {at}, its command has {len(command)}"
            )
        self._token_sites = tuple(token_sites)
        self._start_sites = tuple(start_sites)

    def at(self, position: int | Sequence[int]) -> bytes:
        """The command of the decode step at ``position`` (one per row; the caller checked
        the bounds)."""
        positions = _as_tuple(position)
        buf = bytearray(self._command)
        for site, row, relative in self._token_sites:
            _OFFSET.pack_into(buf, site, relative + positions[row] * 4)
        for site, row in self._start_sites:
            _START_POS.pack_into(buf, site, positions[row])
        return bytes(buf)
