"""Element types of the command stream.

Four element types exist. ``I8`` is quantised: each tensor operand of dtype I8 carries one
f32 scale and its real value is ``q * scale`` (symmetric, per tensor, no zero point). ``I32``
holds ids, positions and argmax results and is never mixed into float arithmetic.
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

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return _ITEMSIZE[self]

    @property
    def numpy(self) -> np.dtype[np.generic]:
        """The little-endian numpy dtype of one element."""
        return np.dtype(_NUMPY[self])

    @property
    def is_float(self) -> bool:
        """Whether the dtype holds real numbers (F32, F16, and I8 through its scale)."""
        return self is not DType.I32


_ITEMSIZE = {DType.F32: 4, DType.F16: 2, DType.I8: 1, DType.I32: 4}
_NUMPY = {DType.F32: "<f4", DType.F16: "<f2", DType.I8: "i1", DType.I32: "<i4"}

FLOAT_DTYPES = frozenset({DType.F32, DType.F16, DType.I8})
"""Dtypes that hold real numbers (I8 through its per-tensor scale)."""

COMPUTE_DTYPES = frozenset({DType.F32, DType.F16})
"""Dtypes an op may write real results in (outputs are never quantised except by COPY)."""
