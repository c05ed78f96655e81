"""The npud command-stream format (v1): a small tensor ISA, its builder and its validating decoder.

A leaf: used by the simulated NPU to execute, and by clients (the LLM workload) to compile.
It imports only the standard library, numpy and :mod:`npud.errors`.

Operands address buffers by *binding slot* (an index into the job's list of bound buffers)
plus a byte offset, never by kernel handle: npud maps slots to the current handles when it
submits a job, so a buffer may be evicted and restored between jobs. The byte layout is in
:mod:`npud.isa.layout` and ``docs/sim.md``; op semantics on :class:`Op`.

Typical use::

    from npud.isa import DType, Program, T
    prog = Program()
    prog.add(out=T(2, 0, (4, 8)), a=T(0, 0, (4, 8)), b=T(1, 0, (8,)))
    blob = prog.encode()
"""

from npud.isa.decode import decode
from npud.isa.dtypes import DType
from npud.isa.errors import CommandStreamError
from npud.isa.footprint import Access, SlotFootprint, accesses, slot_footprints
from npud.isa.layout import MAGIC, VERSION
from npud.isa.opcodes import SPECS, Op, OpSpec
from npud.isa.program import Instruction, Params, Program, encode_instructions
from npud.isa.signatures import MAX_BURN_S
from npud.isa.tensor import T, Tensor

__all__ = [
    "MAGIC",
    "MAX_BURN_S",
    "SPECS",
    "VERSION",
    "Access",
    "CommandStreamError",
    "DType",
    "Instruction",
    "Op",
    "OpSpec",
    "Params",
    "Program",
    "SlotFootprint",
    "T",
    "Tensor",
    "accesses",
    "decode",
    "encode_instructions",
    "slot_footprints",
]
