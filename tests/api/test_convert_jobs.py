"""Jobs on the wire: the Job message carries its context's label beside its id, field by field
from core's snapshot through the client's Job."""

from __future__ import annotations

import time
from datetime import UTC

import pytest
from hypothesis import given
from hypothesis import strategies as st

from npud.api.convert import JobWirePrefix, job_prefix_to_wire, job_to_wire
from npud.client.types import Job as ClientJob
from npud.core.job import Job
from npud.v1 import job_pb2, types_pb2
from npud.vocab import JobState, SchedulingClass
from tests.core.harness import ALICE, make_bed


def test_a_job_message_names_its_context_by_id_and_label() -> None:
    """Job.context_label is the label the context was created with; every field is filled."""
    bed = make_bed()
    ctx = bed.core.create_context(ALICE, label="chat-alice")
    plain = bed.context()
    [job] = bed.burn(ctx, bed.queue(ctx, SchedulingClass.LATENCY), 0.002, label="step")
    [other] = bed.burn(plain, bed.queue(plain), 0.001)
    bed.run()
    assert job.statistics().context_label == "chat-alice"
    msg = job_to_wire(job, bed.core.now())
    assert msg.job_id == job.id
    assert msg.context_id == ctx.id
    assert msg.context_label == "chat-alice"
    assert msg.queue_id == job.queue.id
    assert msg.state == types_pb2.JOB_STATE_COMPLETED
    assert msg.kind == job.kind
    assert msg.label == "step"
    assert msg.scheduling_class == types_pb2.SCHEDULING_CLASS_LATENCY
    assert msg.run_s == job.run_s
    assert msg.queue_wait_s == job.queue_wait_s
    assert msg.engine == job.engine
    assert job.completion is not None
    assert msg.modelled_s == job.completion.modelled_s
    assert not msg.HasField("error")
    assert job_to_wire(other, bed.core.now()).context_label == ""
    client = ClientJob.from_wire(msg)
    assert client.context_label == "chat-alice"
    assert client.context_id == ctx.id
    assert client.state is JobState.COMPLETED
    assert "context_label" in {f.name for f in job_pb2.Job.DESCRIPTOR.fields}


def test_a_job_message_carries_the_wall_clock_time_of_every_state_it_entered() -> None:
    """Every transition is timestamped on the wire: the states in the order the job entered
    them, each at its wall-clock time (core's monotonic times moved onto the wall clock by
    their age), and the client reads them back as UTC datetimes."""
    bed = make_bed()
    ctx = bed.context()
    [job] = bed.burn(ctx, bed.queue(ctx, SchedulingClass.LATENCY), 0.25)
    bed.clock.advance(0.1)
    bed.run()
    before = time.time()
    msg = job_to_wire(job, bed.core.now())
    after = time.time()
    states = [t.state for t in msg.transitions]
    assert states == [types_pb2.JobState.Value(f"JOB_STATE_{s.name}") for s in job.times]
    assert states[0] == types_pb2.JOB_STATE_QUEUED
    assert states[-1] == types_pb2.JOB_STATE_COMPLETED
    assert types_pb2.JOB_STATE_RUNNING in states
    stamps = [t.time.ToNanoseconds() / 1e9 for t in msg.transitions]
    assert stamps == sorted(stamps)
    ages = [bed.core.now() - at for at in job.times.values()]
    for stamp, age in zip(stamps, ages, strict=True):
        assert before - age - 1e-3 <= stamp <= after - age + 1e-3
    assert stamps[-1] - stamps[0] == pytest.approx(job.finished_at - job.submitted_at, abs=1e-6)
    client = ClientJob.from_wire(msg)
    assert [s for s, _ in client.transitions][-1] is JobState.COMPLETED
    done = client.entered(JobState.COMPLETED)
    assert done is not None
    assert done.tzinfo is UTC
    assert done.timestamp() == pytest.approx(stamps[-1], abs=1e-6)
    assert client.entered(JobState.FAILED) is None


def test_a_job_message_built_into_a_response_is_the_message_built_alone() -> None:
    """``job_to_wire(job, now, into=resp.job)`` fills the response's field with what a
    standalone message holds; a job still running reports its run and age up to ``now``."""
    bed = make_bed()
    ctx = bed.context()
    [job] = bed.burn(ctx, bed.queue(ctx, SchedulingClass.LATENCY), 0.5)
    bed.clock.advance(0.2)
    assert job.state is JobState.RUNNING
    assert job.started_at is not None
    now = bed.core.now()
    resp = job_pb2.SubmitStreamResponse(tag=7)
    filled = job_to_wire(job, now, into=resp.job)
    assert filled is resp.job
    alone = job_to_wire(job, now)
    assert [t.state for t in alone.transitions] == [t.state for t in filled.transitions]
    for a, b in zip(alone.transitions, filled.transitions, strict=True):
        assert abs(a.time.ToNanoseconds() - b.time.ToNanoseconds()) < 10_000_000
    alone.ClearField("transitions")
    filled.ClearField("transitions")
    assert alone == filled
    assert filled.state == types_pb2.JOB_STATE_RUNNING
    assert filled.run_s == pytest.approx(now - job.started_at)
    assert filled.queue_wait_s == pytest.approx(job.started_at - job.submitted_at)
    assert filled.age_s == pytest.approx(now - job.submitted_at)
    assert filled.modelled_s == 0.0
    assert not filled.HasField("error")


@given(
    seconds=st.integers(min_value=0, max_value=253402300799),
    nanos=st.integers(min_value=0, max_value=999_999_999),
)
def test_the_client_reads_a_transition_time_as_protobuf_does(seconds: int, nanos: int) -> None:
    """A transition's wire Timestamp becomes the UTC datetime protobuf's ``ToDatetime`` gives
    (to the microsecond), for any valid timestamp."""
    msg = job_pb2.Job(state=types_pb2.JOB_STATE_QUEUED)
    entry = msg.transitions.add(state=types_pb2.JOB_STATE_QUEUED)
    entry.time.seconds, entry.time.nanos = seconds, nanos
    [(_, at)] = ClientJob.from_wire(msg).transitions
    assert at == entry.time.ToDatetime(tzinfo=UTC)
    assert at.tzinfo is UTC


def _without_times(msg: job_pb2.Job) -> tuple[job_pb2.Job, list[int], list[int]]:
    states = [t.state for t in msg.transitions]
    stamps = [t.time.ToNanoseconds() for t in msg.transitions]
    bare = job_pb2.Job()
    bare.CopyFrom(msg)
    bare.ClearField("transitions")
    return bare, states, stamps


def test_a_job_message_begun_while_the_job_runs_ends_as_the_message_built_at_its_end() -> None:
    """A message begun with ``job_prefix_to_wire`` while the job runs and completed by
    ``job_to_wire(..., prefix=)`` once it has ended is the message built in one go then:
    the same fields and the same transitions in order, each placed on the wall clock as the
    prefix placed the first ones."""
    bed = make_bed()
    ctx = bed.core.create_context(ALICE, label="chat")
    [job] = bed.burn(ctx, bed.queue(ctx), 0.08, label="step")
    bed.clock.advance(0.03)
    assert job.state is JobState.RUNNING
    resp = job_pb2.SubmitStreamResponse(tag=3)
    prefix = job_prefix_to_wire(job, bed.core.now(), resp.job)
    assert len(prefix.stamped) == len(resp.job.transitions) == len(job.times)
    bed.run()
    assert job.state is JobState.COMPLETED
    now = bed.core.now()
    done = job_to_wire(job, now, into=resp.job, prefix=prefix)
    whole, states, _ = _without_times(job_to_wire(job, now))
    got, got_states, got_stamps = _without_times(done)
    assert got == whole
    assert got_states == states
    assert got_states[-1] == types_pb2.JOB_STATE_COMPLETED
    _placed_by(prefix, job, got_stamps)


def _placed_by(prefix: JobWirePrefix, job: Job, stamps: list[int]) -> None:
    want = [round((prefix.wall_offset + at) * 1e9) for at in job.times.values()]
    assert len(stamps) == len(want)
    for got, expected in zip(stamps, want, strict=True):
        assert abs(got - expected) <= 1_000  # within a microsecond (float rounding)


def test_a_job_that_re_entered_a_state_after_its_message_was_begun_is_stamped_anew() -> None:
    """A job that re-entered a state it had already stamped (recalled from its engine, it is
    READY again) is sent with its transitions as the job now holds them, once each, at their
    new times, not with the stale ones written ahead."""
    bed = make_bed()
    ctx = bed.context()
    [job] = bed.burn(ctx, bed.queue(ctx), 0.08)
    bed.clock.advance(0.03)
    resp = job_pb2.SubmitStreamResponse()
    prefix = job_prefix_to_wire(job, bed.core.now(), resp.job)
    assert JobState.READY in job.times
    job.times[JobState.READY] = bed.core.now()  # as a recall stamps it
    bed.run()
    now = bed.core.now()
    _, states, stamps = _without_times(job_to_wire(job, now, into=resp.job, prefix=prefix))
    _, want_states, _ = _without_times(job_to_wire(job, now))
    assert states == want_states
    assert states[-1] == types_pb2.JOB_STATE_COMPLETED
    _placed_by(prefix, job, stamps)
