"""Tensor operands: where an op's data lives, by binding slot, and what shape it has.

A :class:`Tensor` never names a kernel handle. It names a *binding slot* (an index into the
job's list of bound buffers) and a byte offset in that buffer, because a buffer's device
handle changes when npud evicts and restores it; npud maps slots to the current handles when
it submits the job. The tensor's bytes are contiguous, row-major (C order), little-endian.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from npud.isa.dtypes import DType

MAX_NDIM = 4
"""Operands have one to four dimensions."""


@dataclass(frozen=True, slots=True)
class Tensor:
    """A tensor operand: ``slot`` (binding index), byte ``offset``, ``shape``, ``dtype``.

    ``scale`` is the per-tensor dequantisation factor of an ``I8`` tensor (real = q * scale)
    and is ignored (encoded as 0.0) for every other dtype.
    """

    slot: int
    offset: int
    shape: tuple[int, ...]
    dtype: DType = DType.F32
    scale: float = 0.0

    def __post_init__(self) -> None:
        # Accept any sequence of ints for ``shape`` (lists read better in builders).
        object.__setattr__(self, "shape", tuple(int(d) for d in self.shape))
        object.__setattr__(self, "dtype", DType(self.dtype))

    @property
    def ndim(self) -> int:
        """The number of dimensions."""
        return len(self.shape)

    @property
    def numel(self) -> int:
        """The number of elements."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """The number of bytes the tensor occupies in its buffer."""
        return self.dtype.nbytes(self.numel)

    @property
    def end(self) -> int:
        """One past the last byte of the tensor in its buffer."""
        return self.offset + self.nbytes


T = Tensor
"""A short alias for building programs: ``T(slot, offset, shape, DType.F16)``."""
