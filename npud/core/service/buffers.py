"""Buffers as a context sees them: created, opened by key, written, read, sealed, pinned,
released; charged to their context's and their user's memory quotas."""

from __future__ import annotations

from collections.abc import Callable

from npud.core.buffers import Buffer
from npud.core.ids import (
    BufferId,
    ContextId,
)
from npud.core.owner import Owner
from npud.core.service.devices import CoreDevices
from npud.errors import (
    FailedPrecondition,
    QuotaExceeded,
)
from npud.vocab import (
    BufferUsage,
    Persistence,
    TierPreference,
)


class CoreBuffers(CoreDevices):
    """The buffers part of core's facade."""

    def create_buffer(
        self,
        owner: Owner,
        ctx_id: ContextId,
        size: int,
        *,
        usage: BufferUsage,
        persistence: Persistence = Persistence.EPHEMERAL,
        tier: TierPreference = TierPreference.ANY,
        key: str | None = None,
        recycle: bool = False,
    ) -> Buffer:
        """Create a buffer referenced by the context (see ``ResidencyManager.create``).

        ``recycle`` is for short-lived COMMAND buffers (the inline streams of the decode fast
        path): the device allocation is reused by the context's next one.

        Raises:
            NotFound: no such context for ``owner``.
            FailedPrecondition: the context is closing.
            InvalidArgument, AlreadyExists, OutOfDeviceMemory: from the residency manager.
            PermissionDenied: the key names another user's namespace.
            QuotaExceeded: the context's memory quota, or its user's
                (``limits.max_memory_bytes_per_user``), would be exceeded (nothing allocated).
        """
        ctx = self._open_context(owner, ctx_id)
        if size > 0:
            self._charge_user(ctx.owner, size)
        buf = self._residency(ctx).create(
            ctx.id,
            size,
            usage=usage,
            persistence=persistence,
            tier=tier,
            key=key,
            recycle=recycle,
            uid=ctx.owner.uid,
        )
        ctx.buffers[buf.id] = buf
        return buf

    def user_memory(self, uid: int, tenant: str | None = None) -> int:
        """Bytes charged to every context of user ``uid`` (of its ``tenant`` when given; shared
        buffers once per context)."""
        total = 0
        for ctx in self._contexts.values():
            if ctx.owner.account == (uid, tenant):
                total += self._residency(ctx).context_usage(ctx.id)
        return total

    def _charge_user(self, owner: Owner, size: int) -> None:
        if owner.quota is not None:
            limit, per = owner.quota.memory_bytes, "tenant"
        else:
            limit, per = self.limits.max_memory_bytes_per_user, "user"
        if limit is None:
            return
        used = self.user_memory(owner.uid, owner.tenant)
        if used + size > limit:
            raise QuotaExceeded(
                f"{owner} holds {used} bytes of buffers over all its contexts and {size} more "
                f"were requested; the limit per {per} is {limit} bytes"
            )

    def open_persistent(self, owner: Owner, ctx_id: ContextId, key: str) -> Buffer:
        """Attach the context to a persistent buffer by key (uploads nothing). Keys follow
        the sharing rule of :mod:`npud.core.keys`, in the namespace of the context's user.

        Raises:
            InvalidArgument: a malformed key.
            NotFound: no such context for ``owner``, or no such key the context's user may
                open (another user's unsealed buffer is not found).
            FailedPrecondition: the context is closing.
            QuotaExceeded: the context's or its user's memory quota would be exceeded.
        """
        ctx = self._open_context(owner, ctx_id)
        residency = self._residency(ctx)
        buf = residency.open_persistent(ctx.id, key, uid=ctx.owner.uid)
        try:
            self._charge_user(ctx.owner, 0)
        except QuotaExceeded:
            if buf.id not in ctx.buffers:  # undo only the reference this call took
                residency.release(ctx.id, buf)
            raise
        ctx.buffers[buf.id] = buf
        return buf

    def buffer(self, owner: Owner, ctx_id: ContextId, buffer_id: BufferId) -> Buffer:
        """A buffer the context references.

        Raises:
            NotFound: no such context for ``owner``, or the context holds no such buffer.
        """
        ctx = self._context(owner, ctx_id)
        return self._residency(ctx).get(ctx.id, buffer_id)

    def buffers(self, owner: Owner, ctx_id: ContextId) -> list[Buffer]:
        """Every buffer the context references.

        Raises:
            NotFound: no such context for ``owner``.
        """
        ctx = self._context(owner, ctx_id)
        return self._residency(ctx).buffers(ctx.id)

    def held_buffers(
        self, owner: Owner, ctx_id: ContextId | None, *, all_users: bool = False
    ) -> list[tuple[ContextId, Buffer]]:
        """``(context, buffer)`` for every buffer a context references; with ``ctx_id``
        ``None``, for every open context ``owner`` may list (a buffer shared by two of them
        appears once per holder, as each sees it).

        Raises:
            NotFound: no such context for ``owner``.
        """
        return [
            (ctx.id, buf)
            for ctx in self._scope(owner, ctx_id, all_users=all_users)
            for buf in self._residency(ctx).buffers(ctx.id)
        ]

    def write_buffer(
        self,
        owner: Owner,
        ctx_id: ContextId,
        buffer_id: BufferId,
        offset: int,
        data: bytes | memoryview,
    ) -> None:
        """Write bytes into a buffer (see ``ResidencyManager.write`` for what it raises)."""
        ctx = self._open_context(owner, ctx_id)
        residency = self._residency(ctx)
        residency.write(residency.get(ctx.id, buffer_id), offset, data)

    def read_buffer(
        self, owner: Owner, ctx_id: ContextId, buffer_id: BufferId, offset: int, size: int
    ) -> bytes:
        """Read bytes from a buffer (see ``ResidencyManager.read`` for what it raises)."""
        ctx = self._context(owner, ctx_id)
        residency = self._residency(ctx)
        return residency.read(residency.get(ctx.id, buffer_id), offset, size)

    def seal_buffer(self, owner: Owner, ctx_id: ContextId, buffer_id: BufferId) -> Buffer:
        """Seal a persistent buffer's contents under its key (``ResidencyManager.seal``)."""
        ctx = self._open_context(owner, ctx_id)
        residency = self._residency(ctx)
        sealed = residency.seal(ctx.id, residency.get(ctx.id, buffer_id))
        if sealed.id != buffer_id:  # the same contents were sealed first: attached to those
            ctx.buffers.pop(buffer_id, None)
            ctx.buffers[sealed.id] = sealed
        return sealed

    def pin_buffer(self, owner: Owner, ctx_id: ContextId, buffer_id: BufferId) -> None:
        """Pin a buffer resident on behalf of the context (dropped when it releases it)."""
        ctx = self._open_context(owner, ctx_id)
        residency = self._residency(ctx)
        residency.pin(residency.get(ctx.id, buffer_id), ctx=ctx.id)

    def unpin_buffer(self, owner: Owner, ctx_id: ContextId, buffer_id: BufferId) -> None:
        """Drop one pin the context took; jobs held for room are retried."""
        ctx = self._context(owner, ctx_id)
        residency = self._residency(ctx)
        residency.unpin(residency.get(ctx.id, buffer_id), ctx=ctx.id)
        self._devices[ctx.device].scheduler.kick()

    def release_buffer(
        self, owner: Owner, ctx_id: ContextId, buffer_id: BufferId, *, undo: bool = False
    ) -> None:
        """Drop the context's reference to a buffer.

        ``undo``: the buffer was created by the caller's request that then failed; leave the
        device's memory as it was before (see ``ResidencyManager.release``).

        Raises:
            NotFound: no such context for ``owner``, or it holds no such buffer.
            FailedPrecondition: a live job of the context is bound to it (cancel it first).
        """
        ctx = self._context(owner, ctx_id)
        residency = self._residency(ctx)
        buf = residency.get(ctx.id, buffer_id)
        live = ctx.buffer_jobs.get(buffer_id, 0)
        if live:
            raise FailedPrecondition(
                f"buffer {buffer_id} is bound to {live} live job(s) of context {ctx.id}; "
                "release it after they end"
            )
        residency.release(ctx.id, buf, undo=undo)
        ctx.buffers.pop(buffer_id, None)
        self._devices[ctx.device].scheduler.kick()

    def export_buffer(
        self, owner: Owner, ctx_id: ContextId, buffer_id: BufferId, *, writable: bool
    ) -> tuple[int, Buffer]:
        """A descriptor of a buffer's memory for ``owner`` (who owns the fd) and the buffer;
        the buffer stays pinned for the context until :meth:`unpin_buffer` (see
        ``ResidencyManager.export``).

        Raises:
            NotFound: no such context for ``owner``, or it holds no such buffer.
            FailedPrecondition, OutOfDeviceMemory, Unsupported, DeviceLost: from residency.
        """
        ctx = self._open_context(owner, ctx_id)
        residency = self._residency(ctx)
        buf = residency.get(ctx.id, buffer_id)
        return residency.export(ctx.id, buf, writable=writable), buf

    def import_buffer(
        self,
        owner: Owner,
        ctx_id: ContextId,
        fd: int,
        size: int,
        *,
        usage: BufferUsage,
        tier: TierPreference = TierPreference.ANY,
        key: str | None = None,
    ) -> Buffer:
        """A sealed PERSISTENT buffer over a client's write-sealed memfd (the caller keeps
        ``fd``): an upload without a copy (``ResidencyManager.adopt``).

        Raises:
            NotFound: no such context for ``owner``.
            FailedPrecondition: the context is closing.
            QuotaExceeded: the context's or its user's memory quota would be exceeded.
            InvalidArgument, AlreadyExists, PermissionDenied, OutOfDeviceMemory, Unsupported:
                from the residency manager.
        """
        ctx = self._open_context(owner, ctx_id)
        if size > 0:
            self._charge_user(ctx.owner, size)
        buf = self._residency(ctx).adopt(
            ctx.id, fd, size, usage=usage, tier=tier, key=key, uid=ctx.owner.uid
        )
        ctx.buffers[buf.id] = buf
        return buf

    def deferred_backing(
        self, owner: Owner, ctx_id: ContextId, buffer_id: BufferId, fd: int
    ) -> Callable[[], Callable[[], None]] | None:
        """Work that records an imported buffer's backing copy off the core thread (see
        ``ResidencyManager.deferred_backing``); ``None`` when there is nothing to record.

        Raises:
            NotFound: no such context for ``owner``, or it holds no such buffer.
        """
        ctx = self._context(owner, ctx_id)
        residency = self._residency(ctx)
        return residency.deferred_backing(residency.get(ctx.id, buffer_id), fd)
