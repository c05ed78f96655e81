"""Decode loops that keep every engine busy, beside a prefill: throughput gets its share, no more.

The scene of ``bench/decode.py`` on virtual time: four decode loops (LATENCY, in-order queues,
two steps in flight, a step 28 ms) on the three engines of rk3588, and one prefill loop
(THROUGHPUT, 45 ms chunks, a prompt's 15 chunks submitted at once) in another context. Four
loops on three engines already keep every engine busy, so whatever the prefill gets comes out of
decode. Under ``npud`` it gets its minimum share (10 % of device time by default); under
``fifo`` it takes an engine whenever its chunk is oldest, about a quarter of the device.
"""

from __future__ import annotations

import itertools
import statistics
from dataclasses import dataclass, field

from npud.core.job import Job
from npud.core.policy import PolicyKind, SchedulerPolicy
from npud.vocab import JobState, SchedulingClass
from tests.core.harness import Bed, make_bed

STEP = 0.028
CHUNK = 0.045
CHUNKS_PER_PROMPT = 15
RTT = 0.001  # the client's round trip between a token and its next submission


@dataclass
class _Run:
    """What one scene measured."""

    gaps: list[float] = field(default_factory=list)
    steps: list[Job] = field(default_factory=list)
    chunks: list[Job] = field(default_factory=list)
    decode_end: float = 0.0

    def prefill_share(self) -> float:
        """The prefill's part of the device time used while the decoders ran."""
        busy = sum(j.run_s or 0.0 for j in self.steps)
        chunk = sum(
            j.run_s or 0.0
            for j in self.chunks
            if j.finished_at is not None and j.finished_at <= self.decode_end
        )
        return chunk / (busy + chunk)


def _scene(policy: SchedulerPolicy | None, decoders: int, prefill: bool, steps: int = 150) -> _Run:
    bed = make_bed(policy)
    run = _Run()
    times: list[list[float]] = []
    for _ in range(decoders):
        times.append(_decoder(bed, run, steps))
    if prefill:
        _prefiller(bed, run, lambda: all(len(t) >= steps for t in times))
    bed.run()
    for t in times:
        run.gaps += [b - a for a, b in itertools.pairwise(t)]
    run.decode_end = max(t[-1] for t in times)
    return run


def _decoder(bed: Bed, run: _Run, steps: int) -> list[float]:
    """A decode loop keeping two steps submitted; returns the list its step ends go into."""
    ctx = bed.context()
    queue = bed.queue(ctx, SchedulingClass.LATENCY)
    ends: list[float] = []
    submitted = [0]

    def submit() -> None:
        if submitted[0] >= steps:
            return
        submitted[0] += 1
        [job] = bed.burn(ctx, queue, STEP, kind="decode")
        run.steps.append(job)
        job.add_done_callback(lambda _j: (ends.append(bed.clock.now()), _later(bed, submit)))

    submit()
    submit()
    return ends


def _later(bed: Bed, fn: object) -> None:
    bed.clock.call_later(RTT, fn)  # type: ignore[arg-type]


def _prefiller(bed: Bed, run: _Run, done: object) -> None:
    """Prompts back to back until ``done()``: each prompt's chunks submitted at once."""
    ctx = bed.context()
    queue = bed.queue(ctx, SchedulingClass.THROUGHPUT)

    def prompt() -> None:
        if done():  # type: ignore[operator]
            return
        jobs = bed.burn(ctx, queue, CHUNK, n=CHUNKS_PER_PROMPT, kind="prefill")
        run.chunks += jobs
        jobs[-1].add_done_callback(lambda _j: _later(bed, prompt))

    prompt()


def _mean_ms(gaps: list[float]) -> float:
    return statistics.fmean(gaps) * 1e3


def test_under_npud_a_prefill_beside_saturating_decoders_gets_its_min_share() -> None:
    """With four decode loops on three engines, npud gives the prefill about its 10 % minimum
    share and decode keeps its pace within 1.2x of the decoders alone; fifo gives the prefill
    about a quarter of the device and slows every decoder by more than that."""
    fifo = SchedulerPolicy(kind=PolicyKind.FIFO)
    alone = _scene(None, 4, prefill=False)
    npud = _scene(None, 4, prefill=True)
    base = _scene(fifo, 4, prefill=True)
    print(
        f"\nmean decode gap: alone {_mean_ms(alone.gaps):.1f} ms, with a prefill: npud "
        f"{_mean_ms(npud.gaps):.1f} ms (prefill share {npud.prefill_share():.2f}), fifo "
        f"{_mean_ms(base.gaps):.1f} ms (prefill share {base.prefill_share():.2f})"
    )
    assert all(j.state is JobState.COMPLETED for j in npud.steps + npud.chunks)
    assert 0.07 <= npud.prefill_share() <= 0.15
    assert base.prefill_share() >= 0.2
    assert statistics.fmean(npud.gaps) <= 1.2 * statistics.fmean(alone.gaps)
    assert statistics.fmean(base.gaps) >= 1.3 * statistics.fmean(alone.gaps)
    # the tail: npud's slowest gap is no worse than fifo's
    assert max(npud.gaps) <= max(base.gaps) + 1e-9


def test_a_prefill_takes_every_engine_the_decoders_leave_idle() -> None:
    """One decode loop leaves two engines idle: the prefill runs there, far above its minimum
    share, and the decode loop keeps the pace it has alone (a step never waits for a chunk)."""
    alone = _scene(None, 1, prefill=False)
    loaded = _scene(None, 1, prefill=True)
    assert loaded.prefill_share() > 0.3
    assert max(loaded.gaps) <= max(alone.gaps) + 1e-9
    assert all(j.queue_wait_s is not None for j in loaded.steps)
