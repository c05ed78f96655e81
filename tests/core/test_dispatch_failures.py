"""Between admission and the device: a job the device cannot carry is refused at admission, and
any failure on the way to the device ends the job FAILED and frees its engine and buffers."""

from __future__ import annotations

import pytest

from npud.core.service import JobSpec
from npud.devices.base import BufferUse
from npud.devices.sim.wire import MAX_BINDINGS, WireError, encode_run
from npud.errors import InvalidArgument, JobFailed, NotFound
from npud.vocab import BufferUsage, JobState, SchedulingClass
from tests.core.harness import ALICE, make_bed


def test_more_bindings_than_the_device_takes_are_refused_at_admission() -> None:
    """A job binding one more buffer than ``max_bindings`` is INVALID_ARGUMENT naming the
    limit; nothing is admitted; a job at the limit runs and completes."""
    bed = make_bed()
    limit = bed.device.capabilities.max_bindings
    assert limit == MAX_BINDINGS
    ctx = bed.context()
    q = bed.queue(ctx, SchedulingClass.THROUGHPUT)
    buf = bed.core.create_buffer(ALICE, ctx.id, 64, usage=BufferUsage.SCRATCH)
    spec = bed.spec(ctx, q, 0.001)
    with pytest.raises(InvalidArgument, match=f"at most {limit}"):
        bed.core.submit(
            ALICE,
            ctx.id,
            [JobSpec(q.id, spec.command, bindings=((buf.id, BufferUse.READ),) * (limit + 1))],
        )
    assert bed.scheduler.statistics().submitted == 0
    (job,) = bed.core.submit(
        ALICE, ctx.id, [JobSpec(q.id, spec.command, bindings=((buf.id, BufferUse.READ),) * limit)]
    )
    bed.run()
    assert job.state is JobState.COMPLETED


def test_a_failure_on_the_way_to_the_device_fails_the_job_and_frees_its_engine() -> None:
    """When the device's submit raises something unexpected, the job ends FAILED (JobFailed
    naming the error), its engine and buffers are free, and the next job completes."""
    bed = make_bed()
    ctx = bed.context()
    q = bed.queue(ctx, SchedulingClass.LATENCY)
    real = bed.device.submit
    calls = []

    def broken(*args: object, **kw: object) -> object:
        if not calls:
            calls.append(1)
            raise ValueError("a field does not fit")
        return real(*args, **kw)  # type: ignore[arg-type]

    bed.device.submit = broken  # type: ignore[method-assign]
    (bad,) = bed.burn(ctx, q, 0.001)
    bed.run()
    assert bad.state is JobState.FAILED
    assert bad.error is not None
    assert bad.error.type is JobFailed
    assert "could not take the job" in bad.error.message
    assert "a field does not fit" in bad.error.message
    assert all(b.in_use == 0 for b, _ in bad.bindings)
    assert bad.command.in_use == 0
    (good,) = bed.burn(ctx, q, 0.001)
    bed.run()
    assert good.state is JobState.COMPLETED
    assert all(e.in_flight == 0 for e in bed.scheduler.statistics().engines)


def test_a_job_whose_buffers_fail_to_be_placed_fails_and_the_next_job_of_its_class_runs() -> None:
    """A job whose buffers cannot be made resident (a buffer freed under it) ends FAILED
    naming why, and the run queue's count stays right: the next job of the same class is
    dispatched and completes, as are the jobs queued behind it."""
    bed = make_bed()
    ctx = bed.context()
    q = bed.queue(ctx, SchedulingClass.LATENCY)
    residency = bed.core._residency(ctx)
    real = residency.prepare
    calls = []

    def broken(*args: object, **kw: object) -> object:
        if not calls:
            calls.append(1)
            raise NotFound("buffer buf-x was freed")
        return real(*args, **kw)  # type: ignore[arg-type]

    residency.prepare = broken  # type: ignore[method-assign]
    (bad,) = bed.burn(ctx, q, 0.001)
    bed.run()
    assert bad.state is JobState.FAILED
    assert bad.error is not None
    assert "was freed" in bad.error.message
    jobs = bed.burn(ctx, q, 0.001, n=3)
    bed.run()
    assert [j.state for j in jobs] == [JobState.COMPLETED] * 3
    assert bed.scheduler._queues.ready[SchedulingClass.LATENCY] == 0


def test_a_run_message_never_exceeds_the_device_process_packet() -> None:
    """The sim's run packet refuses more than MAX_BINDINGS bindings instead of producing a
    packet the device process cannot receive."""
    n = MAX_BINDINGS
    packet = encode_run(
        1, command=1, offset=0, size=4, bindings=[7] * n, writable=[False] * n, sizes=[8] * n
    )
    assert len(packet) <= 1 << 16
    with pytest.raises(WireError, match="at most"):
        encode_run(
            1,
            command=1,
            offset=0,
            size=4,
            bindings=[7] * (n + 1),
            writable=[False] * (n + 1),
            sizes=[8] * (n + 1),
        )
