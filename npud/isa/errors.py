"""The one error a command stream can raise: what was wrong, where, in which field.

The message always starts with the place (``op 3 (MATMUL): field b:`` or ``header: field
magic:``) so that a job's failure reason tells its author exactly which record to fix.
"""

from __future__ import annotations

from npud.errors import InvalidArgument


class CommandStreamError(InvalidArgument):
    """A command stream is malformed, or an op faulted on its data (e.g. an id out of range).

    Attributes:
        op_index: the index of the offending op record, or ``None`` for the stream header.
        opcode: the op's name (``"MATMUL"``), the raw number if unknown, or ``None``.
        field: the name of the offending field (``"b"``, ``"shape"``, ``"record_length"``).
        detail: what was wrong, with the limit and the value found.
    """

    def __init__(self, op_index: int | None, opcode: str | None, field: str, detail: str) -> None:
        where = "header" if op_index is None else f"op {op_index} ({opcode})"
        super().__init__(f"{where}: field {field}: {detail}")
        self.op_index = op_index
        self.opcode = opcode
        self.field = field
        self.detail = detail
