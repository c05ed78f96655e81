"""Admission to the decode batch: who gets the next slot, and who waits.

A decode step has at most ``max_batch`` rows, one per sequence holding a *slot*; a slot is
held from admission until the sequence's buffers are released. Which waiting request gets a
freed slot is the batcher's isolation policy, and it lives here:

- interactive requests before batch-tier ones, and the batch tier never takes the last
  ``reserved_interactive`` slots, so a batch flood cannot fill the batch;
- users take turns (:class:`~npud.llm.turns.Turns`), and no user holds more than
  ``max_per_user`` slots while others wait;
- at most ``max_waiting`` requests wait; beyond them a request is refused
  (:class:`~npud.errors.QueueFull`), not queued without bound.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass

from npud.errors import QueueFull
from npud.llm.sequence import BatchSequence
from npud.llm.turns import Turns


@dataclass(frozen=True, slots=True)
class AdmissionStatistics:
    """Slots held and requests waiting, per tier."""

    slots: int
    waiting_interactive: int
    waiting_batch: int


class Admission:
    """The waiting rooms and the slots of one batcher (see the module docstring).

    Args:
        max_batch: slots in all.
        max_per_user: slots one user may hold (ignored without ``per_user``).
        reserved_interactive: slots the batch tier may not take.
        max_waiting: requests that may wait for a slot.
        per_user: apply ``max_per_user``; without it requests are served first come first
            served (the caller then queues every request under one user).
    """

    __slots__ = (
        "_batch",
        "_interactive",
        "max_batch",
        "max_per_user",
        "max_waiting",
        "per_user",
        "reserved_interactive",
        "slots",
    )

    def __init__(
        self,
        *,
        max_batch: int,
        max_per_user: int,
        reserved_interactive: int,
        max_waiting: int,
        per_user: bool,
    ) -> None:
        self.max_batch = max_batch
        self.max_per_user = max_per_user
        self.reserved_interactive = reserved_interactive
        self.max_waiting = max_waiting
        self.per_user = per_user
        self.slots: dict[int, BatchSequence] = {}  # admitted, not yet released
        self._interactive = Turns()
        self._batch = Turns()

    @property
    def waiting(self) -> int:
        """Requests waiting for a slot."""
        return len(self._interactive) + len(self._batch)

    def enqueue(self, seq: BatchSequence, *, user: str, batch: bool) -> None:
        """Let ``seq`` wait for a slot in its tier's room, behind ``user``'s other requests.

        Raises:
            QueueFull: ``max_waiting`` requests already wait.
        """
        if self.waiting >= self.max_waiting:
            raise QueueFull(
                f"{self.max_waiting} requests already wait for one of {self.max_batch} "
                "decode slots; retry later"
            )
        (self._batch if batch else self._interactive).push(user, seq)

    def withdraw(self, seq: BatchSequence, *, user: str) -> None:
        """Take ``seq`` out of the waiting rooms, if it waits there."""
        if not self._interactive.remove(user, seq):
            self._batch.remove(user, seq)

    def grant(self) -> list[BatchSequence]:
        """Grant every free slot that someone may take; the sequences admitted, in order."""
        granted: list[BatchSequence] = []
        while len(self.slots) < self.max_batch:
            seq = self._pick(self._interactive, self.max_batch)
            if seq is None:
                seq = self._pick(self._batch, self.max_batch - self.reserved_interactive)
            if seq is None:
                break
            self.slots[seq.seq_id] = seq
            granted.append(seq)
        return granted

    def _pick(self, room: Turns, limit: int) -> BatchSequence | None:
        if len(self.slots) >= limit:
            return None
        if not self.per_user:
            return room.pop()
        held = collections.Counter(s.request.user for s in self.slots.values())
        return room.pop(lambda user: held[user] < self.max_per_user)

    def release(self, seq: BatchSequence) -> None:
        """Free ``seq``'s slot (nothing if it holds none)."""
        self.slots.pop(seq.seq_id, None)

    def drain(self) -> list[BatchSequence]:
        """Every sequence holding a slot or waiting for one; the rooms are left empty."""
        return [*self.slots.values(), *self._interactive.drain(), *self._batch.drain()]

    def statistics(self) -> AdmissionStatistics:
        """A frozen snapshot of the slots and rooms."""
        return AdmissionStatistics(len(self.slots), len(self._interactive), len(self._batch))
