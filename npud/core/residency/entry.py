"""One buffer as the residency manager keeps it, and the arithmetic of its device allocation.

:class:`Entry` is what the manager records about a buffer besides the shared
:class:`~npud.core.buffers.Buffer` fields; :class:`Mapped` is a CPU view of a resident buffer
for one copy; allocations are page-granular (:func:`pages`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from npud.core.buffers import Buffer
from npud.core.ids import BufferId, ContextId
from npud.core.registry import Registration
from npud.devices.base import Device
from npud.errors import InvalidArgument
from npud.vocab import MemoryTier

PAGE = 4096  # budgets are checked in pages: DRM drivers allocate GEM objects page-granular
DEVICE_TIERS = (MemoryTier.SRAM, MemoryTier.DRAM)


@dataclass(slots=True, eq=False)
class Entry:
    """What the manager keeps about one buffer besides the shared :class:`Buffer` fields."""

    buffer: Buffer
    stored: str | None = None  # the name it is indexed under (keys.Name.stored, or pending)
    namespace: int | None = None  # the uid whose namespace (or private upload) holds it
    host: bytearray | None = None  # spilled or staged contents (Location.HOST)
    backing: Registration | None = None  # sealed copy on disk
    hasher: Any = None  # hashlib sha256 object while writes stream in order
    hashed_upto: int = 0
    credit: float = 0.0
    pins_by: dict[ContextId | None, int] = field(default_factory=dict)
    doomed: bool = False  # released while a job runs: destroyed at end_run
    recycle: bool = False  # its device allocation goes to the owner's spares when destroyed
    recycled: bool = False  # its device allocation came from the spares


class Mapped:
    """A CPU view of a resident buffer for one copy: ``with Mapped(dev, buf) as view``."""

    def __init__(self, device: Device, buf: Buffer) -> None:
        assert buf.device is not None
        self._device = device
        self._handle = buf.device.handle
        self._view: memoryview | None = None

    def __enter__(self) -> memoryview:
        self._view = self._device.map_buffer(self._handle)
        return self._view

    def __exit__(self, *exc: object) -> None:
        if self._view is not None:
            self._view.release()
        self._device.unmap_buffer(self._handle)


def drop_pins(entry: Entry, ctx: ContextId | None, count: int) -> None:
    """Drop ``count`` of the pins ``ctx`` holds on the buffer."""
    if count <= 0:
        return
    left = entry.pins_by.get(ctx, 0) - count
    if left > 0:
        entry.pins_by[ctx] = left
    else:
        entry.pins_by.pop(ctx, None)
    entry.buffer.pins = max(0, entry.buffer.pins - count)


def distinct(buffers: Iterable[Buffer]) -> list[Buffer]:
    """``buffers`` without repeats, in first-seen order."""
    seen: dict[BufferId, Buffer] = {}
    for buf in buffers:
        seen.setdefault(buf.id, buf)
    return list(seen.values())


def pages(size: int) -> int:
    """``size`` rounded up to whole pages: what an allocation takes from a budget."""
    return -(-size // PAGE) * PAGE


def held(entry: Entry) -> int:
    """Device bytes ``entry`` holds now (0 when not resident)."""
    dev = entry.buffer.device
    return 0 if dev is None else dev.size


def largest_first(entry: Entry) -> int:
    """Sort key: larger buffers first."""
    return -entry.buffer.size


def check_range(buf: Buffer, offset: int, size: int) -> None:
    """Raises InvalidArgument unless ``[offset, offset + size)`` lies inside ``buf``."""
    if offset < 0 or size < 0 or offset + size > buf.size:
        raise InvalidArgument(
            f"range [{offset}, {offset + size}) is outside buffer {buf.id} of {buf.size} bytes"
        )
