"""Users take turns: per-user FIFO queues served round-robin over the users."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from npud.llm.sequence import BatchSequence, Request
from npud.llm.turns import Turns, TurnsStatistics


def seq(seq_id: int, user: str = "") -> BatchSequence:
    return BatchSequence(seq_id, Request((1,), 1, user=user), f"seq{seq_id}")


def test_users_take_turns_whatever_they_queued() -> None:
    """A user with three sequences and one with one alternate: a, b, a, a."""
    turns = Turns()
    a1, a2, a3, b1 = seq(1, "a"), seq(2, "a"), seq(3, "a"), seq(4, "b")
    for s in (a1, a2, a3):
        turns.push("a", s)
    turns.push("b", b1)
    assert [turns.pop() for _ in range(5)] == [a1, b1, a2, a3, None]


def test_pushed_back_work_keeps_its_place_in_its_users_queue() -> None:
    """A sequence pushed back comes first among its user's; ``to_back`` gives the turn away."""
    turns = Turns()
    a1, a2, b1 = seq(1, "a"), seq(2, "a"), seq(3, "b")
    turns.push("a", a1)
    turns.push("a", a2)
    turns.push("b", b1)
    assert turns.pop() is a1
    turns.push_front("a", a1, to_back=True)  # a's chunk is done: b's turn first
    assert [turns.pop(), turns.pop(), turns.pop()] == [b1, a1, a2]


def test_ineligible_users_are_skipped_and_keep_their_turn() -> None:
    """``pop`` with a filter skips users it refuses without moving them."""
    turns = Turns()
    a1, b1 = seq(1, "a"), seq(2, "b")
    turns.push("a", a1)
    turns.push("b", b1)
    assert turns.pop(lambda user: user != "a") is b1
    assert turns.pop(lambda user: user != "a") is None
    assert turns.pop() is a1


def test_remove_and_drain_and_statistics() -> None:
    """Removed sequences are gone; drain empties; statistics count sequences and users."""
    turns = Turns()
    a1, a2, b1 = seq(1, "a"), seq(2, "a"), seq(3, "b")
    for s in (a1, a2, b1):
        turns.push(s.request.user, s)
    assert turns.statistics() == TurnsStatistics(3, 2)
    assert turns.remove("a", a2)
    assert not turns.remove("a", a2)
    assert not turns.remove("c", a1)
    assert sorted(s.seq_id for s in turns.drain()) == [1, 3]
    assert not turns
    assert turns.statistics() == TurnsStatistics(0, 0)


@given(st.lists(st.sampled_from("abcd"), max_size=40))
def test_every_sequence_comes_out_once_in_its_users_order(users: list[str]) -> None:
    """Whatever is pushed pops exactly once, each user's in FIFO order, and no user gets a
    second turn while another user with work has had fewer."""
    turns = Turns()
    for i, user in enumerate(users):
        turns.push(user, seq(i, user))
    out = []
    while (s := turns.pop()) is not None:
        out.append(s)
    assert sorted(s.seq_id for s in out) == list(range(len(users)))
    for user in set(users):
        mine = [s.seq_id for s in out if s.request.user == user]
        assert mine == sorted(mine)
    served: dict[str, int] = {}
    for s in out:
        served[s.request.user] = served.get(s.request.user, 0) + 1
        left = {u: users.count(u) - served.get(u, 0) for u in set(users)}
        waiting = [u for u, n in left.items() if n > 0]
        assert all(served.get(u, 0) >= served[s.request.user] - 1 for u in waiting)
