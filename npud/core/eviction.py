"""Cost-aware eviction: which resident buffers give their device memory back first.

When a tier is full, the residency manager must choose victims among buffers that are neither
pinned nor bound to a running job. Choosing by recency alone (LRU) ignores that buffers differ
in what eviction costs: a scratch buffer is simply dropped, sealed weights are dropped and later
re-read from their backing file, and a KV cache must be copied out now *and* copied back in
later. This module prices those costs and keeps a GreedyDual-Size credit per buffer.

Why GreedyDual-Size (Cao & Irani, 1997)
---------------------------------------
Every resident buffer carries a credit ``H = L + reload_cost / size``, refreshed whenever a job
(or a client write) touches it. The victim is the buffer with the smallest ``H``; the global
inflation value ``L`` then rises to that ``H``. The effect:

* *last use*: a buffer touched recently was given a credit relative to a larger ``L`` than one
  touched long ago, so idle buffers go first (with equal costs this is exactly LRU);
* *reload cost*: a buffer that is expensive to bring back per byte freed outlives a cheap one
  of the same age, by the difference in cost per byte: scratch is simply dropped (nearly free),
  a KV cache is copied out now and back later (two host copies), sealed weights are re-read
  from their backing file (slower per byte than memory, but nothing is copied now);
* *size*: the cost includes a fixed per-buffer overhead (an allocation and a map), so small
  buffers cost more per byte to reload and are kept longer, while a large idle buffer frees
  many bytes for one eviction.

All without tunable time constants: credits age only as evictions happen, so a system that
never runs short never reorders anything. Ties go to the least recently used.
"""

from __future__ import annotations

from dataclasses import dataclass

from npud.core.buffers import Buffer
from npud.vocab import BufferUsage

# Modelled costs of moving bytes (seconds per byte and per buffer). They rank buffers against
# one another; only their ratios matter, so round public figures are enough: a memcpy between
# host memory and a CPU-mapped device buffer runs at a few GB/s on an edge board, a page-cache
# or eMMC/NVMe read of a backing file at around 1 GB/s.
HOST_COPY_BYTES_PER_S = 4e9
FILE_READ_BYTES_PER_S = 1e9
FIXED_COST_S = 50e-6  # one allocation + map/unmap round trip through the driver


class EvictionAction:
    """What eviction does with a buffer's contents (string constants, for statistics)."""

    DROP = "drop"  # contents need not survive (scratch, never written)
    DROP_BACKED = "drop_backed"  # contents survive in the backing file
    SPILL = "spill"  # contents are copied to host memory and restored bit-exact
    FORGET = "forget"  # an unused warm-pool buffer without a backing copy is destroyed


def eviction_action(buffer: Buffer, *, backed: bool) -> str:
    """How evicting ``buffer`` treats its contents.

    ``backed`` says whether an up-to-date backing copy (a file in the state directory) exists.
    """
    if not buffer.valid or buffer.usage is BufferUsage.SCRATCH:
        return EvictionAction.DROP
    if backed:
        return EvictionAction.DROP_BACKED
    if not buffer.users and buffer.usage is not BufferUsage.STATE:
        return EvictionAction.FORGET
    return EvictionAction.SPILL


def reload_cost_s(buffer: Buffer, *, backed: bool) -> float:
    """The modelled cost in seconds of evicting ``buffer`` now and bringing it back later."""
    action = eviction_action(buffer, backed=backed)
    if action == EvictionAction.DROP:
        return FIXED_COST_S
    if action == EvictionAction.DROP_BACKED:
        return FIXED_COST_S + buffer.size / FILE_READ_BYTES_PER_S
    if action == EvictionAction.FORGET:
        # The client must upload it again: at least a host copy, usually more.
        return FIXED_COST_S + buffer.size / HOST_COPY_BYTES_PER_S
    # Spill now and restore later: two copies.
    return FIXED_COST_S + 2 * buffer.size / HOST_COPY_BYTES_PER_S


@dataclass(slots=True)
class GreedyDual:
    """GreedyDual-Size credits (see the module docstring): ``touch`` on use, ``victim`` order.

    ``inflation`` is the value ``L``; credits are kept by the caller's buffer id.
    """

    inflation: float = 0.0

    def credit(self, buffer: Buffer, *, backed: bool) -> float:
        """The credit a buffer earns when touched now."""
        return self.inflation + reload_cost_s(buffer, backed=backed) / max(buffer.size, 1)

    def evicted(self, credit: float) -> None:
        """Record that a buffer with ``credit`` was evicted: ``L`` rises to it."""
        self.inflation = max(self.inflation, credit)
