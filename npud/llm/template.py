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


class DecodeTemplate:
    """The encoded command of one decode step, and where its position-dependent fields are.

    Args:
        instructions: the step's program, as encoded into ``command``.
        command: the encoded stream (owned by the template from now on; bytes are immutable).
        position: the position the step was compiled for.
        tokens_slot: the binding slot of the ``tokens`` buffer.

    Raises:
        InvalidArgument: ``command`` is not the encoding of ``instructions`` (its length
            disagrees with the layout), so the template could patch the wrong bytes.
    """

    __slots__ = ("_command", "_start_sites", "_token_sites", "position")

    def __init__(
        self, instructions: Sequence[Instruction], command: bytes, position: int, tokens_slot: int
    ) -> None:
        self._command = command
        self.position = position
        token_sites: list[tuple[int, int]] = []  # (byte offset, tensor offset - position * 4)
        start_sites: list[int] = []
        at = HEADER.size
        for ins in instructions:
            spec = SPECS[ins.op]
            field = at + RECORD_HEADER.size
            for tensor in ins.operands:
                if tensor.slot == tokens_slot:
                    token_sites.append((field + _OFFSET_AT, tensor.offset - position * 4))
                field += TENSOR.size
            for name, code in spec.params:
                if name == "start_pos":
                    start_sites.append(field)
                field += struct.calcsize("<" + code)
            at = field
        if at != len(command):
            raise InvalidArgument(
                f"a decode template's layout ends at byte {at}, its command has {len(command)}"
            )
        self._token_sites = tuple(token_sites)
        self._start_sites = tuple(start_sites)

    def at(self, position: int) -> bytes:
        """The command of the decode step at ``position`` (the caller checked the bounds)."""
        buf = bytearray(self._command)
        for site, relative in self._token_sites:
            _OFFSET.pack_into(buf, site, relative + position * 4)
        for site in self._start_sites:
            _START_POS.pack_into(buf, site, position)
        return bytes(buf)
