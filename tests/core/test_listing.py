"""Listings and lookups without a context id: every context the caller may see, in one call."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from npud.core.context import Context
from npud.core.job import Job
from npud.core.queue import Queue
from npud.errors import NotFound
from npud.vocab import BufferUsage, JobState, Persistence, SchedulingClass
from tests.core.harness import ALICE, BOB, ROOT, Bed, make_bed


@dataclass
class World:
    """Alice with two contexts, Bob with one; a queue and a job in each."""

    a1: Context
    a2: Context
    b1: Context
    qa1: Queue
    qa2: Queue
    qb1: Queue
    ja1: Job
    ja2: Job
    jb1: Job


def _two_users(bed: Bed) -> World:
    a1, a2, b1 = bed.context(), bed.context(), bed.context(BOB)
    qa1, qa2, qb1 = bed.queue(a1, SchedulingClass.LATENCY), bed.queue(a2), bed.queue(b1, owner=BOB)
    [ja1] = bed.burn(a1, qa1, 0.001)
    [ja2] = bed.burn(a2, qa2, 0.001)
    [jb1] = bed.burn(b1, qb1, 0.001, owner=BOB)
    return World(a1, a2, b1, qa1, qa2, qb1, ja1, ja2, jb1)


def test_no_context_id_lists_every_context_of_the_caller_in_creation_order() -> None:
    """jobs/queues with ctx None cover the caller's contexts, context after context, and
    equal the per-context listings concatenated; another user's never appear."""
    bed = make_bed()
    w = _two_users(bed)
    core = bed.core
    a1, a2 = w.a1, w.a2
    per_context = [*core.jobs(ALICE, a1.id), *core.jobs(ALICE, a2.id)]
    assert core.jobs(ALICE, None) == per_context
    assert [j.id for j in core.jobs(ALICE, None)] == [w.ja1.id, w.ja2.id]
    assert core.queues(ALICE, None) == [w.qa1, w.qa2]
    assert core.jobs(BOB, None) == [w.jb1]
    bed.run()  # ended jobs stay listed from the contexts' histories
    assert [j.state for j in core.jobs(ALICE, None)] == [JobState.COMPLETED] * 2
    assert core.jobs(ALICE, None, include_ended=False) == []


def test_an_admin_sees_its_own_unless_it_asks_for_every_owner() -> None:
    """Like ListContexts: an admin's empty-context listing is its own; all_users is all."""
    bed = make_bed()
    w = _two_users(bed)
    mine = bed.context(ROOT)
    [jr] = bed.burn(mine, bed.queue(mine, owner=ROOT), 0.001, owner=ROOT)
    core = bed.core
    assert core.jobs(ROOT, None) == [jr]
    assert {j.id for j in core.jobs(ROOT, None, all_users=True)} == {
        w.ja1.id,
        w.ja2.id,
        w.jb1.id,
        jr.id,
    }
    assert core.jobs(ALICE, None, all_users=True) == core.jobs(ALICE, None)  # not an admin
    assert len(core.queues(ROOT, None, all_users=True)) == 4


def test_a_job_is_found_and_cancelled_by_id_alone_but_never_across_users() -> None:
    """job()/cancel() with ctx None search the caller's contexts (an admin's: all); another
    user's job id is NotFound for a non-admin, and cancelling it does nothing."""
    bed = make_bed()
    w = _two_users(bed)
    core = bed.core
    ja2, jb1 = w.ja2, w.jb1
    assert core.job(ALICE, None, ja2.id) is ja2
    with pytest.raises(NotFound, match="any context you can see"):
        core.job(ALICE, None, jb1.id)
    with pytest.raises(NotFound):
        core.cancel(ALICE, None, jb1.id)
    assert jb1.state is not JobState.CANCELLED
    assert core.job(ROOT, None, jb1.id) is jb1
    [queued] = bed.burn(w.a2, w.qa2, 0.001)
    assert core.cancel(ALICE, None, queued.id)
    assert queued.state is JobState.CANCELLED
    assert not core.cancel(ALICE, None, queued.id)  # already ended


def test_buffers_of_every_context_name_their_holder_and_closing_contexts_are_not_listed() -> None:
    """held_buffers(None) pairs each buffer with the context holding it (a shared persistent
    buffer once per holder); a closing context drops out of listings but its jobs stay
    reachable by id until it is gone."""
    bed = make_bed()
    core = bed.core
    a1, a2 = bed.context(), bed.context()
    shared = core.create_buffer(
        ALICE, a1.id, 64, usage=BufferUsage.WEIGHTS, persistence=Persistence.PERSISTENT, key="k@1"
    )
    core.write_buffer(ALICE, a1.id, shared.id, 0, b"x" * 64)
    core.seal_buffer(ALICE, a1.id, shared.id)
    core.open_persistent(ALICE, a2.id, "k@1")
    held = core.held_buffers(ALICE, None)
    assert [(c, b.id) for c, b in held] == [(a1.id, shared.id), (a2.id, shared.id)]
    assert core.held_buffers(BOB, None) == []
    q = bed.queue(a2)
    [running] = bed.burn(a2, q, 0.05)
    bed.clock.advance(0.001)
    core.destroy_context(ALICE, a2.id, grace_s=1.0)
    assert [c for c, _ in core.held_buffers(ALICE, None)] == [a1.id]
    assert running not in core.jobs(ALICE, None)
    assert core.job(ALICE, None, running.id) is running  # closing, still reachable
    bed.run()
    with pytest.raises(NotFound):
        core.job(ALICE, None, running.id)


def test_a_named_context_still_scopes_and_an_unknown_one_is_not_found() -> None:
    """With a context id the calls behave as before: that context only, NotFound otherwise."""
    bed = make_bed()
    w = _two_users(bed)
    core = bed.core
    assert core.jobs(ALICE, w.a1.id) == [w.ja1]
    with pytest.raises(NotFound):
        core.jobs(ALICE, w.b1.id)
    with pytest.raises(NotFound):
        core.job(ALICE, w.a1.id, w.ja2.id)
