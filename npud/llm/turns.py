"""Turns: sequences queued per user and served one user at a time, round-robin.

The batcher's fairness between users rests on this one structure: a waiting room for decode
slots and each prefill lane keep their sequences in :class:`Turns`, so the next sequence
served is the first of the user whose turn it is, and that user then goes to the back. One
user's hundred requests therefore wait behind another user's one, not in front of it.
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from npud.llm.sequence import BatchSequence


@dataclass(frozen=True, slots=True)
class TurnsStatistics:
    """How many sequences wait, and for how many users."""

    sequences: int
    users: int


@dataclass(slots=True, eq=False)
class Turns:
    """Per-user FIFO queues, served round-robin over the users (see the module docstring).

    The turns own only their order; the sequences stay the batcher's.
    """

    _users: collections.OrderedDict[str, collections.deque[BatchSequence]] = field(
        default_factory=collections.OrderedDict
    )

    def push(self, user: str, seq: BatchSequence) -> None:
        """Queue ``seq`` behind ``user``'s other sequences (a new user gets the last turn)."""
        self._users.setdefault(user, collections.deque()).append(seq)

    def push_front(self, user: str, seq: BatchSequence, *, to_back: bool = False) -> None:
        """Put ``seq`` back in front of ``user``'s sequences: its work is not done. With
        ``to_back``, ``user`` also goes to the back of the turns (it just had its turn)."""
        self._users.setdefault(user, collections.deque()).appendleft(seq)
        if to_back:
            self._users.move_to_end(user)

    def pop(self, eligible: Callable[[str], bool] | None = None) -> BatchSequence | None:
        """The first sequence of the first user (that is ``eligible``), who then goes to the
        back; ``None`` when no (eligible) user has one."""
        for user in list(self._users):
            if eligible is not None and not eligible(user):
                continue
            queue = self._users.pop(user)
            seq = queue.popleft()
            if queue:
                self._users[user] = queue
            return seq
        return None

    def remove(self, user: str, seq: BatchSequence) -> bool:
        """Take ``seq`` out wherever it waits; whether it was there."""
        queue = self._users.get(user)
        if queue is None or seq not in queue:
            return False
        queue.remove(seq)
        if not queue:
            del self._users[user]
        return True

    def drain(self) -> list[BatchSequence]:
        """Every waiting sequence, leaving the turns empty."""
        out = [seq for queue in self._users.values() for seq in queue]
        self._users.clear()
        return out

    def __iter__(self) -> Iterator[BatchSequence]:
        return (seq for queue in self._users.values() for seq in queue)

    def __len__(self) -> int:
        return sum(len(q) for q in self._users.values())

    def __bool__(self) -> bool:
        return bool(self._users)

    def statistics(self) -> TurnsStatistics:
        """A frozen snapshot: sequences waiting and users with one."""
        return TurnsStatistics(len(self), len(self._users))
