"""The residency manager's books: every buffer of one device, who holds it, and what a job needs.

:class:`BufferStore` keeps the table of buffers (by id and by persistent key), each context's
references and memory quota, and the scheduler's side of residency: :meth:`~BufferStore.prepare`
makes a job's buffers resident before dispatch, :meth:`~BufferStore.begin_run` and
:meth:`~BufferStore.end_run` bracket a job on the device, :meth:`~BufferStore.binding` gives
the device handle. Where the bytes go is :class:`~npud.core.residency.memory.DeviceMemory`'s
business; the client's side (create, write, seal, release) is
:class:`~npud.core.residency.manager.ResidencyManager`, built on this.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from npud.clock import Clock
from npud.core.buffers import Buffer, Location
from npud.core.ids import BufferId, ContextId, new_buffer_id
from npud.core.keys import Name
from npud.core.registry import Registry
from npud.core.residency.entry import Entry, distinct, largest_first, pages
from npud.core.residency.memory import DeviceMemory
from npud.core.residency.statistics import Counters, ResidencyStatistics
from npud.devices.base import Binding, BufferUse, Device
from npud.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfDeviceMemory,
    QuotaExceeded,
    Unavailable,
)
from npud.vocab import MemoryTier, Persistence


class BufferStore:
    """The buffers of one device and the scheduler's side of residency (module docstring)."""

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
            InvalidArgument: a negative budget.
            Unavailable: ``state_dir`` is unusable or its manifest unreadable.
        """
        self._device = device
        self._clock = clock
        self._entries: dict[BufferId, Entry] = {}
        self._by_key: dict[str, Entry] = {}
        self._refs: dict[ContextId, dict[BufferId, Buffer]] = {}
        self._quotas: dict[ContextId, int] = {}
        self._n = Counters()
        self._mem = DeviceMemory(
            device,
            clock,
            budgets=budgets,
            sram_policy=sram_policy,
            counters=self._n,
            entries=self._entries,
            registry=self._registry_or_fail,
            forget=self._destroy,
        )
        self._registry = Registry(state_dir) if state_dir is not None else None

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
        unique = distinct(buffers)
        entries = [self._live(b) for b in unique]
        total = sum(pages(b.size) for b in unique)
        budget = sum(self._mem.budget.values())
        if total > budget:
            raise OutOfDeviceMemory(
                f"a job's buffers need {total} bytes but {self._device.name} has a budget of "
                f"{budget} bytes (SRAM + DRAM): it can never run"
            )
        protect = frozenset(b.id for b in unique)
        missing = sorted((e for e in entries if e.buffer.device is None), key=largest_first)
        if missing and not self._mem.could_place(missing, protect):
            self._n.holds += 1
            return False
        for entry in missing:
            if not self._mem.place(entry, protect, evict=True):
                self._n.holds += 1
                return False
        self._n.misses += len(missing)
        self._n.hits += len(unique) - len(missing)
        for entry in entries:
            entry.buffer.binds += 1
        # No touch here: from now until end_run (which touches) the buffers are bound to the
        # job and cannot be evicted, so a credit refreshed now would be refreshed again before
        # anyone compares it; one touch per job is enough.
        self._mem.promote(entries, protect)
        return True

    def is_resident(self, buffers: Iterable[Buffer]) -> bool:
        """Whether every buffer is resident now (the scheduler's "prefer resident" tie-break)."""
        return all(b.device is not None for b in buffers)

    def begin_run(self, buffers: Sequence[Buffer], now: float | None = None) -> None:
        """Mark a job's buffers as running at ``now`` (default: the clock's time): they cannot
        be evicted until :meth:`end_run`.

        Raises:
            FailedPrecondition: a buffer is not resident (call :meth:`prepare` first).
        """
        unique = distinct(buffers)
        for buf in unique:
            if buf.device is None:
                raise FailedPrecondition(f"buffer {buf.id} is not resident; prepare() first")
        if now is None:
            now = self._clock.now()
        for buf in unique:
            buf.in_use += 1
            buf.last_used = now

    def end_run(
        self, buffers: Sequence[Buffer], written: Sequence[Buffer], now: float | None = None
    ) -> None:
        """A job using ``buffers`` finished at ``now`` (default: the clock's time); the ones in
        ``written`` now hold its results.

        Called for every finished job, whatever its status. Buffers released while the job
        ran are freed here.
        """
        if now is None:
            now = self._clock.now()
        written_ids = {b.id for b in written}
        for buf in distinct(buffers):
            buf.in_use = max(0, buf.in_use - 1)
            buf.last_used = now
            entry = self._entries.get(buf.id)
            if entry is None:
                continue
            if buf.id in written_ids:
                buf.valid = True
                entry.hasher = None
            self._mem.touch(entry, now)
            if entry.doomed and buf.in_use == 0:
                self._destroy(entry)

    def binding(self, buf: Buffer, use: BufferUse) -> Binding:
        """The device handle of a resident buffer, for a :class:`Submission`.

        Raises:
            FailedPrecondition: the buffer is not resident.
        """
        if buf.device is None:
            raise FailedPrecondition(f"buffer {buf.id} is not resident; prepare() first")
        return Binding(buf.device.handle, use, buf.size)

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
        self._mem.evict(entry)
        return True

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
        tiers = self._mem.tiers(counts)
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
            spare_buffers=self._mem.spares.count(),
            spare_bytes=sum(self._mem.spares.bytes.values()),
            uploaded_by_usage=dict(n.uploaded_usage),
        )

    # ---- internals -------------------------------------------------------------------------

    def _registry_or_fail(self) -> Registry:
        if self._registry is None:
            raise Unavailable("no state directory is configured")
        return self._registry

    def _live(self, buf: Buffer) -> Entry:
        entry = self._entries.get(buf.id)
        if entry is None or entry.buffer is not buf:
            raise NotFound(f"buffer {buf.id} no longer exists")
        return entry

    def _entry_of(self, ctx: ContextId, buf: Buffer) -> Entry:
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

    def _revive(self, name: Name) -> Entry:
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
        entry = Entry(buf, stored=key, namespace=name.namespace, backing=reg)
        self._entries[buf.id] = entry
        self._by_key[key] = entry
        return entry

    def _host_copy(self, entry: Entry) -> bytearray:
        """The host copy of a non-resident buffer, created from what holds the contents."""
        if entry.host is None:
            buf = entry.buffer
            host = bytearray(buf.size)
            if entry.backing is not None and buf.location is Location.BACKED:
                self._registry_or_fail().read_into(entry.backing, memoryview(host))
            entry.host = host
            self._mem.host_bytes += buf.size
            buf.location = Location.HOST
        return entry.host

    def _destroy(self, entry: Entry) -> None:
        """Free everything of a buffer; a backed key stays openable from disk."""
        buf = entry.buffer
        if not (entry.recycle and self._mem.spares.park(buf)):
            self._mem.release_device(buf)
        if entry.host is not None:
            self._mem.host_bytes -= buf.size
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
