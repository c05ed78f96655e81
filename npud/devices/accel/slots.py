"""Command slots: driver-owned command BOs reused across jobs, one per job in flight.

Some kernels keep a job's command buffer busy (ivpu refuses a buffer still in use with EBUSY)
or write the job's state into it (amdxdna), so a submission's command bytes go into a slot the
job owns until it completes. :class:`CommandSlots` keeps them; its :meth:`~CommandSlots.statistics`
is a frozen :class:`SlotStatistics`.
"""

from __future__ import annotations

import contextlib
import mmap
from collections.abc import Callable
from dataclasses import dataclass

from npud.devices.base import BoHandle
from npud.errors import NpudError


@dataclass(slots=True, eq=False)
class CommandSlot:
    """A driver-owned command BO that one in-flight job uses at a time."""

    handle: BoHandle
    size: int
    mapping: mmap.mmap | memoryview


@dataclass(frozen=True, slots=True)
class SlotStatistics:
    """A snapshot of a device's command slots."""

    slots: int
    idle: int
    reused: int
    bytes: int


class CommandSlots:
    """Command BOs reused across jobs, one per in-flight job.

    Why: ivpu refuses a command buffer still in use by an earlier job (EBUSY) and reports the
    job's status in it; amdxdna writes the command's state into its command BO. So a
    submission's command bytes are copied into a slot the job owns until it completes, and two
    jobs built from the same npud command buffer can be in flight together. Slots come in
    power-of-two sizes (at least a page) so a few cover any mix of jobs.
    """

    def __init__(
        self,
        alloc: Callable[[int], tuple[BoHandle, mmap.mmap | memoryview]],
        free: Callable[[BoHandle], None],
    ) -> None:
        self._alloc = alloc
        self._free = free
        self._idle: list[CommandSlot] = []
        self._all: list[CommandSlot] = []
        self.reused = 0

    def take(self, data: bytes | memoryview) -> CommandSlot:
        """A slot holding ``data`` at offset 0 (zero-filled after it); owned until :meth:`give`."""
        need = len(data)
        fits = [s for s in self._idle if s.size >= need]
        if fits:
            slot = min(fits, key=lambda s: s.size)
            self._idle.remove(slot)
            self.reused += 1
        else:
            size = max(4096, 1 << (need - 1).bit_length())
            handle, mapping = self._alloc(size)
            slot = CommandSlot(handle, size, mapping)
            self._all.append(slot)
        view = memoryview(slot.mapping)
        view[:need] = data
        view[need : slot.size] = bytes(slot.size - need)
        view.release()
        return slot

    def give(self, slot: CommandSlot) -> None:
        """Return a slot whose job completed."""
        self._idle.append(slot)

    def statistics(self) -> SlotStatistics:
        """A frozen snapshot: slots made, idle now, reuses, bytes held."""
        return SlotStatistics(
            slots=len(self._all),
            idle=len(self._idle),
            reused=self.reused,
            bytes=sum(s.size for s in self._all),
        )

    def handles(self) -> set[BoHandle]:
        """Every slot's handle."""
        return {s.handle for s in self._all}

    def close(self) -> None:
        """Free every slot (device close)."""
        for slot in self._all:
            if isinstance(slot.mapping, mmap.mmap):
                slot.mapping.close()
            with contextlib.suppress(NpudError):
                self._free(slot.handle)
        self._all.clear()
        self._idle.clear()
