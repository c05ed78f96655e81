"""Jobs without an estimate are held to the device's model of their command stream.

Written as the attacker: a tenant that declares no estimate (or a low one, or trains a kind on
short jobs) must not get a long THROUGHPUT job past the time slice, nor be charged less than
the device time it takes from another tenant.
"""

from __future__ import annotations

import pytest

from npud.core.context import ContextQuotas
from npud.core.job import Job
from npud.errors import TimeSliceExceeded
from npud.vocab import JobState, SchedulingClass
from tests.core.harness import ALICE, BOB, make_bed

LONG = 8.0  # seconds: the attacker's job, far over the 100 ms slice


def test_a_long_throughput_job_without_an_estimate_is_refused_by_the_devices_model() -> None:
    """An 8 s THROUGHPUT job with no estimate and a fresh kind is TimeSliceExceeded at submit,
    naming the device's cost model, and nothing of it reaches the device."""
    bed = make_bed()
    attacker = bed.context(ALICE)
    queue = bed.queue(attacker, SchedulingClass.THROUGHPUT, in_order=False)
    for n in range(3):
        with pytest.raises(TimeSliceExceeded, match=r"8000\.00 ms \(the device's cost model"):
            bed.burn(attacker, queue, LONG, kind=f"fresh{n}")
    with pytest.raises(TimeSliceExceeded, match="at least 80 chunks"):
        bed.burn(attacker, queue, LONG, kind="")
    assert bed.device.statistics().submitted == 0
    assert bed.scheduler.statistics().rejected_at_admission == 4


def test_a_low_declared_estimate_or_a_kind_trained_short_does_not_pass_a_long_job() -> None:
    """Declaring estimate_s=1 ms for an 8 s job, or naming it like a kind measured on 10 ms
    jobs, is still refused: the device's model is a floor under both."""
    bed = make_bed()
    attacker = bed.context(ALICE)
    queue = bed.queue(attacker, SchedulingClass.THROUGHPUT, in_order=False)
    with pytest.raises(TimeSliceExceeded, match="the device's cost model"):
        bed.burn(attacker, queue, LONG, kind="tiny", estimate_s=0.001)
    trained = bed.burn(attacker, queue, 0.010, kind="step", n=5)
    bed.run()
    assert all(j.state is JobState.COMPLETED for j in trained)
    assert bed.scheduler.estimate(trained[0]) == pytest.approx(0.010)
    with pytest.raises(TimeSliceExceeded, match="the device's cost model"):
        bed.burn(attacker, queue, LONG, kind="step")


def test_a_latency_job_waits_at_most_one_slice_beside_an_estimateless_attacker() -> None:
    """The attacker's estimate-less jobs are cut to slice-sized chunks (90 ms); the victim's
    LATENCY job then waits at most one of them, not the 8 s it waited before."""
    bed = make_bed()
    attacker = bed.context(ALICE, quotas=ContextQuotas(max_queued_jobs=1024))
    queue = bed.queue(attacker, SchedulingClass.THROUGHPUT, in_order=False)
    with pytest.raises(TimeSliceExceeded):
        bed.burn(attacker, queue, LONG, kind="long")
    chunks = [bed.burn(attacker, queue, 0.090, kind=f"chunk{i}")[0] for i in range(60)]
    bed.clock.advance(0.5)
    victim = bed.context(BOB)
    lat = bed.queue(victim, SchedulingClass.LATENCY, owner=BOB)
    [probe] = bed.burn(victim, lat, 0.001, owner=BOB, kind="decode")
    bed.run()
    assert probe.state is JobState.COMPLETED
    assert all(j.state is JobState.COMPLETED for j in chunks)
    assert probe.queue_wait_s is not None
    assert probe.queue_wait_s <= 0.090 + bed.launch_s + 1e-9


def _shares(attacker_fresh_kinds: bool) -> tuple[float, float]:
    """Device time of an attacker's and a victim's THROUGHPUT contexts over the first 6 s."""
    bed = make_bed()
    quotas = ContextQuotas(max_queued_jobs=1024)
    attacker = bed.context(ALICE, quotas=quotas)
    victim = bed.context(BOB, quotas=quotas)
    aq = bed.queue(attacker, SchedulingClass.THROUGHPUT, in_order=False, depth_limit=1024)
    vq = bed.queue(victim, SchedulingClass.THROUGHPUT, owner=BOB, in_order=False, depth_limit=1024)
    used = {attacker.id: 0.0, victim.id: 0.0}

    def account(job: Job) -> None:
        if job.state is JobState.COMPLETED and job.run_s is not None:
            used[job.context_id] += job.run_s

    for i in range(300):
        kind = f"a{i}" if attacker_fresh_kinds else "a"
        [job] = bed.burn(attacker, aq, 0.090, kind=kind)
        job.add_done_callback(account)
    for job in bed.burn(victim, vq, 0.010, owner=BOB, kind="v", n=1000):
        job.add_done_callback(account)
    bed.clock.advance(6.0)
    total = used[attacker.id] + used[victim.id]
    return used[attacker.id] / total, used[victim.id] / total


def test_an_attacker_naming_every_job_anew_gets_no_more_than_its_fair_share() -> None:
    """Two equal-weight THROUGHPUT tenants: an attacker whose every 90 ms job has a fresh kind
    (so no kind ever has a sample) and no estimate is charged the device's model at dispatch
    and its measured time at completion, and gets about half the device, as it does with one
    kind; the victim's 10 ms jobs get the other half."""
    attacker, victim = _shares(attacker_fresh_kinds=True)
    honest_attacker, honest_victim = _shares(attacker_fresh_kinds=False)
    print(
        f"\nshares over 6 s: fresh kinds {attacker:.1%}/{victim:.1%}, "
        f"one kind {honest_attacker:.1%}/{honest_victim:.1%}"
    )
    assert victim >= 0.40
    assert abs(victim - honest_victim) <= 0.05
