"""A run queue's heap: READY jobs by rank, then arrival, with lazy deletion.

Each of the scheduler's run queues is a :class:`RankedQueue` over its own rank: a latency job's
:class:`EdfRank`, a queue priority, or one constant rank for arrival order. An entry whose job
is no longer READY, or is held back, is skipped when it surfaces.

Ownership: the queue holds references to READY jobs; the jobs belong to their contexts.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Sequence
from typing import Generic, NamedTuple, TypeVar

from npud.core.buffers import Buffer
from npud.core.job import Job
from npud.vocab import JobState

IsResident = Callable[[Sequence[Buffer]], bool]
"""Whether every buffer is resident now (the residency manager's answer)."""

R = TypeVar("R", int, "EdfRank")


class EdfRank(NamedTuple):
    """The rank of a latency job: its deadline (infinite without one), then its priority."""

    deadline: float
    neg_priority: int


class RankedQueue(Generic[R]):
    """READY jobs in ``(rank, seq)`` order; lower ranks first, arrival order among equals."""

    __slots__ = ("_heap",)

    def __init__(self) -> None:
        self._heap: list[tuple[R, int, Job]] = []

    def __len__(self) -> int:
        """Entries held, stale ones included."""
        return len(self._heap)

    def push(self, rank: R, job: Job) -> None:
        """Queue ``job`` at ``rank`` behind the jobs of equal rank already queued."""
        heapq.heappush(self._heap, (rank, job.seq, job))

    def entries(self) -> Iterator[tuple[R, Job]]:
        """Every entry as ``(rank, job)``, in no particular order, stale ones included."""
        for rank, _seq, job in self._heap:
            yield rank, job

    def clear(self) -> None:
        """Forget every entry."""
        self._heap.clear()

    # ---- Why equally ranked jobs may be taken out of arrival order ----------------------
    #
    # A job whose buffers are not resident must have them placed (copied in, perhaps after
    # evicting someone else's) before it can run, while a job whose buffers are already
    # resident starts at once. When the job at the front of a queue ranks no better than the
    # ones behind it (same deadline and priority; under ``fifo`` every job ranks the same),
    # the policy says nothing about which goes first, so up to ``resident_lookahead`` of them
    # are compared and the first one that is resident goes ahead. Jobs passed over keep their
    # entries (and so their place in line); a better ranked job is never passed over.
    # ------------------------------------------------------------------------------------

    def pop(self, is_resident: IsResident, lookahead: int) -> Job | None:
        """Take the best READY job out; among equally ranked ones prefer resident buffers.

        Stale entries met on the way are dropped. ``None`` when no READY job is left.
        """
        heap = self._heap
        while heap:
            rank, seq, first = heapq.heappop(heap)
            if first.state is JobState.READY and not first.held:
                break
        else:
            return None
        if lookahead <= 0 or not heap or heap[0][0] != rank:
            return first  # nothing ranks equal: residency cannot change the choice
        if is_resident(first.buffers()):
            return first
        passed: list[tuple[R, int, Job]] = []
        chosen = first
        while heap and len(passed) < lookahead:
            entry = heap[0]
            if entry[0] != rank:
                break
            heapq.heappop(heap)
            _rank, _seq, other = entry
            if other.state is not JobState.READY or other.held:
                continue
            if is_resident(other.buffers()):
                chosen = other
                passed.append((rank, seq, first))
                break
            passed.append(entry)
        for entry in passed:
            heapq.heappush(heap, entry)
        return chosen
