"""A pool of scarce hardware contexts, multiplexing npud's work onto the few a device has.

Some NPUs run work only inside *hardware contexts* that are few and slow to make: amdxdna
devices hold 6 (Phoenix/Hawk Point, ``hwctx_limit`` in ``npu1_regs.c``) to 16 (Strix and later)
contexts for the whole machine, and creating one costs tens of milliseconds (firmware loads the
partition). Applications that open one per model or per thread run out, and the kernel then
refuses ``CREATE_HWCTX``: users of amdxdna report exactly this failure today. npud holds the
contexts instead and multiplexes its own work onto them.

A context is identified by a *key* chosen by the adapter (amdxdna uses ``(engine, level)``:
the QoS priority is fixed at creation, so each native level needs its own context). Work asks
for the context of its key with :meth:`HwContextPool.acquire` and gives it back with
:meth:`HwContextPool.release` when the job completes. Several jobs share one context at once
(they run in order on it, as the kernel's per-context scheduler entity does).

The pool is driven from the core thread only, like everything behind the Device contract: no
locks, and callbacks run on the caller's stack.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from npud.errors import ResourceExhausted

K = TypeVar("K", bound=Hashable)
C = TypeVar("C")


class ContextsExhausted(ResourceExhausted):
    """Raised by a pool's ``create`` callback when the kernel has no hardware context left.

    The pool treats it as "the device is full right now": it learns the real limit (other
    processes may hold contexts too) and queues the work rather than failing it.
    """


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    """A snapshot of a :class:`HwContextPool`."""

    capacity: int  # the limit the pool works to (learned down when the kernel refuses sooner)
    live: int  # contexts that exist now
    in_use: int  # live contexts with work on them
    waiting: int  # requests queued for a context
    created: int
    destroyed: int
    evictions: int  # idle contexts destroyed to make room for another key
    queued_total: int  # requests that had to wait at all
    kernel_refusals: int  # creates the kernel refused for lack of contexts


@dataclass(slots=True, eq=False)
class _Entry(Generic[C]):
    context: C
    users: int
    last_used: int


@dataclass(slots=True, eq=False)
class PoolTicket(Generic[K, C]):
    """A request for a context; a queued one can be withdrawn (:meth:`HwContextPool.cancel`)."""

    key: K
    on_ready: Callable[[C], None]
    urgency: int
    seq: int
    granted: bool = False
    cancelled: bool = False


@dataclass(slots=True, eq=False)
class HwContextPool(Generic[K, C]):
    """Up to ``capacity`` live hardware contexts, created on demand and kept warm when idle.

    ``create(key)`` makes a context (raising :class:`ContextsExhausted` when the kernel is out of
    them); ``destroy(context)`` frees one. ``urgency(key)`` orders queued requests (lower goes
    first; ties in arrival order).
    """

    capacity: int
    create: Callable[[K], C]
    destroy: Callable[[C], None]
    urgency: Callable[[K], int] = field(default=lambda _key: 0)
    _entries: dict[K, _Entry[C]] = field(default_factory=dict)
    _waiting: list[PoolTicket[K, C]] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)
    _created: int = 0
    _destroyed: int = 0
    _evictions: int = 0
    _queued_total: int = 0
    _refusals: int = 0

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"a context pool needs a capacity of at least 1, not {self.capacity}")

    # Why acquire never fails for lack of contexts
    # --------------------------------------------
    # A request is granted at once when its key's context is live (shared), or when a context
    # can be made: below capacity, or by destroying the least recently used *idle* context of
    # another key. Otherwise it waits, ordered by urgency then arrival, and is granted from
    # release() when a context frees up. The kernel may refuse a create below our capacity
    # (other processes hold contexts): then the capacity is lowered to what we hold and the
    # request waits like any other. Only when we hold nothing and the kernel still refuses is
    # there nobody whose release could wake the request: that one fails, naming the cause.
    def acquire(self, key: K, on_ready: Callable[[C], None]) -> PoolTicket[K, C]:
        """Ask for the context of ``key``; ``on_ready(context)`` runs when it is granted.

        ``on_ready`` runs before this returns when a context is available now, otherwise later,
        from the :meth:`release` that frees one. Each grant must be matched by one
        :meth:`release` of the same key.

        Raises:
            ResourceExhausted: the kernel refused a context while the pool holds none, so no
                release could ever satisfy the request.
        """
        ticket = PoolTicket(key, on_ready, self.urgency(key), next(self._seq))
        if self._try_grant(ticket):
            return ticket
        if not self._entries:
            raise ResourceExhausted(
                "the device has no free hardware context: other processes hold all of them"
            )
        self._waiting.append(ticket)
        self._queued_total += 1
        return ticket

    def release(self, key: K) -> None:
        """One user of ``key``'s context is done; waiting requests may now be granted.

        Raises:
            KeyError: ``key`` has no live context (a release without a grant).
        """
        entry = self._entries[key]
        if entry.users <= 0:
            raise KeyError(f"release of {key!r} without a matching grant")
        entry.users -= 1
        entry.last_used = next(self._seq)
        self._service()

    def cancel(self, ticket: PoolTicket[K, C]) -> bool:
        """Withdraw a queued request; ``False`` if it was already granted."""
        if ticket.granted or ticket.cancelled:
            return False
        ticket.cancelled = True
        self._waiting.remove(ticket)
        return True

    def drop(self, key: K) -> None:
        """Forget ``key``'s context without destroying it (the kernel already lost it).

        Used after a device reset: waiters for the key are kept and re-served.
        """
        if self._entries.pop(key, None) is not None:
            self._destroyed += 1
        self._service()

    def close(self) -> None:
        """Destroy every live context and drop queued requests (device shutdown)."""
        for entry in self._entries.values():
            self.destroy(entry.context)
            self._destroyed += 1
        self._entries.clear()
        for ticket in self._waiting:
            ticket.cancelled = True
        self._waiting.clear()

    def context(self, key: K) -> C | None:
        """The live context of ``key``, if any."""
        entry = self._entries.get(key)
        return entry.context if entry is not None else None

    def statistics(self) -> PoolStatistics:
        """A frozen snapshot of the pool's counters."""
        return PoolStatistics(
            capacity=self.capacity,
            live=len(self._entries),
            in_use=sum(1 for e in self._entries.values() if e.users > 0),
            waiting=len(self._waiting),
            created=self._created,
            destroyed=self._destroyed,
            evictions=self._evictions,
            queued_total=self._queued_total,
            kernel_refusals=self._refusals,
        )

    # -- internals ------------------------------------------------------------------------------

    def _grant(self, ticket: PoolTicket[K, C], entry: _Entry[C]) -> None:
        entry.users += 1
        entry.last_used = next(self._seq)
        ticket.granted = True
        ticket.on_ready(entry.context)

    def _try_grant(self, ticket: PoolTicket[K, C]) -> bool:
        entry = self._entries.get(ticket.key)
        if entry is not None:
            self._grant(ticket, entry)
            return True
        if len(self._entries) >= self.capacity and not self._evict_one():
            return False
        try:
            context = self.create(ticket.key)
        except ContextsExhausted:
            self._refusals += 1
            # Learn the real limit: the kernel ran out before our capacity did.
            self.capacity = max(1, len(self._entries))
            if self._entries and self._evict_one():
                return self._try_grant(ticket)
            return False
        self._created += 1
        entry = _Entry(context, 0, next(self._seq))
        self._entries[ticket.key] = entry
        self._grant(ticket, entry)
        return True

    def _evict_one(self) -> bool:
        idle = [(e.last_used, k) for k, e in self._entries.items() if e.users == 0]
        if not idle:
            return False
        _, key = min(idle, key=lambda item: item[0])
        entry = self._entries.pop(key)
        self.destroy(entry.context)
        self._destroyed += 1
        self._evictions += 1
        return True

    def _service(self) -> None:
        while self._waiting:
            self._waiting.sort(key=lambda t: (t.urgency, t.seq))
            for ticket in self._waiting:
                if self._try_grant_queued(ticket):
                    self._waiting.remove(ticket)
                    break
            else:
                return

    def _try_grant_queued(self, ticket: PoolTicket[K, C]) -> bool:
        if ticket.key in self._entries:
            self._grant(ticket, self._entries[ticket.key])
            return True
        # Only the most urgent waiter may take a new context, so a stream of waiters for
        # live keys cannot starve it; others just share live contexts.
        if ticket is not self._waiting[0]:
            return False
        return self._try_grant(ticket)
