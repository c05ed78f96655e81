"""Numbers a client sends are finite and bounded before they reach a heap or a timer."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npud.core.estimates import DurationEstimator, OwnerEstimates
from npud.core.limits import Limits, bounded, clip
from npud.core.service import CoreLimits
from npud.devices.base import Completion, CompletionStatus, SubmitToken
from npud.errors import InvalidArgument, TimeSliceExceeded
from npud.vocab import JobState, SchedulingClass
from tests.core.harness import ALICE, BOB, make_bed

NAN, INF = math.nan, math.inf


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("timeout_s", NAN),
        ("timeout_s", INF),
        ("timeout_s", -1.0),
        ("timeout_s", 0.0),
        ("estimate_s", NAN),
        ("estimate_s", INF),
        ("estimate_s", -INF),
        ("deadline", NAN),
        ("deadline", INF),
    ],
)
def test_a_non_finite_job_number_is_refused_naming_it_and_admits_nothing(
    field: str, value: float
) -> None:
    """An attacker's NaN or infinite timeout, estimate or deadline is InvalidArgument naming
    the field; nothing is admitted; another user's 5 ms jobs still end at exactly 5 ms."""
    bed = make_bed()
    evil = bed.context(BOB)
    with pytest.raises(InvalidArgument, match=field):
        bed.burn(evil, bed.queue(evil, owner=BOB), 0.005, owner=BOB, **{field: value})
    assert evil.jobs == {}
    victim = bed.context(ALICE)
    queue = bed.queue(victim, SchedulingClass.LATENCY)
    jobs = bed.burn(victim, queue, 0.005, n=4)
    start = bed.clock.now()
    bed.run()
    assert [j.state for j in jobs] == [JobState.COMPLETED] * 4
    assert all(j.run_s == pytest.approx(0.005) for j in jobs)
    # one in-order queue: four 5 ms jobs back to back, never waiting on a broken timer
    assert bed.clock.now() - start == pytest.approx(0.020)


def test_a_timeout_over_its_class_ceiling_is_refused_and_the_ceiling_is_admitted() -> None:
    """timeout_s above the class's ceiling is refused naming the class and ceiling; exactly the
    ceiling is admitted; each class has its own."""
    limits = Limits(
        timeout_ceilings={c: 2.0 if c is SchedulingClass.LATENCY else 8.0 for c in SchedulingClass}
    )
    bed = make_bed(limits=CoreLimits(bounds=limits))
    ctx = bed.context()
    lat = bed.queue(ctx, SchedulingClass.LATENCY)
    with pytest.raises(InvalidArgument, match=r"timeout_s = 2\.5 .*latency job"):
        bed.burn(ctx, lat, 0.001, timeout_s=2.5)
    [ok] = bed.burn(ctx, lat, 0.001, timeout_s=2.0)
    [tp] = bed.burn(ctx, bed.queue(ctx), 0.001, timeout_s=8.0)
    bed.run()
    assert ok.state is tp.state is JobState.COMPLETED


@pytest.mark.parametrize("weight", [NAN, INF, 0.0, -1.0, 1e9, 1 / 17])
def test_a_weight_outside_the_policy_range_is_refused(weight: float) -> None:
    """Fair-share weights are capped by policy (default 1/16 .. 16): 1e9 is refused."""
    bed = make_bed()
    with pytest.raises(InvalidArgument, match="weight"):
        bed.context(BOB, weight=weight)
    assert bed.core.contexts(BOB) == []
    assert bed.context(BOB, weight=16.0).weight == 16.0


@settings(max_examples=200, deadline=None)
@given(st.floats(allow_nan=True, allow_infinity=True))
def test_bounded_admits_exactly_the_finite_values_in_range(value: float) -> None:
    """Any float is either returned unchanged (finite, in range) or InvalidArgument naming it."""
    inside = math.isfinite(value) and -5.0 <= value <= 5.0
    if inside:
        assert bounded("x", value, low=-5.0, high=5.0) == value
    else:
        with pytest.raises(InvalidArgument, match=r"^x "):
            bounded("x", value, low=-5.0, high=5.0)


def test_the_estimator_ignores_a_non_finite_sample() -> None:
    """A device reporting a NaN or infinite time does not poison a kind's average."""
    est = DurationEstimator()

    def done(measured: float) -> Completion:
        return Completion(SubmitToken(1), CompletionStatus.OK, None, 0.0, 0.0, 0.0, measured)

    est.observe("k", done(0.01))
    est.observe("k", done(NAN))
    est.observe("k", done(INF))
    assert est.estimate("k") == pytest.approx(0.01)


def test_limits_refuse_non_finite_bounds() -> None:
    """The bounds themselves are finite and positive (the daemon's config fills them)."""
    with pytest.raises(InvalidArgument, match="max_wait_s"):
        Limits(max_wait_s=INF)
    with pytest.raises(InvalidArgument, match="timeout ceiling"):
        Limits(timeout_ceilings={SchedulingClass.LATENCY: NAN})
    with pytest.raises(InvalidArgument, match="max_weight"):
        Limits(max_weight=0.5)


def test_one_users_kinds_do_not_move_another_users_estimates() -> None:
    """After bob runs 0.5 s jobs named "prefill" and "decode", alice's 20 ms "prefill" is not
    TimeSliceExceeded and her 20 ms "decode" with a 50 ms deadline is not DeadlineInfeasible;
    bob's own next "prefill" is refused by his own history."""
    bed = make_bed()
    evil = bed.context(BOB)
    lat = bed.queue(evil, SchedulingClass.LATENCY, owner=BOB)  # never refused for its length
    bed.burn(evil, lat, 0.5, owner=BOB, kind="prefill", timeout_s=2.0)
    bed.burn(evil, lat, 0.5, owner=BOB, kind="decode", timeout_s=2.0)
    bed.run()
    victim = bed.context(ALICE)
    [pre] = bed.burn(victim, bed.queue(victim), 0.02, kind="prefill")
    deadline = bed.clock.now() + 0.05
    [dec] = bed.burn(
        victim, bed.queue(victim, SchedulingClass.LATENCY), 0.02, kind="decode", deadline=deadline
    )
    bed.run()
    assert pre.state is dec.state is JobState.COMPLETED
    with pytest.raises(TimeSliceExceeded):
        bed.burn(evil, bed.queue(evil, owner=BOB), 0.5, owner=BOB, kind="prefill")
    kinds = {(e.owner_uid, e.kind) for e in bed.scheduler.statistics().estimates}
    assert kinds == {
        (BOB.uid, "prefill"),
        (BOB.uid, "decode"),
        (ALICE.uid, "prefill"),
        (ALICE.uid, "decode"),
    }


def test_a_users_kind_table_is_bounded_and_forgets_its_least_recent_kind() -> None:
    """Past max_kinds, a user's least recently used kind is dropped; other users keep theirs;
    a prior is where a forgotten kind starts again."""
    est = OwnerEstimates(max_kinds=3)
    est.set_prior("k0", 0.7)

    def done(seconds: float) -> Completion:
        return Completion(SubmitToken(1), CompletionStatus.OK, None, 0.0, 0.0, 0.0, seconds)

    one, two = (1, None), (1, "pod-b")  # two accounts of one uid (tenants) are apart too
    est.observe(two, "mine", done(0.01))
    for i in range(5):
        est.observe(one, f"k{i}", done(0.001))
        est.observe(one, "k4" if i < 4 else "k3", done(0.001))  # keep k4/k3 recently used
    assert est.kinds_of(one) == 3
    assert est.kinds_of(two) == 1
    assert est.estimate(two, "mine") == pytest.approx(0.01)
    assert est.estimate(one, "mine") is None
    assert est.estimate(one, "k0") == pytest.approx(0.7)  # forgotten: back to the prior
    assert est.estimate(one, "k1") is None


def test_labels_and_kinds_are_bounded_without_echoing_them() -> None:
    """A 1 MiB label on a context, queue or job and a 20 KB kind are refused naming the field,
    its length and the limit, and the message does not carry the text."""
    bed = make_bed()
    big = "x" * (1 << 20)
    with pytest.raises(InvalidArgument, match="label has 1048576 characters; the limit is 256"):
        bed.core.create_context(BOB, label=big)
    ctx = bed.context(BOB)
    with pytest.raises(InvalidArgument, match="label") as info:
        bed.queue(ctx, owner=BOB, label=big)
    assert len(str(info.value)) < 100
    queue = bed.queue(ctx, owner=BOB)
    with pytest.raises(InvalidArgument, match="kind has 20000 characters; the limit is 64"):
        bed.burn(ctx, queue, 0.001, owner=BOB, kind="k" * 20_000)
    with pytest.raises(InvalidArgument, match="label"):
        bed.burn(ctx, queue, 0.001, owner=BOB, label=big)
    assert ctx.jobs == {}
    assert len(ctx.queues) == 1


def test_clip_says_how_much_it_cut() -> None:
    """Echoed text is cut to the limit with the count of what was cut."""
    assert clip("abc", 5) == "abc"
    assert clip("x" * 1000, 10) == "x" * 10 + "... (990 more characters)"
