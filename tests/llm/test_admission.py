"""Admission to the decode batch: interactive first, reserved slots, users capped, bounded."""

from __future__ import annotations

import pytest

from npud.errors import QueueFull
from npud.llm.admission import Admission, AdmissionStatistics
from npud.llm.sequence import BatchSequence, Request


def seq(seq_id: int, user: str = "u") -> BatchSequence:
    return BatchSequence(seq_id, Request((1,), 1, user=user), f"seq{seq_id}")


def admission(**kw: int | bool) -> Admission:
    options: dict[str, int | bool] = {
        "max_batch": 2,
        "max_per_user": 2,
        "reserved_interactive": 0,
        "max_waiting": 8,
        "per_user": True,
    }
    options.update(kw)
    return Admission(**options)  # type: ignore[arg-type]


def test_interactive_requests_go_first_and_keep_their_reserved_slots() -> None:
    """With one slot reserved, batch requests take at most the others; interactive requests
    that come later still get in before waiting batch ones."""
    a = admission(max_batch=3, reserved_interactive=1, max_per_user=3)
    b1, b2, b3 = seq(1), seq(2), seq(3)
    for s in (b1, b2, b3):
        a.enqueue(s, user="bulk", batch=True)
    assert a.grant() == [b1, b2]  # the third slot is reserved
    i1 = seq(4, "alice")
    a.enqueue(i1, user="alice", batch=False)
    assert a.grant() == [i1]
    a.release(b1)
    a.enqueue(i2 := seq(5, "alice"), user="alice", batch=False)
    assert a.grant() == [i2]
    assert a.statistics() == AdmissionStatistics(3, 0, 1)


def test_one_user_cannot_take_every_slot_while_another_waits() -> None:
    """``max_per_user`` 1: the second user gets the second slot, not the first user's second
    request."""
    a = admission(max_per_user=1)
    x1, x2, y1 = seq(1, "x"), seq(2, "x"), seq(3, "y")
    for s in (x1, x2, y1):
        a.enqueue(s, user=s.request.user, batch=False)
    assert a.grant() == [x1, y1]
    a.release(y1)
    assert a.grant() == []  # x holds its one slot; its second request waits
    a.release(x1)
    assert a.grant() == [x2]


def test_without_per_user_caps_requests_are_first_come_first_served() -> None:
    """``per_user`` off: one queue, in order."""
    a = admission(per_user=False, max_per_user=1)
    s1, s2 = seq(1, "x"), seq(2, "x")
    a.enqueue(s1, user="", batch=False)
    a.enqueue(s2, user="", batch=False)
    assert a.grant() == [s1, s2]


def test_a_full_waiting_room_refuses_and_changes_nothing() -> None:
    """Beyond ``max_waiting`` a request is QueueFull and nothing is queued for it."""
    a = admission(max_waiting=1)
    a.enqueue(seq(1), user="u", batch=False)
    with pytest.raises(QueueFull, match="retry later"):
        a.enqueue(seq(2), user="u", batch=True)
    assert a.waiting == 1
    a.withdraw(seq(3), user="u")  # not waiting: nothing happens
    assert a.waiting == 1
    assert [x.seq_id for x in a.drain()] == [1]
    assert a.waiting == 0
