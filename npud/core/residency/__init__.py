"""Residency: where every buffer's bytes live, per device, across jobs, contexts and processes.

One :class:`ResidencyManager` per device owns every :class:`~npud.core.buffers.Buffer` on it
and decides, at every moment, whether a buffer's contents are in device SRAM, device DRAM, host
memory (a spill), only in a backing file, or nowhere yet. Clients see stable buffer ids; the
device handle behind an id changes across eviction and restore, which is why jobs bind buffers
by slot and the scheduler asks :meth:`ResidencyManager.binding` for the handle at dispatch.

Lifetimes and sharing
---------------------
* EPHEMERAL buffers belong to one context and are freed when it releases them or closes.
* PERSISTENT buffers have a key: a name + version given at creation, or ``sha256:<hex>`` of
  their contents, computed while the client streams the bytes in and fixed by :meth:`seal`.
  Contexts attach one by key (:meth:`ResidencyManager.open_persistent`); all share one
  device allocation, counted once per tier. When the last user leaves, the buffer stays
  resident in the *warm pool* until memory pressure evicts it or the pool is drained.
* Who may reach a key is the sharing rule of :mod:`npud.core.keys`: free-form keys live in
  their creator's per-user namespace, content-addressed keys are verified at seal and then
  global; until sealed a buffer is its creator's alone (only that user's contexts can open it,
  so only they can write it), and sealed contents are immutable.
* Sealed buffers are immutable and, when a state directory is configured, recorded there (see
  :mod:`npud.core.registry`) so that eviction can drop them and a restarted daemon can offer
  them again without an upload.

Eviction
--------
A buffer that is pinned or bound to a running job (``in_use > 0``) is never evicted. Otherwise,
when a tier is short, victims are chosen by :mod:`npud.core.eviction` (GreedyDual-Size over
size, reload cost and last use), and their contents are dropped (scratch, or sealed with a
backing file), spilled to host memory and restored bit-exact later (state, and anything else
still in use without a backing copy), or forgotten (an unused warm-pool buffer without a backing
copy). SRAM placement follows :mod:`npud.core.placement`.

Recycled command allocations
----------------------------
Inline command streams' device allocations are reused per context
(:mod:`npud.core.residency.spares`).

Threading
---------
Every method runs on the core thread and never waits for the device; the only blocking work is
memcpy into and out of mapped buffers and, with a state directory, file I/O at seal time and when
a dropped buffer is re-read. Core needs no locks.

Quotas
------
A context is charged the full (requested) size of every buffer it holds a reference to (a shared
buffer counts against each context that keeps it alive; the device counts it once). A request that
would take a context past its quota is refused with :class:`~npud.errors.QuotaExceeded` before
anything is allocated.

Modules
-------
:mod:`~npud.core.residency.manager` (the client's side), :mod:`~npud.core.residency.store` (the
books and the scheduler's side), :mod:`~npud.core.residency.memory` (tiers, placement, eviction,
migration), :mod:`~npud.core.residency.spares` (recycled command allocations),
:mod:`~npud.core.residency.entry` (one buffer's record), :mod:`~npud.core.residency.statistics`.
"""

from npud.core.residency.entry import PAGE
from npud.core.residency.manager import ResidencyManager
from npud.core.residency.spares import RECYCLE_MAX_BYTES, RECYCLE_PER_CONTEXT
from npud.core.residency.statistics import ResidencyStatistics, TierUsage

__all__ = [
    "PAGE",
    "RECYCLE_MAX_BYTES",
    "RECYCLE_PER_CONTEXT",
    "ResidencyManager",
    "ResidencyStatistics",
    "TierUsage",
]
