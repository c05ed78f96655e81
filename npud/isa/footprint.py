"""What a program touches: bytes moved per operand and byte ranges read/written per slot.

Two views of the same accesses. ``bytes_moved`` is what an op actually transfers (an EMBED
reads T rows of its table, not the table; ATTENTION reads only the cache prefix up to its
last position) and feeds the device's cost model. The *range* is the smallest contiguous
byte span that holds every byte the op may touch, which a scheduler can use to decide
whether two jobs conflict on a buffer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from npud.isa.opcodes import SPECS, Op
from npud.isa.program import Instruction
from npud.isa.tensor import Tensor


@dataclass(frozen=True, slots=True)
class Access:
    """One operand access of one op."""

    name: str
    tensor: Tensor
    write: bool
    start: int  # first byte of the touched span in the slot's buffer
    end: int  # one past the last byte
    bytes_moved: int


def _cache_prefix(t: Tensor, first: int, last: int, write: bool, name: str) -> Access:
    # Rows first..last-1 of every head of a [Hkv, S, Dh] cache.
    hkv, s, dh = t.shape
    item = t.dtype.itemsize
    start = t.offset + first * dh * item
    end = t.offset + ((hkv - 1) * s + last) * dh * item
    return Access(name, t, write, start, end, hkv * (last - first) * dh * item)


def accesses(ins: Instruction) -> list[Access]:
    """Every operand access of ``ins``, with its byte span and the bytes it moves."""
    writes = SPECS[ins.op].writes
    out: list[Access] = []
    for name, t in ins.named_operands():
        access = Access(name, t, name in writes, t.offset, t.end, t.nbytes)
        if ins.op is Op.EMBED and name == "table":
            rows = ins.operand("ids").shape[0]
            moved = rows * t.dtype.nbytes(t.shape[1])
            access = Access(name, t, False, t.offset, t.end, moved)
        elif ins.op is Op.KV_WRITE and name == "cache":
            tokens = ins.operand("src").shape[0]
            p = ins.params.start_pos
            access = _cache_prefix(t, p, p + tokens, True, name)
        elif ins.op is Op.ATTENTION and name in ("k_cache", "v_cache"):
            last = ins.params.start_pos + ins.operand("q").shape[0]
            access = _cache_prefix(t, 0, last, False, name)
        out.append(access)
    return out


@dataclass(frozen=True, slots=True)
class SlotFootprint:
    """The merged byte spans a program reads from and writes to one binding slot."""

    slot: int
    read: tuple[tuple[int, int], ...]
    written: tuple[tuple[int, int], ...]

    @property
    def bytes_read(self) -> int:
        """The size of the union of read spans."""
        return sum(e - s for s, e in self.read)

    @property
    def bytes_written(self) -> int:
        """The size of the union of written spans."""
        return sum(e - s for s, e in self.written)


def _merge(spans: Iterable[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
    merged: list[tuple[int, int]] = []
    for s, e in sorted(spans):
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return tuple(merged)


def slot_footprints(instructions: Sequence[Instruction]) -> dict[int, SlotFootprint]:
    """Per binding slot, the byte spans the program may read and write (merged, sorted).

    A slot a program never touches is absent. Cheap: one pass over the operands.
    """
    reads: dict[int, list[tuple[int, int]]] = {}
    writes: dict[int, list[tuple[int, int]]] = {}
    for ins in instructions:
        for a in accesses(ins):
            (writes if a.write else reads).setdefault(a.tensor.slot, []).append((a.start, a.end))
    return {
        slot: SlotFootprint(slot, _merge(reads.get(slot, ())), _merge(writes.get(slot, ())))
        for slot in sorted(reads.keys() | writes.keys())
    }
