"""Engines as the scheduler reports and chooses them: utilisation that counts running work,
and placement on the engine that frees up soonest."""

from __future__ import annotations

import pytest

from npud.core.job import JobState
from npud.core.policy import SchedClass
from tests.core.harness import make_bed

LONG = 600.0  # the job npuctl showed at 0.0 % while it ran


def test_an_engine_running_a_long_job_reads_busy_before_the_job_finishes() -> None:
    """A 600 s job on core0 makes core0 100 % busy over the window while it runs (busy time
    = finished + elapsed running), and the lifetime utilisation grows with it."""
    bed = make_bed()
    ctx = bed.context()
    queue = bed.queue(ctx, SchedClass.LATENCY)
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
    bed = make_bed()
    window = bed.scheduler.policy.share_window_s
    ctx = bed.context()
    queue = bed.queue(ctx, SchedClass.LATENCY)
    bed.burn(ctx, queue, 10 * window, engine=1, timeout_s=100 * window)
    bed.clock.advance(window / 2)
    started = bed.scheduler.statistics().engines[1]
    assert started.recent_utilisation == pytest.approx(0.5, abs=0.01)
    bed.clock.run_until_idle()
    bed.clock.advance(window / 4)
    after = bed.scheduler.statistics().engines[1]
    assert after.recent_utilisation == pytest.approx(0.75, abs=0.01)
