"""The client's side of residency: create, open, write, read, seal, pin and release buffers.

See :mod:`npud.core.residency` for lifetimes, sharing, eviction and quotas.
"""

from __future__ import annotations

import hashlib
import mmap
import os
from collections.abc import Callable

from npud.core.buffers import Buffer, Location
from npud.core.ids import ContextId, new_buffer_id
from npud.core.keys import HASH_PREFIX, Name, pending, resolve
from npud.core.keys import own as check_own
from npud.core.memfd import hand_out, require_upload_seals
from npud.core.registry import Registration
from npud.core.residency.entry import Entry, Mapped, check_range, drop_pins, pages
from npud.core.residency.spares import RECYCLE_MAX_BYTES
from npud.core.residency.store import BufferStore
from npud.devices.base import ImportsMemory
from npud.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfDeviceMemory,
    Unavailable,
    Unsupported,
)
from npud.vocab import BufferUsage, MemoryTier, Persistence, TierPreference


class ResidencyManager(BufferStore):
    """Owns the buffers of one device and keeps the right ones resident (see
    :mod:`npud.core.residency`)."""

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
            DeviceLost: the device is gone (nothing of the buffer remains).
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
        largest = max(self._mem.budget.values())
        if pages(size) > largest:
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
        entry = Entry(buf, stored=stored, namespace=uid if persistent else None)
        if persistence is Persistence.PERSISTENT:
            entry.hasher = hashlib.sha256()
        elif recycle and usage is BufferUsage.COMMAND and pages(size) <= RECYCLE_MAX_BYTES:
            entry.recycle = True
            self._mem.spares.allow(ctx)
        self._entries[buf.id] = entry
        if stored is not None:
            self._by_key[stored] = entry
        self._refs.setdefault(ctx, {})[buf.id] = buf
        try:
            self._mem.place(entry, frozenset({buf.id}))
        except BaseException:
            # the device refused (lost, or a fault): the caller never learns the id, so
            # nothing of the buffer may stay behind (a lost device's submits leaked one each)
            entry.recycle = False
            self._destroy(entry)
            raise
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

    def seal(self, ctx: ContextId, buf: Buffer, *, record: bool = True) -> Buffer:
        """Freeze a PERSISTENT buffer's contents and register it by key.

        The contents hash is the sha256 streamed over the client's in-order writes (re-read
        from the buffer if writes came out of order). A buffer created without a key gets the
        key ``sha256:<hex>``; if that key exists already, ``ctx`` is attached to the existing
        buffer, this one is released, and the existing one is returned (the caller must use
        the returned buffer from then on). A content-addressed key must match the contents; the
        sealed buffer then becomes the global one under that key, or, if another upload of
        the same key was sealed first, ``ctx`` is attached to that one in the same way. With a
        state directory, the contents are recorded there as a backing copy (unless ``record``
        is False: :meth:`deferred_backing` then does it off the core thread). Sealing a sealed
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
        # The digest is computed only where something needs it: a content key (to check or
        # to name), and the state directory's backing file. A free-form key in memory only
        # needs none, and hashing 100 MB is most of an upload by descriptor.
        named = None if buf.key is None else resolve(buf.key, entry.namespace or 0)
        recording = self._registry is not None and record
        digest = ""
        if named is None or named.digest is not None or recording:
            if entry.hasher is not None and entry.hashed_upto == buf.size:
                digest = str(entry.hasher.hexdigest())
            else:
                digest = hashlib.sha256(self._contents(entry)).hexdigest()
        entry.hasher = None
        content_key = HASH_PREFIX + digest
        name = named if named is not None else resolve(content_key, entry.namespace or 0)
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
        if recording and self._registry is not None:
            assert entry.stored is not None
            reg = Registration(entry.stored, buf.size, buf.usage, buf.tier_preference, digest)
            try:
                self._registry.record(reg, self._contents(entry))
                entry.backing = reg
            except Unavailable:
                self._n.registry_errors += 1
        return buf

    def export(self, ctx: ContextId, buf: Buffer, *, writable: bool) -> int:
        """A descriptor of the buffer's device memory for a client of ``ctx`` (the caller
        owns it). The buffer is made resident and pinned for ``ctx`` (one pin per call): its
        memory must stay this descriptor's pages, so it is neither evicted nor moved until
        :meth:`unpin` with the same ``ctx``, or until ``ctx`` releases it. Writable only for
        EPHEMERAL buffers (a mapping cannot be revoked, and persistent contents are shared);
        read-only means sealed against writes (:func:`npud.core.memfd.hand_out`).

        Raises:
            NotFound: ``ctx`` holds no reference to ``buf``.
            FailedPrecondition: writable asked of a PERSISTENT buffer, or an inline command
                stream's buffer.
            OutOfDeviceMemory: no room to make it resident now.
            Unsupported: the device has no descriptors for its buffers (or no read-only ones).
            DeviceLost: the device is gone.
        """
        entry = self._entry_of(ctx, buf)
        if entry.recycle:
            raise FailedPrecondition(f"buffer {buf.id} holds an inline command stream")
        if writable and buf.persistence is Persistence.PERSISTENT:
            raise FailedPrecondition(
                f"buffer {buf.id} is PERSISTENT: its descriptor is read-only once sealed (a "
                "mapping cannot be taken back, and sealed contents never change); upload it "
                "as a sealed memfd or with WriteBuffer"
            )
        if not writable and buf.persistence is Persistence.PERSISTENT and not buf.sealed:
            raise FailedPrecondition(f"buffer {buf.id} is not sealed yet: seal it first")
        self.pin(buf, ctx=ctx)
        try:
            assert buf.device is not None
            fd = hand_out(self._device.export_buffer(buf.device.handle), writable=writable)
        except BaseException:
            self.unpin(buf, ctx=ctx)
            raise
        if writable:
            buf.valid = True  # the client writes in place, out of our sight
        return fd

    def adopt(
        self,
        ctx: ContextId,
        fd: int,
        size: int,
        *,
        usage: BufferUsage,
        tier: TierPreference = TierPreference.ANY,
        key: str | None = None,
        uid: int = 0,
    ) -> Buffer:
        """Create a sealed PERSISTENT buffer whose device memory is a client's write-sealed
        memfd ``fd`` (the caller keeps and closes ``fd``; the device keeps its own copy):
        an upload that copies nothing. As :meth:`create` followed by :meth:`seal`; on any
        error nothing is left behind.

        Raises:
            InvalidArgument: ``fd`` lacks the seals (:func:`npud.core.memfd.
                require_upload_seals`) or holds too few bytes; the errors of :meth:`create`
                and :meth:`seal`.
            Unsupported: the device cannot take a client's memory.
            OutOfDeviceMemory: no room for the buffer now.
            QuotaExceeded, AlreadyExists, PermissionDenied: as :meth:`create`.
        """
        if not isinstance(self._device, ImportsMemory):
            raise Unsupported(f"{self._device.name} cannot take a client's memory; upload it")
        require_upload_seals(fd)
        buf = self.create(
            ctx, size, usage=usage, persistence=Persistence.PERSISTENT, tier=tier, key=key, uid=uid
        )
        entry = self._entries[buf.id]
        try:
            if buf.device is None:
                raise OutOfDeviceMemory(
                    f"no room for {size} bytes on {self._device.name} beside pinned and running "
                    "buffers"
                )
            placed = buf.device.tier
            self._mem.release_device(buf)  # create()'s own allocation makes way for the client's
            dev = self._device.import_memory(fd, size, placed)
            buf.device = dev
            self._mem.used[placed] += dev.size
            buf.location = Location.RESIDENT
            buf.valid = True
            entry.hasher = None
            return self.seal(ctx, buf, record=False)
        except BaseException:
            if ctx in buf.users:
                self.release(ctx, buf)
            if not buf.users and buf.id in self._entries:
                self._destroy(entry)
            raise

    def deferred_backing(self, buf: Buffer, fd: int) -> Callable[[], Callable[[], None]] | None:
        """The backing copy of a buffer :meth:`adopt` sealed, as work for a worker thread:
        ``None`` when there is nothing to record (no state directory, already backed).

        The returned function reads the immutable memfd ``fd`` (a duplicate is taken now and
        closed by the work), hashes it and writes the blob; it touches no core state, so it
        may run on any thread. It returns the step that names the blob in the manifest and
        makes it the buffer's backing copy, which must run on the core thread (it does
        nothing if the buffer has gone meanwhile). Until then eviction treats the buffer as
        unbacked (spilled, not dropped), exactly as a sealed buffer without a state directory.

        Raises:
            OSError: ``fd`` cannot be duplicated.
        """
        entry = self._entries.get(buf.id)
        registry = self._registry
        if registry is None or entry is None or not buf.sealed or entry.backing is not None:
            return None
        stored, size = entry.stored, buf.size
        if stored is None:
            return None
        mine = os.dup(fd)

        def work() -> Callable[[], None]:
            try:
                with (
                    mmap.mmap(mine, size, access=mmap.ACCESS_READ) as mem,
                    memoryview(mem) as view,
                ):
                    digest = hashlib.sha256(view).hexdigest()
                    registry.write_blob(digest, view)
            finally:
                os.close(mine)

            def name_it() -> None:
                if self._entries.get(buf.id) is not entry or entry.backing is not None:
                    return
                reg = Registration(stored, size, buf.usage, buf.tier_preference, digest)
                try:
                    registry.add(reg)
                    entry.backing = reg
                except Unavailable:
                    self._n.registry_errors += 1

            return name_it

        return work

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
        check_range(buf, offset, n)
        if buf.sealed:
            raise FailedPrecondition(f"buffer {buf.id} ({buf.key}) is sealed and immutable")
        if buf.in_use:
            raise FailedPrecondition(f"buffer {buf.id} is bound to a running job")
        if n == 0:
            return
        self._n.uploaded_usage[buf.usage] += n
        if buf.device is not None:
            with Mapped(self._device, buf) as view:
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
        self._mem.touch(entry)

    def read(self, buf: Buffer, offset: int, size: int) -> bytes:
        """``size`` bytes of the buffer from ``offset``, wherever they are now.

        Reading does not make a buffer resident. A buffer never written reads as zeros.

        Raises:
            InvalidArgument: the range is outside the buffer.
            NotFound: the buffer was freed.
            Unavailable: a backing file that should hold the contents is unreadable.
        """
        entry = self._live(buf)
        check_range(buf, offset, size)
        if buf.device is not None:
            with Mapped(self._device, buf) as view:
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
        drop_pins(entry, ctx, 1)

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
        drop_pins(entry, ctx, entry.pins_by.get(ctx, 0))
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
        self._mem.spares.forbid(ctx)
        for buf in list(self._refs.get(ctx, {}).values()):
            self.release(ctx, buf)
        self._refs.pop(ctx, None)
        self._quotas.pop(ctx, None)
        self._mem.spares.release(ctx)

    def _contents(self, entry: Entry) -> bytes | bytearray:
        buf = entry.buffer
        if buf.device is None and entry.host is not None:
            return entry.host
        return self.read(buf, 0, buf.size)
