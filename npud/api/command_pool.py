"""The inline command buffers of one submit stream, reused from job to job.

A job sent on ``SubmitStream`` usually carries its command stream inline (a decode step's few
hundred bytes). Core runs commands only from buffers, so each inline stream needs a COMMAND
buffer in the job's context. Creating one per job and releasing it when the job ends cost a
buffer's whole life in core (ids, residency bookkeeping, the context's and the user's quota
charge and refund) on every step of a decode loop: about a tenth of the daemon's CPU per null
job.

Why a pool per stream
---------------------
A stream's jobs are its caller's, in contexts the caller opened, and a decode loop keeps one
or two in flight: a handful of buffers covers every step. So the stream keeps the buffers of
its finished jobs (per context, at most :data:`KEEP`) and writes the next inline stream into
one that is large enough; only when none is free does it create one (sized up to
:data:`MIN_SIZE` so that small streams of varying length fit the same buffer). A buffer is
taken back only when its job has ended (core refuses writes to a buffer bound to a running
job, and the pool treats that refusal, or any other, as "not reusable": it drops the buffer
and creates another). When the stream ends, every buffer it keeps is released, and a job still
running then releases its buffer when it ends. Releases asked for from a job's done callback
run on the next turn of the loop: until the callback returns, core still counts the job as
bound to the buffer and would refuse to release it. The buffers count against the context's quota
while the stream keeps them, as they did while their jobs ran.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

from npud.core.ids import BufferId, ContextId
from npud.core.owner import Owner
from npud.core.service import Core
from npud.errors import NpudError
from npud.vocab import BufferUsage

KEEP = 4
"""Free buffers kept per context (a decode loop has one or two steps in flight)."""

MIN_SIZE = 4096
"""The smallest buffer created for an inline stream: one page, which the device allocates
anyway."""


@dataclass(frozen=True, slots=True)
class CommandPoolStatistics:
    """What one stream's pool has done: buffers created, reused, released; free ones kept."""

    created: int
    reused: int
    released: int
    kept: int


@dataclass(slots=True, eq=False)
class CommandPool:
    """Inline command buffers of one stream's caller (see the module docstring)."""

    core: Core
    owner: Owner
    _free: dict[ContextId, list[BufferId]] = field(default_factory=dict)
    _sizes: dict[BufferId, int] = field(default_factory=dict)
    _closed: bool = False
    _created: int = 0
    _reused: int = 0
    _released: int = 0

    def take(self, ctx_id: ContextId, data: bytes) -> tuple[BufferId, bool]:
        """A COMMAND buffer of ``ctx_id`` holding ``data`` at offset 0, and whether it is new.

        The caller owns the buffer until it hands it back with :meth:`give_back` (once its job
        has ended, or at once when its job was not admitted).

        Raises:
            NotFound, FailedPrecondition, QuotaExceeded, ...: from core, when a new buffer
                cannot be created or written (nothing is kept then).
        """
        free = self._free.get(ctx_id)
        while free:
            buf_id = free.pop()
            if self._sizes[buf_id] < len(data):
                self._release_soon(ctx_id, buf_id)
                continue
            try:
                self.core.write_buffer(self.owner, ctx_id, buf_id, 0, data)
            except NpudError:  # its context went away, or core will not have it written
                self._release_soon(ctx_id, buf_id)
                continue
            self._reused += 1
            return buf_id, False
        size = max(len(data), MIN_SIZE)
        buf = self.core.create_buffer(
            self.owner, ctx_id, size, usage=BufferUsage.COMMAND, recycle=True
        )
        self._created += 1
        try:
            self.core.write_buffer(self.owner, ctx_id, buf.id, 0, data)
        except BaseException:
            self.drop_new(ctx_id, buf.id)
            raise
        self._sizes[buf.id] = size
        return buf.id, True

    def give_back(self, ctx_id: ContextId, buf_id: BufferId) -> None:
        """Keep a buffer whose job has ended (or was not admitted) for the next inline stream,
        or release it: the stream has ended, or ``KEEP`` buffers of the context are free."""
        free = self._free.setdefault(ctx_id, [])
        if self._closed or len(free) >= KEEP:
            self._release_soon(ctx_id, buf_id)
        else:
            free.append(buf_id)

    def drop_new(self, ctx_id: ContextId, buf_id: BufferId) -> None:
        """Undo a buffer :meth:`take` created for a request that then failed: released now,
        leaving the device's memory as it was (no job was ever bound to it)."""
        self._sizes.pop(buf_id, None)
        with contextlib.suppress(NpudError):
            self.core.release_buffer(self.owner, ctx_id, buf_id, undo=True)
        self._released += 1

    def close(self) -> None:
        """Release every free buffer; buffers handed back later are released as they come."""
        self._closed = True
        for ctx_id, free in self._free.items():
            for buf_id in free:
                self._release(ctx_id, buf_id)
        self._free.clear()

    def _release_soon(self, ctx_id: ContextId, buf_id: BufferId) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # the daemon's loop has stopped (shutdown ends jobs after it)
            self._release(ctx_id, buf_id)
            return
        loop.call_soon(self._release, ctx_id, buf_id)

    def _release(self, ctx_id: ContextId, buf_id: BufferId) -> None:
        self._sizes.pop(buf_id, None)
        # the context may have closed meanwhile: closing released the buffer already
        with contextlib.suppress(NpudError):
            self.core.release_buffer(self.owner, ctx_id, buf_id)
        self._released += 1

    def statistics(self) -> CommandPoolStatistics:
        """Counters so far and the free buffers kept now."""
        return CommandPoolStatistics(
            self._created,
            self._reused,
            self._released,
            sum(len(free) for free in self._free.values()),
        )
