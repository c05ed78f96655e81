"""Buffers as core sees them: npud's memory objects, independent of where they live.

A :class:`Buffer` is an npud object with a stable id. Where its bytes are at a given moment
(device SRAM, device DRAM, host memory, a spill file, nowhere yet) is the residency manager's
business (:mod:`npud.core.residency`); a buffer's device handle may change across eviction and
restore, which is why command streams address buffers by binding slot, never by handle.

Lifetimes: an EPHEMERAL buffer belongs to one context and dies with it. A PERSISTENT buffer is
keyed (content hash or name + version), shared by every context that attaches it, and stays in
the warm pool after its last user leaves until memory pressure evicts it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from npud.core.ids import BufferId, ContextId
from npud.devices.base import DeviceBuffer
from npud.vocab import BufferUsage, MemoryTier, Persistence, TierPreference


class Location(enum.StrEnum):
    """Where a buffer's contents are right now (kept up to date by the residency manager)."""

    EMPTY = "empty"  # never written, or scratch whose contents were dropped: reads give zeros
    RESIDENT = "resident"  # in device memory (``Buffer.device`` says which tier)
    HOST = "host"  # spilled to (or staged in) host memory, restored bit-exact on next use
    BACKED = "backed"  # only the backing copy (a file in the state directory) holds it


@dataclass(slots=True, eq=False)
class Buffer:
    """One npud buffer (an identity object: two buffers are never equal by value).

    ``users`` are the contexts holding a reference; ``device`` is the current device
    allocation or ``None`` when not resident; ``pins`` counts explicit pins and
    ``in_use`` counts running jobs bound to it: a buffer with either is never evicted.
    ``location`` says where the contents are (device, host spill, backing file, nowhere);
    only the residency manager changes it and ``device``.
    """

    id: BufferId
    size: int
    usage: BufferUsage
    persistence: Persistence
    tier_preference: TierPreference = TierPreference.ANY
    key: str | None = None
    owner: ContextId | None = None  # the creating context (EPHEMERAL: the only user)
    users: set[ContextId] = field(default_factory=set)
    device: DeviceBuffer | None = None
    pins: int = 0
    in_use: int = 0
    last_used: float = 0.0
    valid: bool = False  # whether its contents have been written (or computed) at least once
    sealed: bool = False  # PERSISTENT contents frozen by ``seal``: immutable, shareable by key
    location: Location = Location.EMPTY
    binds: int = 0  # how many jobs have been prepared with it (the SRAM policy's "hot")

    @property
    def resident_tier(self) -> MemoryTier | None:
        """The tier the buffer currently occupies on the device, or ``None``."""
        return None if self.device is None else self.device.tier

    @property
    def evictable(self) -> bool:
        """Whether eviction may take this buffer's device memory now."""
        return self.device is not None and self.pins == 0 and self.in_use == 0
