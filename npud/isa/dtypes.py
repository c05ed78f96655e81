"""Element types of the command stream.

Six element types exist. ``I8`` is quantised: each tensor operand of dtype I8 carries one
f32 scale and its real value is ``q * scale`` (symmetric, per tensor, no zero point). ``I32``
holds ids, positions and argmax results and is never mixed into float arithmetic.

``Q8_0`` and ``Q4_1`` are block-quantised weights in GGUF's byte layout, so a GGUF model's
tensors go to the device unchanged. A block covers 32 consecutive elements of a row (the last
dimension must be a multiple of 32), little-endian:

- ``Q8_0`` (34 bytes): f16 scale ``d``, then 32 int8 ``q``; element ``j`` is ``d * q[j]``.
- ``Q4_1`` (20 bytes): f16 scale ``d``, f16 minimum ``m``, then 16 bytes; element ``j < 16``
  is ``d * (byte[j] & 15) + m`` and element ``j + 16`` is ``d * (byte[j] >> 4) + m``.

They are weight formats: only MATMUL's ``b`` (stored ``[N, K]``, ``transpose_b``) and EMBED's
``table`` may have them, and no op writes them.
"""

from __future__ import annotations

import enum

import numpy as np


class DType(enum.IntEnum):
    """The element type of a tensor operand; the value is its u8 code on the wire."""

    F32 = 1
    F16 = 2
    I8 = 3
    I32 = 4
    Q8_0 = 5
    Q4_1 = 6

    @property
    def itemsize(self) -> int:
        """Bytes per element (for a block dtype: per block, see :attr:`block`)."""
        return _ITEMSIZE[self]

    @property
    def block(self) -> int:
        """Elements per block: 32 for the block-quantised dtypes, 1 for the others."""
        return QUANT_BLOCK if self in QUANTIZED_DTYPES else 1

    def nbytes(self, numel: int) -> int:
        """Bytes of ``numel`` elements (a whole number of blocks for a block dtype)."""
        return numel // self.block * _ITEMSIZE[self]

    @property
    def numpy(self) -> np.dtype[np.generic]:
        """The little-endian numpy dtype of one element (raw bytes for a block dtype)."""
        return np.dtype(_NUMPY[self])

    @property
    def is_float(self) -> bool:
        """Whether the dtype holds real numbers (all but I32; I8 and blocks through scales)."""
        return self is not DType.I32


QUANT_BLOCK = 32
"""Elements per block of Q8_0 and Q4_1 (GGUF's QK8_0 and QK4_1)."""

_ITEMSIZE = {
    DType.F32: 4,
    DType.F16: 2,
    DType.I8: 1,
    DType.I32: 4,
    DType.Q8_0: 2 + QUANT_BLOCK,
    DType.Q4_1: 4 + QUANT_BLOCK // 2,
}
_NUMPY = {
    DType.F32: "<f4",
    DType.F16: "<f2",
    DType.I8: "i1",
    DType.I32: "<i4",
    DType.Q8_0: "u1",
    DType.Q4_1: "u1",
}

QUANTIZED_DTYPES = frozenset({DType.Q8_0, DType.Q4_1})
"""Block-quantised weight dtypes (read-only operands of MATMUL ``b`` and EMBED ``table``)."""

FLOAT_DTYPES = frozenset({DType.F32, DType.F16, DType.I8})
"""Dtypes that hold real numbers (I8 through its per-tensor scale)."""

COMPUTE_DTYPES = frozenset({DType.F32, DType.F16})
"""Dtypes an op may write real results in (outputs are never quantised except by COPY)."""

WEIGHT_DTYPES = FLOAT_DTYPES | QUANTIZED_DTYPES
"""Dtypes a weight operand (MATMUL ``b``, EMBED ``table``) may have."""
