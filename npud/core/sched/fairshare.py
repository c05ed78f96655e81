"""The THROUGHPUT run queue: device time shared between contexts by weight.

Each context (a :class:`Tenant` here) has a virtual time that advances by the device time its
jobs use divided by its weight; the context with the least virtual time goes next (stride
scheduling, as in the fair DRM scheduler). A job is charged its estimate when it is taken out
and corrected by its measured time when it completes, so several engines filling at once do
not all pick the same context.

Ownership: the scheduler owns this queue; a tenant refers to its context, which owns the jobs.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from npud.core.context import Context
from npud.core.ids import ContextId
from npud.core.job import Job
from npud.core.sched.ranked import IsResident, RankedQueue


def _ranked() -> RankedQueue[int]:
    return RankedQueue[int]()


@dataclass(slots=True, eq=False)
class Tenant:
    """A context as the fair-share queue sees it."""

    ctx: Context
    vtime: float = 0.0
    ready: RankedQueue[int] = field(default_factory=_ranked)  # by -priority, then arrival
    in_heap: bool = False


class FairShare:
    """Stride scheduling of THROUGHPUT jobs between contexts (see the module docstring)."""

    def __init__(self, estimate: Callable[[Job], float | None], unknown_cost_s: float) -> None:
        self._estimate = estimate
        self._unknown_cost_s = unknown_cost_s
        self._tenants: dict[ContextId, Tenant] = {}
        self._heap: list[tuple[float, int, Tenant]] = []  # (virtual time, seq, tenant)
        self._vclock = 0.0
        self._seq = itertools.count(1)

    def attach(self, ctx: Context) -> None:
        """Start sharing with ``ctx``, from the current virtual time."""
        self._tenants[ctx.id] = Tenant(ctx, vtime=self._vclock)

    def detach(self, ctx_id: ContextId) -> None:
        """Forget a context (it is closed)."""
        self._tenants.pop(ctx_id, None)

    def push(self, job: Job, neg_priority: int) -> None:
        """Queue a READY throughput job of an attached context."""
        tenant = self._tenants[job.context_id]
        tenant.ready.push(neg_priority, job)
        if not tenant.in_heap:
            # A context that was idle re-enters at the current virtual time: sleeping
            # does not earn credit to monopolise the device later.
            tenant.vtime = max(tenant.vtime, self._vclock)
            tenant.in_heap = True
            heapq.heappush(self._heap, (tenant.vtime, next(self._seq), tenant))

    def pop(self, is_resident: IsResident, lookahead: int) -> Job | None:
        """Take the next job of the context with the least virtual time and charge it."""
        heap = self._heap
        while heap:
            vtime, _seq, tenant = heapq.heappop(heap)
            if vtime != tenant.vtime and tenant.ready:
                # its virtual time was corrected while it waited in the heap: re-rank it
                heapq.heappush(heap, (tenant.vtime, next(self._seq), tenant))
                continue
            job = tenant.ready.pop(is_resident, lookahead)
            if job is None:
                tenant.in_heap = False
                continue
            self._vclock = max(self._vclock, tenant.vtime)
            charge = self._estimate(job) or self._unknown_cost_s
            job.charged_s = charge
            tenant.vtime += charge / tenant.ctx.weight
            if tenant.ready:
                heapq.heappush(heap, (tenant.vtime, next(self._seq), tenant))
            else:
                tenant.in_heap = False
            return job
        return None

    def correct(self, job: Job, seconds: float) -> None:
        """Add ``seconds`` of device time (negative: take back) to the context of ``job``."""
        tenant = self._tenants.get(job.context_id)
        if tenant is not None:
            tenant.vtime += seconds / tenant.ctx.weight

    def refund(self, job: Job) -> None:
        """Take back what ``job`` was charged when it was taken out."""
        self.correct(job, -job.charged_s)

    def clear(self) -> None:
        """Forget every queued job; the contexts stay attached."""
        self._heap.clear()
        for tenant in self._tenants.values():
            tenant.ready.clear()
            tenant.in_heap = False
