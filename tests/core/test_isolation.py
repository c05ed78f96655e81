"""Isolation: a LATENCY job waits for at most one throughput job, not for the backlog."""

from __future__ import annotations

from npud.core.job import Job
from npud.core.policy import PolicyKind, SchedulerPolicy
from npud.vocab import JobState, SchedulingClass
from tests.core.harness import Bed, make_bed

T = 0.010  # the duration of one throughput job
FLOOD = 60  # jobs per flooding context


def _flood_then_decode(bed: Bed, steps: int = 1, gap: float = 0.002) -> list[Job]:
    """Four contexts flood THROUGHPUT; later a fifth runs ``steps`` decode steps in a row."""
    for _ in range(4):
        ctx = bed.context()
        queue = bed.queue(ctx, SchedulingClass.THROUGHPUT, in_order=False)
        bed.burn(ctx, queue, T, n=FLOOD)
    # a long throughput-only stretch (deep queues), arriving mid-way through running jobs
    bed.clock.advance(0.5 * T * FLOOD + 0.4 * T)
    decoder = bed.context()
    lat = bed.queue(decoder, SchedulingClass.LATENCY)
    done: list[Job] = []

    def step(_: Job | None = None) -> None:
        if len(done) == steps:
            return
        [job] = bed.burn(decoder, lat, 0.001, kind="decode")
        done.append(job)
        job.add_done_callback(lambda j: bed.clock.call_later(gap, step))

    step()
    bed.run()
    return done


def test_latency_job_waits_at_most_one_throughput_job_and_fifo_waits_for_the_backlog() -> None:
    """Under a 4-context THROUGHPUT flood a LATENCY job waits <= T + launch; fifo waits more."""
    npud = make_bed()
    [job] = _flood_then_decode(npud)
    fifo = make_bed(SchedulerPolicy(kind=PolicyKind.FIFO))
    [base] = _flood_then_decode(fifo)
    wait, base_wait = job.queue_wait_s, base.queue_wait_s
    assert wait is not None
    assert base_wait is not None
    print(f"\nLATENCY job wait under a 4x{FLOOD} flood of {T * 1e3:.0f} ms jobs: ")
    print(f"  npud policy: {wait * 1e3:.3f} ms   fifo policy: {base_wait * 1e3:.3f} ms")
    assert job.state is JobState.COMPLETED
    assert base.state is JobState.COMPLETED
    assert wait <= T + npud.launch_s + 1e-9
    remaining = 4 * FLOOD * T / fifo.engines - 0.5 * T * FLOOD - 0.4 * T
    assert base_wait >= 0.9 * remaining  # the whole backlog still queued on the engines
    assert npud.scheduler.statistics().recalls > 0  # deep queues were recalled for it


def test_every_decode_step_of_a_loop_waits_at_most_one_throughput_job() -> None:
    """A decode loop interleaved with a flood: every step waits <= T + launch overhead."""
    bed = make_bed()
    steps = _flood_then_decode(bed, steps=25)
    waits = [j.queue_wait_s for j in steps]
    assert all(j.state is JobState.COMPLETED for j in steps)
    assert all(w is not None and w <= T + bed.launch_s + 1e-9 for w in waits), waits
    stats = bed.scheduler.statistics()
    assert stats.ended == {"completed": 4 * 60 + 25}
