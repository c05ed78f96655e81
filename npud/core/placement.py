"""Tier placement: which buffers belong in on-chip SRAM and which in DRAM.

On-chip SRAM is small (hundreds of KiB to a few MiB on edge NPUs) and several times faster than
DRAM. A job's memory time is the bytes each operation moves divided by the bandwidth of the tier
the operand lives in, so the bytes worth placing in SRAM are the ones touched most often per
job, per byte of SRAM they occupy.

Why this policy
---------------
In an LLM decode step every weight matrix is read exactly once, while the KV cache and the small
activation/scratch buffers are read and written by several operations of the same step (a
projection writes them, norm/rope/attention read them again). Bytes of state and scratch are
therefore the hottest per byte, and they are also the ones small enough to fit. So:

* ``TierPreference.SRAM``: SRAM whenever it fits (the client asked), else DRAM;
* ``TierPreference.DRAM``: never SRAM;
* ``TierPreference.ANY`` with the policy on: STATE and SCRATCH buffers that fit in a share of
  SRAM (at most half of it, so one buffer cannot monopolise the tier), and any other buffer
  that is small (at most an eighth of SRAM) and has been bound by at least two jobs;
* everything else: DRAM.

Candidates go to SRAM at creation when free SRAM holds them, or are promoted (copied) when a
job is prepared and SRAM has room. SRAM is not taken from another buffer that is in active use:
a tenant's KV cache is not bounced out to make room for another's, which would trade a copy of
the whole buffer per switch for a bandwidth gain per step. SRAM held by buffers nobody uses any
more (the warm pool) is reclaimed by demoting them to DRAM. A device without SRAM (capacity 0)
gets no SRAM placements and reports the tier empty.
"""

from __future__ import annotations

from npud.core.buffers import Buffer
from npud.vocab import BufferUsage, TierPreference

MAX_SHARE = 2  # a STATE/SCRATCH candidate may use at most 1/MAX_SHARE of SRAM
SMALL_SHARE = 8  # other buffers qualify at 1/SMALL_SHARE of SRAM ...
HOT_BINDS = 2  # ... once this many jobs have bound them


def wants_sram(buffer: Buffer, *, sram_budget: int, policy: bool) -> bool:
    """Whether ``buffer`` should live in SRAM when there is room (see the module docstring)."""
    if sram_budget <= 0 or buffer.size > sram_budget:
        return False
    if buffer.tier_preference is TierPreference.SRAM:
        return True
    if buffer.tier_preference is TierPreference.DRAM or not policy:
        return False
    if buffer.usage in (BufferUsage.STATE, BufferUsage.SCRATCH):
        return buffer.size * MAX_SHARE <= sram_budget
    return buffer.size * SMALL_SHARE <= sram_budget and buffer.binds >= HOT_BINDS


def sram_rank(buffer: Buffer) -> tuple[int, int]:
    """Order in which a job's SRAM candidates claim free SRAM (smaller sorts first).

    Explicit SRAM requests first, then state, then scratch, then the rest; smaller before
    larger within a group, so more buffers fit.
    """
    if buffer.tier_preference is TierPreference.SRAM:
        group = 0
    elif buffer.usage is BufferUsage.STATE:
        group = 1
    elif buffer.usage is BufferUsage.SCRATCH:
        group = 2
    else:
        group = 3
    return (group, buffer.size)
