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
The decode fast path sends each step's command stream inline; the API layer turns it into an
EPHEMERAL COMMAND buffer that lives exactly as long as its job. Creating and freeing a device
allocation per step is the most expensive thing on that path (a memfd, two mappings and two
messages to the sim's device process; a GEM create/close on a kernel driver), so a buffer
created with ``recycle=True`` hands its *device allocation* back to a small per-context spare
list when it is destroyed, and the next recyclable buffer of the same context and page-rounded
size takes it instead of allocating. Buffer ids, listings, quotas and "a released buffer is
gone" are unchanged: only the device memory outlives the buffer. The spares are

* sized: at most :data:`RECYCLE_PER_CONTEXT` per context, each at most :data:`RECYCLE_MAX_BYTES`;
* zeroed when parked, so a recycled allocation reads as zeros like a fresh one;
* never shared: a spare is only ever reused by the context whose buffer held it;
* counted in the tier's ``used_bytes`` (the device really holds them) and given up first under
  memory pressure, before any buffer is evicted;
* freed when their context is released.

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
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npud.clock import Clock
from npud.core.buffers import Buffer, Location
from npud.core.eviction import EvictionAction, GreedyDual, eviction_action
from npud.core.ids import BufferId, ContextId, new_buffer_id
from npud.core.keys import HASH_PREFIX, Name, pending, resolve
from npud.core.keys import own as check_own
from npud.core.placement import sram_rank, wants_sram
from npud.core.registry import Registration, Registry
from npud.devices.base import Binding, BoHandle, BufferUse, Device, DeviceBuffer
from npud.errors import (
    AlreadyExists,
    DeviceLost,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NpudError,
    OutOfDeviceMemory,
    QuotaExceeded,
    Unavailable,
    Unsupported,
)
from npud.vocab import BufferUsage, MemoryTier, Persistence, TierPreference

PAGE = 4096  # budgets are checked in pages: DRM drivers allocate GEM objects page-granular
_DEVICE_TIERS = (MemoryTier.SRAM, MemoryTier.DRAM)
RECYCLE_PER_CONTEXT = 4
"""Spare command allocations kept per context (a decode loop has one or two jobs in flight)."""
RECYCLE_MAX_BYTES = 64 * 1024
"""Largest buffer whose allocation is recycled (decode steps are a few hundred bytes)."""
_ZEROS = bytes(RECYCLE_MAX_BYTES)


@dataclass(frozen=True, slots=True)
class TierUsage:
    """One memory tier's budget and occupancy (HOST: spilled and staged bytes)."""

    tier: MemoryTier
    capacity_bytes: int  # what the device reports (0: the device has no such tier)
    budget_bytes: int  # what npud lets itself use (default: the capacity)
    used_bytes: int
    buffers: int


@dataclass(frozen=True, slots=True)
class ResidencyStatistics:
    """A snapshot of one residency manager's counters.

    ``hits``/``misses`` count buffers of successfully prepared jobs that were / were not
    resident already. ``uploaded_bytes`` are client writes by the tier they landed in (HOST when
    staged while not resident); ``spilled_bytes`` and ``restored_bytes`` are keyed by the device
    tier the bytes left or entered; ``migrated_bytes`` by the destination tier.
    ``uploaded_by_usage`` is the same client writes by the usage of the buffer written (a
    process that opens persistent WEIGHTS by key adds nothing to ``BufferUsage.WEIGHTS``).
    """

    device: str
    tiers: tuple[TierUsage, ...]
    buffers: int
    persistent: int
    warm_pool_buffers: int
    warm_pool_bytes: int  # resident bytes held by persistent buffers that nobody uses
    dormant_registrations: int  # keys on disk not opened since the daemon started
    hits: int
    misses: int
    holds: int  # prepare() calls that returned False
    evictions: int
    drops: int
    spills: int
    restores: int
    forgotten: int
    promotions: int
    demotions: int
    attaches: int
    dedups: int  # seals that found the same contents already registered
    quota_refusals: int
    registry_errors: int
    uploaded_bytes: Mapping[MemoryTier, int]
    spilled_bytes: Mapping[MemoryTier, int]
    restored_bytes: Mapping[MemoryTier, int]
    migrated_bytes: Mapping[MemoryTier, int]
    context_bytes: Mapping[ContextId, int]
    recycled: int = 0  # buffers that took a spare allocation instead of allocating
    spare_buffers: int = 0  # device allocations parked for reuse (included in used_bytes)
    spare_bytes: int = 0
    uploaded_by_usage: Mapping[BufferUsage, int] = field(default_factory=dict)  # client writes

    def tier(self, tier: MemoryTier) -> TierUsage:
        """The usage of one tier."""
        for usage in self.tiers:
            if usage.tier is tier:
                return usage
        raise KeyError(tier)


@dataclass(slots=True, eq=False)
class _Entry:
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


@dataclass(slots=True)
class _Counters:
    hits: int = 0
    misses: int = 0
    holds: int = 0
    evictions: int = 0
    drops: int = 0
    spills: int = 0
    restores: int = 0
    forgotten: int = 0
    promotions: int = 0
    demotions: int = 0
    attaches: int = 0
    dedups: int = 0
    quota_refusals: int = 0
    registry_errors: int = 0
    recycled: int = 0
    uploaded: dict[MemoryTier, int] = field(default_factory=lambda: dict.fromkeys(MemoryTier, 0))
    spilled: dict[MemoryTier, int] = field(default_factory=lambda: dict.fromkeys(MemoryTier, 0))
    restored: dict[MemoryTier, int] = field(default_factory=lambda: dict.fromkeys(MemoryTier, 0))
    migrated: dict[MemoryTier, int] = field(default_factory=lambda: dict.fromkeys(MemoryTier, 0))
    uploaded_usage: dict[BufferUsage, int] = field(
        default_factory=lambda: dict.fromkeys(BufferUsage, 0)
    )


class ResidencyManager:
    """Owns the buffers of one device and keeps the right ones resident (module docstring)."""

    def __init__(
        self,
        device: Device,
        clock: Clock,
        *,
        budgets: Mapping[MemoryTier, int] | None = None,
        state_dir: Path | None = None,
        sram_policy: bool = True,
    ) -> None:
        """Manage ``device``'s memory.

        Args:
            device: an opened device; the manager allocates and frees its buffers.
            clock: for last-use times.
            budgets: bytes npud may use per tier (default: each tier's capacity), capped to
                the capacity: a tier the device lacks stays at 0 whatever is given.
            state_dir: where sealed persistent buffers are recorded; ``None`` keeps them in
                memory only (no backing copies, nothing survives a restart).
            sram_policy: place hot small buffers in SRAM (see :mod:`npud.core.placement`).

        Raises:
            Unavailable: ``state_dir`` is unusable or its manifest unreadable.
        """
        self._device = device
        self._clock = clock
        caps = device.capabilities
        self._capacity = {t: caps.tier(t).capacity_bytes for t in _DEVICE_TIERS}
        self._budget = dict(self._capacity)
        for tier, value in (budgets or {}).items():
            if tier in self._budget:
                if value < 0:
                    raise InvalidArgument(f"budget for {tier} must be >= 0, got {value}")
                self._budget[tier] = min(value, self._capacity[tier])
        self._sram_policy = sram_policy
        self._sram_mappable = True
        self._used = dict.fromkeys(_DEVICE_TIERS, 0)
        self._host_bytes = 0
        self._entries: dict[BufferId, _Entry] = {}
        self._by_key: dict[str, _Entry] = {}
        self._refs: dict[ContextId, dict[BufferId, Buffer]] = {}
        self._quotas: dict[ContextId, int] = {}
        self._registry = Registry(state_dir) if state_dir is not None else None
        self._gds = GreedyDual()
        self._n = _Counters()
        # recycled command allocations: per context, (requested pages, allocation)
        self._spares: dict[ContextId, list[tuple[int, DeviceBuffer]]] = {}
        self._spare_bytes = dict.fromkeys(_DEVICE_TIERS, 0)
        self._recycling: set[ContextId] = set()  # contexts that may park spares (not released)

    # ---- client-facing ---------------------------------------------------------------------

    def set_quota(self, ctx: ContextId, quota_bytes: int | None) -> None:
        """Limit the bytes ``ctx`` may hold (``None`` lifts the limit).

        Lowering a quota below current usage refuses further growth; it frees nothing.

        Raises:
            InvalidArgument: a negative quota.
        """
        if quota_bytes is None:
            self._quotas.pop(ctx, None)
            return
        if quota_bytes < 0:
            raise InvalidArgument(f"memory quota must be >= 0 bytes, got {quota_bytes}")
        self._quotas[ctx] = quota_bytes

    def quota(self, ctx: ContextId) -> int | None:
        """``ctx``'s memory quota in bytes, or ``None`` when unlimited."""
        return self._quotas.get(ctx)

    def create(
        self,
        ctx: ContextId,
        size: int,
        *,
        usage: BufferUsage,
        persistence: Persistence = Persistence.EPHEMERAL,
        tier: TierPreference = TierPreference.ANY,
        key: str | None = None,
        quota_bytes: int | None = None,
        recycle: bool = False,
        uid: int = 0,
    ) -> Buffer:
        """Create a buffer for ``ctx`` (a context of user ``uid``) and allocate it on the device
        where it fits now.

        A PERSISTENT buffer without ``key`` is keyed by its contents when :meth:`seal`\\ ed; a
        content-addressed ``key`` (``[prefix:]sha256:<hex>``) is checked against the contents
        at seal time and is ``uid``'s private upload until then; a free-form ``key`` is created
        in ``uid``'s namespace (:mod:`npud.core.keys`). If
        no room can be made now (everything evictable is pinned or running), the buffer is
        created unallocated: writes are staged in host memory and :meth:`prepare` places it.
        ``quota_bytes``, when given, sets ``ctx``'s quota first (as :meth:`set_quota`).
        ``recycle`` (EPHEMERAL COMMAND buffers up to :data:`RECYCLE_MAX_BYTES`; ignored for
        others) takes a spare allocation of ``ctx`` when one fits and parks the allocation
        for ``ctx``'s next such buffer when this one is destroyed (see "Recycled command
        allocations" in the module docstring).

        The returned buffer is owned by the manager; ``ctx`` holds a reference until
        :meth:`release` or :meth:`release_context`.

        Raises:
            InvalidArgument: size <= 0, a key on an EPHEMERAL buffer, a malformed key.
            PermissionDenied: ``key`` names another user's namespace (``~<uid>/...``).
            AlreadyExists: ``key`` is registered already (use :meth:`open_persistent`): sealed
                content, or ``uid``'s own key or unsealed upload.
            QuotaExceeded: ``ctx`` would exceed its memory quota (nothing is allocated).
            OutOfDeviceMemory: the buffer is larger than any tier's budget (it can never fit).
        """
        if quota_bytes is not None:
            self.set_quota(ctx, quota_bytes)
        if size <= 0:
            raise InvalidArgument(f"buffer size must be > 0 bytes, got {size}")
        if persistence is Persistence.EPHEMERAL and key is not None:
            raise InvalidArgument("only PERSISTENT buffers have a key")
        name: Name | None = None
        stored: str | None = None
        if key is not None:
            name = resolve(key, uid)
            check_own(name, uid, key)
            for taken in (name.stored, pending(uid, name.key)):
                if taken in self._by_key or (
                    self._registry is not None and taken in self._registry
                ):
                    raise AlreadyExists(f"persistent key {key!r} exists; open it instead")
            stored = name.stored if name.digest is None else pending(uid, name.key)
        largest = max(self._budget.values())
        if _pages(size) > largest:
            raise OutOfDeviceMemory(
                f"a {size}-byte buffer can never fit on {self._device.name}: the largest tier "
                f"budget is {largest} bytes"
            )
        self._charge(ctx, size)
        buf = Buffer(
            id=new_buffer_id(),
            size=size,
            usage=usage,
            persistence=persistence,
            tier_preference=tier,
            key=None if name is None else name.key,
            owner=ctx,
            users={ctx},
            last_used=self._clock.now(),
        )
        persistent = persistence is Persistence.PERSISTENT
        entry = _Entry(buf, stored=stored, namespace=uid if persistent else None)
        if persistence is Persistence.PERSISTENT:
            entry.hasher = hashlib.sha256()
        elif recycle and usage is BufferUsage.COMMAND and _pages(size) <= RECYCLE_MAX_BYTES:
            entry.recycle = True
            self._recycling.add(ctx)
        self._entries[buf.id] = entry
        if stored is not None:
            self._by_key[stored] = entry
        self._refs.setdefault(ctx, {})[buf.id] = buf
        self._place(entry, frozenset({buf.id}))
        return buf

    def open_persistent(self, ctx: ContextId, key: str, *, uid: int = 0) -> Buffer:
        """Attach ``ctx`` (a context of user ``uid``) to the persistent buffer ``key`` names.

        Uploads nothing: a buffer still resident (in use elsewhere or in the warm pool) is
        shared as is; one known only from the state directory is read from its backing file
        when a job or a read first needs it. Opening a key ``ctx`` holds already returns the
        same buffer (one reference). A free-form key is looked up in ``uid``'s namespace
        (``~<uid>/<key>`` names another user's); a content key finds the sealed buffer, or
        else ``uid``'s own unsealed upload. Another user's unsealed buffer is never opened.

        Raises:
            InvalidArgument: a malformed key.
            NotFound: no such key that ``uid`` may open (or its backing copy is missing or
                corrupt).
            QuotaExceeded: attaching would take ``ctx`` past its memory quota.
        """
        name = resolve(key, uid)
        entry = self._by_key.get(name.stored)
        if entry is None and name.digest is not None:
            entry = self._by_key.get(pending(uid, name.key))
        if entry is None:
            entry = self._revive(name)
        if not entry.buffer.sealed and entry.namespace != uid:
            raise NotFound(
                f"no persistent buffer {key[:80]!r} that you may open: another user's buffer "
                "can be opened only once it is sealed"
            )
        buf = entry.buffer
        if ctx in buf.users:
            return buf
        self._charge(ctx, buf.size)
        buf.users.add(ctx)
        self._refs.setdefault(ctx, {})[buf.id] = buf
        self._n.attaches += 1
        return buf

    def seal(self, ctx: ContextId, buf: Buffer) -> Buffer:
        """Freeze a PERSISTENT buffer's contents and register it by key.

        The contents hash is the sha256 streamed over the client's in-order writes (re-read
        from the buffer if writes came out of order). A buffer created without a key gets the
        key ``sha256:<hex>``; if that key exists already, ``ctx`` is attached to the existing
        buffer, this one is released, and the existing one is returned (the caller must use
        the returned buffer from then on). A content-addressed key must match the contents; the
        sealed buffer then becomes the global one under that key, or, if another upload of
        the same key was sealed first, ``ctx`` is attached to that one in the same way. With a
        state directory, the contents are recorded there as a backing copy. Sealing a sealed
        buffer returns it unchanged.

        Raises:
            NotFound: ``ctx`` holds no reference to ``buf``.
            InvalidArgument: an EPHEMERAL buffer, or a content-addressed key that does not
                match the contents (the buffer stays unsealed and writable).
            FailedPrecondition: the buffer is bound to a running job.
        """
        entry = self._entry_of(ctx, buf)
        if buf.persistence is not Persistence.PERSISTENT:
            raise InvalidArgument("only PERSISTENT buffers can be sealed")
        if buf.sealed:
            return buf
        if buf.in_use:
            raise FailedPrecondition(f"buffer {buf.id} is bound to a running job")
        if entry.hasher is not None and entry.hashed_upto == buf.size:
            digest = str(entry.hasher.hexdigest())
        else:
            digest = hashlib.sha256(self._contents(entry)).hexdigest()
        entry.hasher = None
        content_key = HASH_PREFIX + digest
        name = resolve(buf.key if buf.key is not None else content_key, entry.namespace or 0)
        if name.digest is not None and name.digest != digest:
            raise InvalidArgument(
                f"contents hash to {content_key}, not the key {buf.key}: not sealed; write the "
                "bytes the key names"
            )
        if name.namespace is None:  # content-addressed: join the global buffer or become it
            existing = self._by_key.get(name.stored)
            if existing is None and self._registry is not None and name.stored in self._registry:
                existing = self._revive(name)
            if existing is not None and existing is not entry:
                self._n.dedups += 1
                uid = entry.namespace or 0
                self.release(ctx, buf)
                if not buf.users and self._by_key.get(entry.stored or "") is entry:
                    self._destroy(entry)  # an upload nobody else holds: nothing to keep
                return self.open_persistent(ctx, name.key, uid=uid)
            if entry.stored is not None and self._by_key.get(entry.stored) is entry:
                del self._by_key[entry.stored]
            buf.key = name.key
            entry.stored = name.stored
            entry.namespace = None
            self._by_key[name.stored] = entry
        buf.sealed = True
        buf.valid = True
        if self._registry is not None:
            assert entry.stored is not None
            reg = Registration(entry.stored, buf.size, buf.usage, buf.tier_preference, digest)
            try:
                self._registry.record(reg, self._contents(entry))
                entry.backing = reg
            except Unavailable:
                self._n.registry_errors += 1
        return buf

    def write(self, buf: Buffer, offset: int, data: bytes | memoryview) -> None:
        """Copy ``data`` into the buffer at ``offset`` (to the device, or staged in host memory).

        Raises:
            InvalidArgument: the range is outside the buffer.
            NotFound: the buffer was freed.
            FailedPrecondition: the buffer is sealed, or bound to a running job.
        """
        entry = self._live(buf)
        data = memoryview(data).cast("B")
        n = data.nbytes
        _check_range(buf, offset, n)
        if buf.sealed:
            raise FailedPrecondition(f"buffer {buf.id} ({buf.key}) is sealed and immutable")
        if buf.in_use:
            raise FailedPrecondition(f"buffer {buf.id} is bound to a running job")
        if n == 0:
            return
        self._n.uploaded_usage[buf.usage] += n
        if buf.device is not None:
            with _Mapped(self._device, buf) as view:
                view[offset : offset + n] = data
            self._n.uploaded[buf.device.tier] += n
        else:
            host = self._host_copy(entry)
            host[offset : offset + n] = data
            self._n.uploaded[MemoryTier.HOST] += n
        if entry.hasher is not None:
            if offset == entry.hashed_upto:
                entry.hasher.update(data)
                entry.hashed_upto += n
            else:
                entry.hasher = None
        buf.valid = True
        self._touch(entry)

    def read(self, buf: Buffer, offset: int, size: int) -> bytes:
        """``size`` bytes of the buffer from ``offset``, wherever they are now.

        Reading does not make a buffer resident. A buffer never written reads as zeros.

        Raises:
            InvalidArgument: the range is outside the buffer.
            NotFound: the buffer was freed.
            Unavailable: a backing file that should hold the contents is unreadable.
        """
        entry = self._live(buf)
        _check_range(buf, offset, size)
        if buf.device is not None:
            with _Mapped(self._device, buf) as view:
                return bytes(view[offset : offset + size])
        if entry.host is not None:
            return bytes(entry.host[offset : offset + size])
        if entry.backing is not None and buf.location is Location.BACKED:
            return self._registry_or_fail().read(entry.backing, offset, size)
        return bytes(size)

    def pin(self, buf: Buffer, *, ctx: ContextId | None = None) -> None:
        """Make the buffer resident now and keep it so until as many :meth:`unpin` calls.

        Pins taken with a ``ctx`` are dropped when that context releases the buffer.

        Raises:
            NotFound: the buffer was freed, or ``ctx`` holds no reference to it.
            OutOfDeviceMemory: there is no room for it now.
        """
        entry = self._entry_of(ctx, buf) if ctx is not None else self._live(buf)
        if buf.device is None and not self.prepare([buf]):
            raise OutOfDeviceMemory(
                f"cannot pin {buf.id}: {buf.size} bytes do not fit beside pinned and running "
                f"buffers on {self._device.name}"
            )
        buf.pins += 1
        entry.pins_by[ctx] = entry.pins_by.get(ctx, 0) + 1

    def unpin(self, buf: Buffer, *, ctx: ContextId | None = None) -> None:
        """Drop one pin taken with the same ``ctx``.

        Raises:
            FailedPrecondition: no such pin.
        """
        entry = self._live(buf)
        held = entry.pins_by.get(ctx, 0)
        if held == 0:
            raise FailedPrecondition(f"buffer {buf.id} is not pinned by {ctx or 'the system'}")
        _drop_pins(entry, ctx, 1)

    def release(self, ctx: ContextId, buf: Buffer, *, undo: bool = False) -> None:
        """Drop ``ctx``'s reference (and its pins).

        An EPHEMERAL buffer is freed (once no running job uses it). A PERSISTENT buffer stays
        for its other users, or in the warm pool when ``ctx`` was the last; one that never got
        a key (unsealed contents-keyed) cannot be opened again and is freed.

        ``undo`` says the buffer was created by a request that failed: a recyclable buffer's
        allocation then goes back to the spares only if it came from them, so the device
        holds exactly what it held before the request.

        Raises:
            NotFound: ``ctx`` holds no reference to ``buf``.
        """
        entry = self._entry_of(ctx, buf)
        if undo and not entry.recycled:
            entry.recycle = False
        buf.users.discard(ctx)
        refs = self._refs.get(ctx)
        if refs is not None:
            refs.pop(buf.id, None)
            if not refs:
                del self._refs[ctx]
        _drop_pins(entry, ctx, entry.pins_by.get(ctx, 0))
        if buf.users:
            return
        if buf.persistence is Persistence.EPHEMERAL or buf.key is None:
            if buf.in_use:
                entry.doomed = True
            else:
                self._destroy(entry)

    def release_context(self, ctx: ContextId) -> None:
        """Drop every reference ``ctx`` holds, its quota and its spare command allocations.
        Nothing of ``ctx`` remains (allocations still bound to a running job are freed when
        it ends)."""
        self._recycling.discard(ctx)
        for buf in list(self._refs.get(ctx, {}).values()):
            self.release(ctx, buf)
        self._refs.pop(ctx, None)
        self._quotas.pop(ctx, None)
        self._drop_spares(self._spares.pop(ctx, []))

    def context_usage(self, ctx: ContextId) -> int:
        """Bytes charged to ``ctx``: the sizes of all buffers it holds a reference to."""
        return sum(b.size for b in self._refs.get(ctx, {}).values())

    def get(self, ctx: ContextId, buffer_id: BufferId) -> Buffer:
        """The buffer ``buffer_id`` as seen by ``ctx``.

        Raises:
            NotFound: no such buffer, or ``ctx`` holds no reference to it.
        """
        buf = self._refs.get(ctx, {}).get(buffer_id)
        if buf is None:
            raise NotFound(f"no buffer {buffer_id} in context {ctx}")
        return buf

    def buffers(self, ctx: ContextId | None = None) -> list[Buffer]:
        """The buffers ``ctx`` references, or every live buffer when ``ctx`` is ``None``."""
        if ctx is None:
            return [e.buffer for e in self._entries.values()]
        return list(self._refs.get(ctx, {}).values())

    def warm_pool(self) -> list[Buffer]:
        """Persistent buffers that no context uses (kept for the next one that opens them)."""
        return [e.buffer for e in self._entries.values() if not e.buffer.users]

    def drain_warm_pool(self) -> int:
        """Free every unused persistent buffer (device and host memory); return bytes freed.

        Registrations on disk stay, so their keys can still be opened (and re-read).
        """
        freed = 0
        for entry in list(self._entries.values()):
            buf = entry.buffer
            if not buf.users and buf.in_use == 0:
                freed += buf.size
                self._destroy(entry)
        return freed

    # ---- scheduler-facing ------------------------------------------------------------------

    def prepare(self, buffers: Sequence[Buffer]) -> bool:
        """Make every buffer of a job resident now, evicting others if needed.

        Never blocks on the device. Returns ``False`` (having evicted nothing needlessly) when
        the set cannot be placed yet because too much is pinned or running; the scheduler
        holds the job and retries after the next completion.

        Raises:
            NotFound: a buffer was freed.
            OutOfDeviceMemory: the set is larger than the device budgets: it can never fit.
        """
        unique = _unique(buffers)
        entries = [self._live(b) for b in unique]
        total = sum(_pages(b.size) for b in unique)
        budget = sum(self._budget.values())
        if total > budget:
            raise OutOfDeviceMemory(
                f"a job's buffers need {total} bytes but {self._device.name} has a budget of "
                f"{budget} bytes (SRAM + DRAM): it can never run"
            )
        protect = frozenset(b.id for b in unique)
        missing = sorted((e for e in entries if e.buffer.device is None), key=_largest_first)
        if missing and not self._could_place(missing, protect):
            self._n.holds += 1
            return False
        for entry in missing:
            if not self._place(entry, protect, evict=True):
                self._n.holds += 1
                return False
        self._n.misses += len(missing)
        self._n.hits += len(unique) - len(missing)
        for entry in entries:
            entry.buffer.binds += 1
            self._touch(entry)
        self._promote(entries, protect)
        return True

    def is_resident(self, buffers: Iterable[Buffer]) -> bool:
        """Whether every buffer is resident now (the scheduler's "prefer resident" tie-break)."""
        return all(b.device is not None for b in buffers)

    def begin_run(self, buffers: Sequence[Buffer]) -> None:
        """Mark a job's buffers as running: they cannot be evicted until :meth:`end_run`.

        Raises:
            FailedPrecondition: a buffer is not resident (call :meth:`prepare` first).
        """
        unique = _unique(buffers)
        for buf in unique:
            if buf.device is None:
                raise FailedPrecondition(f"buffer {buf.id} is not resident; prepare() first")
        now = self._clock.now()
        for buf in unique:
            buf.in_use += 1
            buf.last_used = now

    def end_run(self, buffers: Sequence[Buffer], written: Sequence[Buffer]) -> None:
        """A job using ``buffers`` finished; the ones in ``written`` now hold its results.

        Called for every finished job, whatever its status. Buffers released while the job
        ran are freed here.
        """
        now = self._clock.now()
        written_ids = {b.id for b in written}
        for buf in _unique(buffers):
            buf.in_use = max(0, buf.in_use - 1)
            buf.last_used = now
            entry = self._entries.get(buf.id)
            if entry is None:
                continue
            if buf.id in written_ids:
                buf.valid = True
                entry.hasher = None
            self._touch(entry)
            if entry.doomed and buf.in_use == 0:
                self._destroy(entry)

    def binding(self, buf: Buffer, use: BufferUse) -> Binding:
        """The device handle of a resident buffer, for a :class:`Submission`.

        Raises:
            FailedPrecondition: the buffer is not resident.
        """
        if buf.device is None:
            raise FailedPrecondition(f"buffer {buf.id} is not resident; prepare() first")
        return Binding(buf.device.handle, use)

    def check_use(self, buf: Buffer, use: BufferUse) -> None:
        """Refuse a job binding that would modify sealed (shared, immutable) contents.

        For submit-time validation by the scheduler/API.

        Raises:
            FailedPrecondition: ``use`` includes WRITE and the buffer is sealed.
        """
        if BufferUse.WRITE in use and buf.sealed:
            raise FailedPrecondition(
                f"buffer {buf.id} ({buf.key}) is sealed and shared: a job may only read it"
            )

    def evict(self, buf: Buffer) -> bool:
        """Evict one buffer now if it is evictable (tests and operators); ``True`` if done."""
        entry = self._live(buf)
        if not buf.evictable:
            return False
        self._evict(entry)
        return True

    # ---- statistics ------------------------------------------------------------------------

    def statistics(self) -> ResidencyStatistics:
        """A frozen snapshot of occupancy and counters."""
        counts = dict.fromkeys(MemoryTier, 0)
        warm_n = warm_bytes = persistent = 0
        for entry in self._entries.values():
            buf = entry.buffer
            if buf.device is not None:
                counts[buf.device.tier] += 1
            elif entry.host is not None:
                counts[MemoryTier.HOST] += 1
            if buf.persistence is Persistence.PERSISTENT:
                persistent += 1
                if not buf.users:
                    warm_n += 1
                    warm_bytes += buf.device.size if buf.device is not None else 0
        tiers = (
            *(
                TierUsage(t, self._capacity[t], self._budget[t], self._used[t], counts[t])
                for t in _DEVICE_TIERS
            ),
            TierUsage(MemoryTier.HOST, 0, 0, self._host_bytes, counts[MemoryTier.HOST]),
        )
        dormant = 0
        if self._registry is not None:
            dormant = sum(1 for k in self._registry if k not in self._by_key)
        n = self._n
        return ResidencyStatistics(
            device=self._device.name,
            tiers=tiers,
            buffers=len(self._entries),
            persistent=persistent,
            warm_pool_buffers=warm_n,
            warm_pool_bytes=warm_bytes,
            dormant_registrations=dormant,
            hits=n.hits,
            misses=n.misses,
            holds=n.holds,
            evictions=n.evictions,
            drops=n.drops,
            spills=n.spills,
            restores=n.restores,
            forgotten=n.forgotten,
            promotions=n.promotions,
            demotions=n.demotions,
            attaches=n.attaches,
            dedups=n.dedups,
            quota_refusals=n.quota_refusals,
            registry_errors=n.registry_errors,
            uploaded_bytes=dict(n.uploaded),
            spilled_bytes=dict(n.spilled),
            restored_bytes=dict(n.restored),
            migrated_bytes=dict(n.migrated),
            context_bytes={ctx: self.context_usage(ctx) for ctx in self._refs},
            recycled=n.recycled,
            spare_buffers=sum(len(spares) for spares in self._spares.values()),
            spare_bytes=sum(self._spare_bytes.values()),
            uploaded_by_usage=dict(n.uploaded_usage),
        )

    # ---- internals -------------------------------------------------------------------------

    def _registry_or_fail(self) -> Registry:
        if self._registry is None:
            raise Unavailable("no state directory is configured")
        return self._registry

    def _live(self, buf: Buffer) -> _Entry:
        entry = self._entries.get(buf.id)
        if entry is None or entry.buffer is not buf:
            raise NotFound(f"buffer {buf.id} no longer exists")
        return entry

    def _entry_of(self, ctx: ContextId, buf: Buffer) -> _Entry:
        entry = self._entries.get(buf.id)
        if entry is None or entry.buffer is not buf or ctx not in buf.users:
            raise NotFound(f"no buffer {buf.id} in context {ctx}")
        return entry

    def _charge(self, ctx: ContextId, size: int) -> None:
        quota = self._quotas.get(ctx)
        if quota is None:
            return
        used = self.context_usage(ctx)
        if used + size > quota:
            self._n.quota_refusals += 1
            raise QuotaExceeded(
                f"context {ctx} memory quota is {quota} bytes; {used} bytes are in use and "
                f"{size} more were requested"
            )

    def _revive(self, name: Name) -> _Entry:
        """Bring a registration from disk back as a (non-resident) buffer."""
        key = name.stored
        reg = self._registry.get(key) if self._registry is not None else None
        if reg is None:
            raise NotFound(f"no persistent buffer with key {name.key[:80]!r}")
        assert self._registry is not None
        if not self._registry.verify(reg):
            try:
                self._registry.forget(key)
            except Unavailable:
                self._n.registry_errors += 1
            raise NotFound(f"the backing copy of {key!r} is missing or corrupt; upload it again")
        buf = Buffer(
            id=new_buffer_id(),
            size=reg.size,
            usage=reg.usage,
            persistence=Persistence.PERSISTENT,
            tier_preference=reg.tier_preference,
            key=name.key,
            valid=True,
            sealed=True,
            location=Location.BACKED,
            last_used=self._clock.now(),
        )
        entry = _Entry(buf, stored=key, namespace=name.namespace, backing=reg)
        self._entries[buf.id] = entry
        self._by_key[key] = entry
        return entry

    def _host_copy(self, entry: _Entry) -> bytearray:
        """The host copy of a non-resident buffer, created from what holds the contents."""
        if entry.host is None:
            buf = entry.buffer
            host = bytearray(buf.size)
            if entry.backing is not None and buf.location is Location.BACKED:
                self._registry_or_fail().read_into(entry.backing, memoryview(host))
            entry.host = host
            self._host_bytes += buf.size
            buf.location = Location.HOST
        return entry.host

    def _contents(self, entry: _Entry) -> bytes | bytearray:
        buf = entry.buffer
        if buf.device is None and entry.host is not None:
            return entry.host
        return self.read(buf, 0, buf.size)

    def _touch(self, entry: _Entry) -> None:
        buf = entry.buffer
        buf.last_used = max(buf.last_used, self._clock.now())
        entry.credit = self._gds.credit(buf, backed=entry.backing is not None)

    def _tiers_for(self, buf: Buffer) -> list[MemoryTier]:
        if self._sram_ok() and wants_sram(
            buf, sram_budget=self._budget[MemoryTier.SRAM], policy=self._sram_policy
        ):
            return [MemoryTier.SRAM, MemoryTier.DRAM]
        return [MemoryTier.DRAM]

    def _sram_ok(self) -> bool:
        return self._sram_mappable and self._budget[MemoryTier.SRAM] > 0

    def _free(self, tier: MemoryTier) -> int:
        return self._budget[tier] - self._used[tier]

    def _victims(self, tier: MemoryTier, protect: frozenset[BufferId]) -> list[_Entry]:
        """Evictable buffers of ``tier`` outside ``protect``, cheapest to lose first."""
        found = [
            e
            for e in self._entries.values()
            if e.buffer.evictable
            and e.buffer.id not in protect
            and e.buffer.device is not None
            and e.buffer.device.tier is tier
        ]
        found.sort(key=lambda e: (e.credit, e.buffer.last_used))
        return found

    def _could_place(self, missing: Sequence[_Entry], protect: frozenset[BufferId]) -> bool:
        """Whether evicting every candidate would make room for ``missing`` (DRAM + free SRAM)."""
        need = sum(_pages(e.buffer.size) for e in missing)
        sram_free = max(0, self._free(MemoryTier.SRAM)) if self._sram_ok() else 0
        sram_takers = sum(
            _pages(e.buffer.size) for e in missing if MemoryTier.SRAM in self._tiers_for(e.buffer)
        )
        need -= min(sram_free, sram_takers)
        if need <= self._free(MemoryTier.DRAM):
            return True  # the common case: no need to look at eviction candidates at all
        room = (
            self._free(MemoryTier.DRAM)
            + self._spare_bytes[MemoryTier.DRAM]
            + sum(_held(e) for e in self._victims(MemoryTier.DRAM, protect))
        )
        return need <= room

    def _place(self, entry: _Entry, protect: frozenset[BufferId], *, evict: bool = True) -> bool:
        """Allocate ``entry`` in its preferred tier and restore its contents; ``False`` if no
        room could be made. SRAM takes only free space; DRAM evicts when ``evict``."""
        buf = entry.buffer
        for tier in self._tiers_for(buf):
            may_evict = evict and tier is MemoryTier.DRAM
            if self._allocate(entry, tier, protect, may_evict=may_evict):
                self._restore(entry)
                return True
        return False

    def _allocate(
        self, entry: _Entry, tier: MemoryTier, protect: frozenset[BufferId], *, may_evict: bool
    ) -> bool:
        buf = entry.buffer
        if entry.recycle and self._take_spare(entry, tier):
            return True
        victims: list[_Entry] | None = None  # computed only when free space falls short
        while True:
            if self._free(tier) < _pages(buf.size) and self._spare_bytes[tier]:
                self._drop_spares_in(tier)  # spares go before anything is evicted
            if self._free(tier) >= _pages(buf.size):
                try:
                    dev = self._device.create_buffer(buf.size, tier)
                except OutOfDeviceMemory:
                    pass  # the device is fuller than our budget says (rounding, other users)
                else:
                    if tier is MemoryTier.SRAM and not self._mappable(dev.handle):
                        self._device.free_buffer(dev.handle)
                        self._sram_mappable = False
                        return False
                    buf.device = dev
                    self._used[tier] += dev.size
                    return True
            if victims is None:
                victims = self._victims(tier, protect) if may_evict else []
            if not victims:
                return False
            self._evict(victims.pop(0))

    def _mappable(self, handle: BoHandle) -> bool:
        try:
            view = self._device.map_buffer(handle)
        except Unsupported:
            return False
        view.release()
        self._device.unmap_buffer(handle)
        return True

    def _restore(self, entry: _Entry) -> None:
        """Fill a freshly allocated buffer from where its contents were."""
        buf = entry.buffer
        assert buf.device is not None
        tier = buf.device.tier
        if entry.host is not None:
            with _Mapped(self._device, buf) as view:
                view[: buf.size] = entry.host
            if buf.location is Location.HOST and buf.valid:
                self._n.restores += 1
                self._n.restored[tier] += buf.size
            self._host_bytes -= buf.size
            entry.host = None
        elif entry.backing is not None and buf.location is Location.BACKED:
            with _Mapped(self._device, buf) as view:
                self._registry_or_fail().read_into(entry.backing, view)
            self._n.restores += 1
            self._n.restored[tier] += buf.size
        buf.location = Location.RESIDENT

    def _release_device(self, buf: Buffer) -> None:
        if buf.device is None:
            return
        dev, buf.device = buf.device, None
        self._used[dev.tier] -= dev.size
        # A lost or reset device may have forgotten the handle already: our books still drop it.
        with contextlib.suppress(NotFound, DeviceLost):
            self._device.free_buffer(dev.handle)

    def _evict(self, entry: _Entry) -> None:
        """Take a buffer's device memory; its contents go where :mod:`eviction` says."""
        buf = entry.buffer
        assert buf.device is not None
        assert buf.evictable
        tier = buf.device.tier
        action = eviction_action(buf, backed=entry.backing is not None)
        self._n.evictions += 1
        self._gds.evicted(entry.credit)
        if action == EvictionAction.SPILL:
            with _Mapped(self._device, buf) as view:
                entry.host = bytearray(view[: buf.size])
            self._host_bytes += buf.size
            self._n.spills += 1
            self._n.spilled[tier] += buf.size
            self._release_device(buf)
            buf.location = Location.HOST
        elif action == EvictionAction.FORGET:
            self._n.forgotten += 1
            self._destroy(entry)
        else:
            self._n.drops += 1
            self._release_device(buf)
            if action == EvictionAction.DROP_BACKED:
                buf.location = Location.BACKED
            else:
                buf.valid = False
                buf.location = Location.EMPTY

    def _destroy(self, entry: _Entry) -> None:
        """Free everything of a buffer; a backed key stays openable from disk."""
        buf = entry.buffer
        if not (entry.recycle and self._park(buf)):
            self._release_device(buf)
        if entry.host is not None:
            self._host_bytes -= buf.size
            entry.host = None
        self._entries.pop(buf.id, None)
        if entry.stored is not None and self._by_key.get(entry.stored) is entry:
            del self._by_key[entry.stored]
        for ctx in list(buf.users):
            refs = self._refs.get(ctx)
            if refs is not None:
                refs.pop(buf.id, None)
        buf.users.clear()
        buf.pins = 0
        buf.location = Location.EMPTY

    # ---- recycled command allocations (module docstring) -------------------------------------

    def _take_spare(self, entry: _Entry, tier: MemoryTier) -> bool:
        """Give ``entry`` a spare allocation of its context in ``tier``; ``False`` if none fits."""
        buf = entry.buffer
        spares = self._spares.get(buf.owner) if buf.owner is not None else None
        if not spares:
            return False
        pages = _pages(buf.size)
        for i, (spare_pages, dev) in enumerate(spares):
            if spare_pages == pages and dev.tier is tier:
                del spares[i]
                self._spare_bytes[tier] -= dev.size
                buf.device = dev  # already counted in _used: it never left the device
                entry.recycled = True
                self._n.recycled += 1
                return True
        return False

    def _park(self, buf: Buffer) -> bool:
        """Keep a destroyed recyclable buffer's allocation for its context; ``False`` when
        it should be freed instead (no room on the list, not resident, device gone)."""
        dev, ctx = buf.device, buf.owner
        if dev is None or ctx is None or ctx not in self._recycling:
            return False  # its context was released (a job bound to it ran until now)
        spares = self._spares.setdefault(ctx, [])
        if len(spares) >= RECYCLE_PER_CONTEXT:
            return False
        try:
            with _Mapped(self._device, buf) as view:
                view[: dev.size] = _ZEROS[: dev.size]
        except NpudError:
            return False  # lost or reset device: let _release_device drop it from the books
        spares.append((_pages(buf.size), dev))
        self._spare_bytes[dev.tier] += dev.size
        buf.device = None
        return True

    def _drop_spares(self, spares: Iterable[tuple[int, DeviceBuffer]]) -> None:
        for _, dev in spares:
            self._spare_bytes[dev.tier] -= dev.size
            self._used[dev.tier] -= dev.size
            with contextlib.suppress(NotFound, DeviceLost):
                self._device.free_buffer(dev.handle)

    def _drop_spares_in(self, tier: MemoryTier) -> None:
        """Free every spare allocation in ``tier`` (memory pressure)."""
        for spares in self._spares.values():
            keep = [s for s in spares if s[1].tier is not tier]
            self._drop_spares(s for s in spares if s[1].tier is tier)
            spares[:] = keep

    def _promote(self, entries: Sequence[_Entry], protect: frozenset[BufferId]) -> None:
        """Move a prepared job's SRAM candidates from DRAM into free SRAM (placement policy).

        Pinned buffers stay where they are: a pin promises a stable allocation.
        """
        if not self._sram_ok():
            return
        sram_budget = self._budget[MemoryTier.SRAM]
        candidates = [
            e
            for e in entries
            if e.buffer.evictable
            and e.buffer.device is not None
            and e.buffer.device.tier is MemoryTier.DRAM
            and wants_sram(e.buffer, sram_budget=sram_budget, policy=self._sram_policy)
        ]
        for entry in sorted(candidates, key=lambda e: sram_rank(e.buffer)):
            buf = entry.buffer
            need = _pages(buf.size)
            if self._free(MemoryTier.SRAM) < need:
                self._reclaim_sram(need, protect)
            if self._free(MemoryTier.SRAM) >= need:
                self._migrate(entry, MemoryTier.SRAM)

    def _reclaim_sram(self, need: int, protect: frozenset[BufferId]) -> None:
        """Demote unused (warm-pool) SRAM residents to DRAM until ``need`` bytes are free."""
        idle = [e for e in self._victims(MemoryTier.SRAM, protect) if not e.buffer.users]
        if self._free(MemoryTier.SRAM) + sum(_held(e) for e in idle) < need:
            return
        for entry in idle:
            if self._free(MemoryTier.SRAM) >= need:
                return
            if not self._migrate(entry, MemoryTier.DRAM):
                self._evict(entry)

    def _migrate(self, entry: _Entry, tier: MemoryTier) -> bool:
        """Copy a resident buffer into ``tier`` (no eviction); ``False`` if it does not fit."""
        buf = entry.buffer
        old = buf.device
        assert old is not None
        if self._free(tier) < _pages(buf.size):
            return False
        try:
            new = self._device.create_buffer(buf.size, tier)
        except OutOfDeviceMemory:
            return False
        if tier is MemoryTier.SRAM and not self._mappable(new.handle):
            self._device.free_buffer(new.handle)
            self._sram_mappable = False
            return False
        src = self._device.map_buffer(old.handle)
        try:
            dst = self._device.map_buffer(new.handle)
            try:
                dst[: buf.size] = src[: buf.size]
            finally:
                dst.release()
                self._device.unmap_buffer(new.handle)
        finally:
            src.release()
            self._device.unmap_buffer(old.handle)
        self._used[tier] += new.size
        self._release_device(buf)
        buf.device = new
        self._n.migrated[tier] += buf.size
        if tier is MemoryTier.SRAM:
            self._n.promotions += 1
        else:
            self._n.demotions += 1
        return True


class _Mapped:
    """A CPU view of a resident buffer for one copy: ``with _Mapped(dev, buf) as view``."""

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


def _drop_pins(entry: _Entry, ctx: ContextId | None, count: int) -> None:
    if count <= 0:
        return
    left = entry.pins_by.get(ctx, 0) - count
    if left > 0:
        entry.pins_by[ctx] = left
    else:
        entry.pins_by.pop(ctx, None)
    entry.buffer.pins = max(0, entry.buffer.pins - count)


def _unique(buffers: Iterable[Buffer]) -> list[Buffer]:
    seen: dict[BufferId, Buffer] = {}
    for buf in buffers:
        seen.setdefault(buf.id, buf)
    return list(seen.values())


def _pages(size: int) -> int:
    """``size`` rounded up to whole pages: what an allocation takes from a budget."""
    return -(-size // PAGE) * PAGE


def _held(entry: _Entry) -> int:
    """Device bytes ``entry`` holds now (0 when not resident)."""
    dev = entry.buffer.device
    return 0 if dev is None else dev.size


def _largest_first(entry: _Entry) -> int:
    return -entry.buffer.size


def _check_range(buf: Buffer, offset: int, size: int) -> None:
    if offset < 0 or size < 0 or offset + size > buf.size:
        raise InvalidArgument(
            f"range [{offset}, {offset + size}) is outside buffer {buf.id} of {buf.size} bytes"
        )
