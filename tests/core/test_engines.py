"""Engines as the scheduler reports and chooses them: utilisation that counts running work,
and placement on the engine that frees up soonest."""

from __future__ import annotations

import pytest

from npud.core.limits import Limits
from npud.core.service import CoreLimits
from npud.vocab import JobState, SchedulingClass
from tests.core.harness import make_bed

LONG = 600.0  # the job npuctl showed at 0.0 % while it ran
# an operator who allows jobs this long raises the timeout ceilings
LONG_JOBS = CoreLimits(bounds=Limits(timeout_ceilings=dict.fromkeys(SchedulingClass, 2 * LONG)))


def test_an_engine_running_a_long_job_reads_busy_before_the_job_finishes() -> None:
    """A 600 s job on core0 makes core0 100 % busy over the window while it runs (busy time
    = finished + elapsed running), and the lifetime utilisation grows with it."""
    bed = make_bed(limits=LONG_JOBS)
    ctx = bed.context()
    queue = bed.queue(ctx, SchedulingClass.LATENCY)
    [job] = bed.burn(ctx, queue, LONG, engine=0, timeout_s=2 * LONG)
    window = bed.scheduler.policy.share_window_s
    bed.clock.advance(10.0)
    assert job.state is JobState.RUNNING
    engines = bed.scheduler.statistics().engines
    assert engines[0].recent_utilisation == pytest.approx(1.0)
    assert engines[0].running_s == pytest.approx(10.0, abs=0.01)
    assert engines[0].utilisation == pytest.approx(1.0, abs=0.01)
    assert engines[0].busy_s == 0.0  # nothing has finished yet
    assert [e.recent_utilisation for e in engines[1:]] == [0.0, 0.0]
    assert [e.running_s for e in engines[1:]] == [0.0, 0.0]
    bed.clock.advance(LONG)  # well past its end: idle for ~10 s now
    engines = bed.scheduler.statistics().engines
    assert job.state is JobState.COMPLETED
    assert engines[0].running_s == 0.0
    assert engines[0].recent_utilisation == 0.0  # the run ended before the window
    assert engines[0].busy_s == pytest.approx(LONG, rel=1e-3)
    assert window < 10.0


def test_recent_utilisation_counts_only_the_part_of_a_run_inside_the_window() -> None:
    """A job that started half a window ago counts half; a finished run that began before the
    window counts only from the window's start, so the fraction never exceeds the truth."""
    bed = make_bed(limits=LONG_JOBS)
    window = bed.scheduler.policy.share_window_s
    ctx = bed.context()
    queue = bed.queue(ctx, SchedulingClass.LATENCY)
    bed.burn(ctx, queue, 10 * window, engine=1, timeout_s=100 * window)
    bed.clock.advance(window / 2)
    started = bed.scheduler.statistics().engines[1]
    assert started.recent_utilisation == pytest.approx(0.5, abs=0.01)
    bed.clock.run_until_idle()
    bed.clock.advance(window / 4)
    after = bed.scheduler.statistics().engines[1]
    assert after.recent_utilisation == pytest.approx(0.75, abs=0.01)


def test_a_latency_job_lands_on_the_engine_that_frees_up_first() -> None:
    """Three engines busy with jobs ending at different times: a latency job goes to the one
    whose remaining work is smallest (engine 0, started first), not the one with the least
    work charged (engine 1) nor the next in a rotation."""
    bed = make_bed()
    ctx = bed.context()
    busy = bed.queue(ctx, SchedulingClass.THROUGHPUT, in_order=False)
    for engine, seconds in ((0, 0.030), (1, 0.010), (2, 0.050)):
        bed.scheduler.estimator.set_prior(f"busy{engine}", seconds)
    bed.burn(ctx, busy, 0.030, engine=0, kind="busy0")  # ends at ~30 ms
    bed.clock.advance(0.025)
    bed.burn(ctx, busy, 0.010, engine=1, kind="busy1")  # ends at ~35 ms
    bed.burn(ctx, busy, 0.050, engine=2, kind="busy2")  # ends at ~75 ms
    bed.clock.advance(0.001)
    lat = bed.queue(ctx, SchedulingClass.LATENCY)
    [probe] = bed.burn(ctx, lat, 0.001, kind="probe")
    assert probe.engine == 0
    bed.run()
    assert probe.state is JobState.COMPLETED
    assert probe.queue_wait_s is not None
    assert probe.queue_wait_s < 0.006  # waited for engine 0's last ~4 ms, not engine 1's 9


def test_two_short_jobs_in_flight_beat_one_long_one() -> None:
    """An engine with two short jobs queued frees up before one running a long job: the
    remaining work decides, not how many jobs are in flight."""
    bed = make_bed()
    ctx = bed.context()
    busy = bed.queue(ctx, SchedulingClass.THROUGHPUT, in_order=False)
    bed.scheduler.estimator.set_prior("short", 0.002)
    bed.scheduler.estimator.set_prior("long", 0.050)
    bed.burn(ctx, busy, 0.002, engine=0, kind="short", n=2)
    bed.burn(ctx, busy, 0.050, engine=1, kind="long")
    bed.burn(ctx, busy, 0.050, engine=2, kind="long")
    [probe] = bed.burn(ctx, bed.queue(ctx, SchedulingClass.LATENCY), 0.001, kind="probe")
    assert probe.engine == 0


def test_an_idle_engine_is_chosen_before_any_busy_one() -> None:
    """With one engine idle, a job goes there even if a busy engine is about to free up."""
    bed = make_bed()
    ctx = bed.context()
    busy = bed.queue(ctx, SchedulingClass.THROUGHPUT, in_order=False)
    for engine, seconds in ((0, 0.030), (2, 0.0011)):
        bed.scheduler.estimator.set_prior(f"busy{engine}", seconds)
        bed.burn(ctx, busy, seconds, engine=engine, kind=f"busy{engine}")
    bed.clock.advance(0.001)
    [probe] = bed.burn(ctx, bed.queue(ctx, SchedulingClass.LATENCY), 0.001, kind="probe")
    assert probe.engine == 1


def test_the_record_of_recent_runs_is_bounded_without_anyone_reading_statistics() -> None:
    """A Core that nobody asks for statistics (no daemon status loop) keeps only one window of
    finished runs per engine: runs are forgotten as new ones are recorded, so a long-lived
    scheduler's memory does not grow with the number of jobs it has run."""
    bed = make_bed()
    window = bed.scheduler.policy.share_window_s
    ctx = bed.context()
    queue = bed.queue(ctx, SchedulingClass.LATENCY)
    step = window / 8
    for _ in range(80):  # ten windows of jobs, one every eighth of a window
        bed.burn(ctx, queue, step / 4, engine=0)
        bed.clock.advance(step)
    recent = bed.scheduler._engines[0].recent
    assert 0 < len(recent) <= 9
    assert recent[-1][0] - recent[0][0] <= window
