"""Duration estimates: measured averages per kind, and the modelled cap admission applies to
them so host stalls cannot make npud refuse jobs the device models well under the limits."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npud.core.estimates import DurationEstimator, OwnerEstimates
from npud.core.policy import SchedulerPolicy
from npud.core.service import JobSpec
from npud.devices.base import Completion, CompletionStatus, SubmitToken
from npud.errors import DeadlineInfeasible, InvalidArgument, TimeSliceExceeded
from npud.isa.program import Program
from npud.vocab import JobState, SchedulingClass
from tests.core.harness import ALICE, make_bed


def _done(modelled: float, measured: float) -> Completion:
    return Completion(
        token=SubmitToken(1),
        status=CompletionStatus.OK,
        error=None,
        started_at=0.0,
        finished_at=measured,
        modelled_s=modelled,
        measured_s=measured,
    )


def _stalled(est: DurationEstimator, kind: str, modelled: float, measured: float) -> None:
    for _ in range(30):  # long enough for the average to follow the stalls
        est.observe(kind, _done(modelled, measured))


def _stalled_for(
    est: OwnerEstimates, uid: tuple[int, str | None], kind: str, modelled: float, measured: float
) -> None:
    for _ in range(30):
        est.observe(uid, kind, _done(modelled, measured))


def test_measured_average_follows_stalls_but_admission_is_capped_by_the_model() -> None:
    """Bench P2: a 10 ms job measured at ~160 ms under host stalls. The measured average
    follows (charging stays honest); admission uses at most 2x the modelled 10 ms."""
    est = DurationEstimator(0.2)
    _stalled(est, "flood", 0.010, 0.160)
    assert est.estimate("flood") == pytest.approx(0.160, rel=0.01)
    assert est.modelled("flood") == pytest.approx(0.010)
    adm = est.admission("flood")
    assert adm is not None
    assert adm.seconds == pytest.approx(0.020)
    assert adm.capped
    assert "capped" in adm.describe()
    assert est.admission_s("flood") == adm.seconds
    [stats] = est.statistics()
    assert stats.mean_s == pytest.approx(0.160, rel=0.01)
    assert stats.modelled_s == pytest.approx(0.010)


def test_without_a_device_model_admission_uses_the_measured_average() -> None:
    """Real drivers report modelled 0: the measured average is the admission estimate."""
    est = DurationEstimator(0.2)
    _stalled(est, "npu", 0.0, 0.160)
    adm = est.admission("npu")
    assert adm is not None
    assert adm.seconds == pytest.approx(est.estimate("npu"))  # type: ignore[arg-type]
    assert not adm.capped
    assert adm.describe() == "measured average"
    assert est.modelled("npu") is None


def test_a_device_moderately_slower_than_its_model_is_believed() -> None:
    """Measured 1.5x the model is under the 2x cap: admission uses the measured average."""
    est = DurationEstimator(0.2)
    _stalled(est, "k", 0.010, 0.015)
    assert est.admission_s("k") == pytest.approx(0.015, rel=0.01)


@settings(max_examples=60, deadline=None)
@given(
    samples=st.lists(st.tuples(st.floats(0.0, 1.0), st.floats(1e-6, 1.0)), min_size=1, max_size=20),
    cap=st.floats(1.0, 10.0),
)
def test_admission_never_exceeds_the_measured_average_nor_the_cap(
    samples: list[tuple[float, float]], cap: float
) -> None:
    """Invariant: admission <= measured average, and <= cap x modelled average when modelled."""
    est = DurationEstimator(0.2, model_cap=cap)
    for modelled, measured in samples:
        est.observe("k", _done(modelled, measured))
    adm = est.admission_s("k")
    measured_avg = est.estimate("k")
    assert adm is not None
    assert measured_avg is not None
    assert adm <= measured_avg + 1e-12
    model = est.modelled("k")
    if model is not None:
        assert adm <= cap * model + 1e-12


def test_host_stalls_do_not_make_admission_refuse_a_job_the_device_models_under_the_slice() -> None:
    """Throughput kind measured at 160 ms (host stalls) but modelled at 10 ms: admitted under
    the 100 ms slice; the same measurements without a model are refused (TimeSliceExceeded)."""
    bed = make_bed(SchedulerPolicy(time_slice_s=0.1))
    ctx = bed.context()
    tp = bed.queue(ctx, SchedulingClass.THROUGHPUT, in_order=False)
    _stalled_for(bed.scheduler.estimator, ALICE.account, "flood", 0.010, 0.160)
    _stalled_for(bed.scheduler.estimator, ALICE.account, "unmodelled", 0.0, 0.160)
    [job] = bed.burn(ctx, tp, 0.010, kind="flood")
    with pytest.raises(TimeSliceExceeded, match=r"160\.\d+ ms \(measured average\)"):
        bed.burn(ctx, tp, 0.010, kind="unmodelled")
    bed.run()
    assert job.state is JobState.COMPLETED


def test_deadline_admission_uses_the_capped_estimate_and_says_so() -> None:
    """A decode kind modelled at 5 ms but measured at 40 ms is admitted with a 15 ms deadline
    (capped at 10 ms) and refused with an 8 ms one, the message naming the cap."""
    bed = make_bed()
    ctx = bed.context()
    lat = bed.queue(ctx, SchedulingClass.LATENCY, in_order=False)
    _stalled_for(bed.scheduler.estimator, ALICE.account, "decode", 0.005, 0.040)
    now = bed.core.now()
    [ok] = bed.burn(ctx, lat, 0.005, kind="decode", deadline=now + 0.015)
    with pytest.raises(DeadlineInfeasible, match=r"takes about 10\.000 ms \(measured average"):
        bed.burn(ctx, lat, 0.005, kind="decode", deadline=now + 0.008)
    with pytest.raises(DeadlineInfeasible, match="capped at a multiple of the device's modelled"):
        bed.burn(ctx, lat, 0.005, kind="decode", deadline=now + 0.008)
    bed.run()
    assert ok.state is JobState.COMPLETED


def test_a_model_cap_below_one_is_refused() -> None:
    """model_cap < 1 would make admission trust less than the model itself: InvalidArgument."""
    with pytest.raises(InvalidArgument, match="model_cap"):
        SchedulerPolicy(model_cap=0.5)


def test_a_job_given_its_command_bytes_is_modelled_from_them() -> None:
    """A submit that hands core the command range's bytes (an inline stream just written) is
    modelled exactly as one whose stream core reads back from the buffer; bytes of another
    length than the range are not trusted, and the buffer is read instead."""
    bed = make_bed()
    ctx = bed.context()
    q = bed.queue(ctx, SchedulingClass.LATENCY)
    blob = Program().burn(0.002).encode()
    cmd = bed.burn_buffer(ctx, 0.002)
    read_back, given, wrong = bed.core.submit(
        ALICE,
        ctx.id,
        [
            JobSpec(q.id, cmd),
            JobSpec(q.id, cmd, command_bytes=blob),
            JobSpec(q.id, cmd, command_bytes=Program().burn(0.02).burn(0.02).encode()),
        ],
    )
    expected = bed.device.modelled_s(blob, [])
    assert expected is not None
    assert expected > 0.0015
    assert read_back.modelled_s == pytest.approx(expected)
    assert given.modelled_s == read_back.modelled_s
    assert wrong.modelled_s == read_back.modelled_s
