"""The byte layout of command-stream v1 (little-endian, ``struct``-packed, no padding).

::

    stream  := header record{op_count}
    header  := magic "NPUC" (4s) | version u16 = 1 | flags u16 = 0 | op_count u32 |
               total_size u32                                     (16 bytes)
    record  := opcode u16 | n_operands u8 | reserved u8 = 0 | record_length u32 |
               tensor{n_operands} | params                        (8 + 32 n + |params|)
    tensor  := slot u16 | dtype u8 | ndim u8 | scale f32 | offset u64 | dims 4 x u32
                                                                  (32 bytes)

``total_size`` is the length of the whole stream, header included; ``record_length`` the
length of one record, its own header included. Unused dims are 0. ``scale`` is the I8
dequantisation factor and 0.0 for other dtypes. The parameter block of each opcode is fixed
(:data:`npud.isa.opcodes.SPECS`).
"""

from __future__ import annotations

import struct

MAGIC = b"NPUC"
VERSION = 1

HEADER = struct.Struct("<4sHHII")
RECORD_HEADER = struct.Struct("<HBBI")
TENSOR = struct.Struct("<HBBfQ4I")

assert HEADER.size == 16
assert RECORD_HEADER.size == 8
assert TENSOR.size == 32
