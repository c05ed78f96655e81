"""Scheduler invariants: a state machine over submit / cancel / close / faults / time on the sim.

Whatever happens, every job reaches exactly one terminal state, exactly once (its done
callbacks run once), nothing is lost (live counts match), an in-order queue starts a job only
after every job before it has ended (although its latency jobs may reach the device earlier),
and a closed context leaves no trace in any statistic.
"""

from __future__ import annotations

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from npud.core.context import Context, ContextQuotas, ContextState
from npud.core.job import Job
from npud.core.queue import Queue
from npud.errors import DeviceLost, FailedPrecondition, QueueFull, QuotaExceeded
from npud.vocab import TERMINAL_STATES, JobState, SchedulingClass
from tests.core.harness import ALICE, make_bed

DURATIONS = (0.0005, 0.002, 0.006)
CLASSES = (SchedulingClass.LATENCY, SchedulingClass.THROUGHPUT, SchedulingClass.BACKGROUND)


class SchedulerMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.bed = make_bed()
        self.contexts: list[Context] = []
        self.queues: dict[str, list[Queue]] = {}
        self.jobs: list[Job] = []
        self.calls: dict[str, int] = {}
        self.closed: list[str] = []
        self.closing: set[str] = set()
        self.lost = False

    def _done(self, job: Job) -> None:
        assert job.state in TERMINAL_STATES
        self.calls[job.id] = self.calls.get(job.id, 0) + 1

    @precondition(lambda self: len(self.contexts) < 4 and not self.lost)
    @rule(in_order=st.booleans())
    def open_context(self, in_order: bool) -> None:
        ctx = self.bed.context(quotas=ContextQuotas(max_queued_jobs=12))
        self.contexts.append(ctx)
        self.queues[ctx.id] = [
            self.bed.queue(ctx, cls, in_order=in_order, depth_limit=6) for cls in CLASSES
        ]

    @precondition(lambda self: any(c.open for c in self.contexts))
    @rule(
        data=st.data(),
        cls=st.integers(0, 2),
        seconds=st.sampled_from(DURATIONS),
        n=st.integers(1, 3),
        with_dep=st.booleans(),
    )
    def submit(self, data: st.DataObject, cls: int, seconds: float, n: int, with_dep: bool) -> None:
        ctx = data.draw(st.sampled_from([c for c in self.contexts if c.open]))
        queue = self.queues[ctx.id][cls]
        mine = [j for j in self.jobs if j.context_id == ctx.id]
        deps = (data.draw(st.sampled_from(mine)).id,) if with_dep and mine else ()
        try:
            jobs = self.bed.burn(ctx, queue, seconds, n=n, depends_on=deps)
        except (QueueFull, QuotaExceeded, DeviceLost, FailedPrecondition):
            return
        for job in jobs:
            job.add_done_callback(self._done)
        self.jobs.extend(jobs)

    @precondition(lambda self: bool(self.jobs))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        job = data.draw(st.sampled_from(self.jobs))
        was_done = job.done
        result = self.bed.scheduler.cancel(job)
        assert result is not was_done
        assert job.done

    @precondition(lambda self: any(c.open for c in self.contexts))
    @rule(data=st.data(), grace=st.sampled_from((0.0, 0.004)))
    def close_context(self, data: st.DataObject, grace: float) -> None:
        ctx = data.draw(st.sampled_from([c for c in self.contexts if c.open]))
        self.closing.add(ctx.id)
        self.bed.core.destroy_context(
            ALICE, ctx.id, grace_s=grace, on_closed=lambda c: self.closed.append(c.id)
        )
        for job in self.jobs:
            if job.context_id == ctx.id:
                assert job.done or job.on_device  # nothing queued survives a close

    @rule(engine=st.integers(0, 2), kind=st.sampled_from(("hang", "error")))
    def inject(self, engine: int, kind: str) -> None:
        if kind == "hang":
            self.bed.device.inject_hang(engine)
        else:
            self.bed.device.inject_job_error(engine, "injected")

    @precondition(lambda self: not self.lost and len(self.jobs) > 10)
    @rule()
    def lose_device(self) -> None:
        self.lost = True
        self.bed.device.lose("injected loss")

    @rule(dt=st.sampled_from((0.0005, 0.003, 0.02, 0.3)))
    def advance(self, dt: float) -> None:
        self.bed.clock.advance(dt)

    @invariant()
    def each_job_ends_once_and_nothing_is_lost(self) -> None:
        live = 0
        for job in self.jobs:
            calls = self.calls.get(job.id, 0)
            if job.done:
                assert calls == 1, (job.id, job.state, calls)
                assert job.finished_at is not None
            else:
                assert calls == 0
                live += 1
        stats = self.bed.scheduler.statistics()
        assert sum(c.queued + c.ready + c.running for c in stats.classes) == live
        assert sum(stats.ended.values()) == len(self.jobs) - live

    @invariant()
    def an_in_order_queue_starts_a_job_only_after_its_predecessors_ended(self) -> None:
        by_queue: dict[str, list[Job]] = {}
        for job in self.jobs:
            if job.queue.in_order:
                by_queue.setdefault(job.queue.id, []).append(job)
        for jobs in by_queue.values():
            for i, job in enumerate(jobs):
                if job.started_at is None:
                    continue
                for earlier in jobs[:i]:
                    assert earlier.done, (earlier.id, earlier.state, job.id)
                    assert earlier.finished_at is not None
                    assert earlier.finished_at <= job.started_at + 1e-12, (earlier.id, job.id)

    def teardown(self) -> None:
        bed = self.bed
        bed.run(limit=bed.clock.now() + 60.0)
        for job in self.jobs:
            assert job.done
            assert self.calls.get(job.id) == 1
            assert job.state is not JobState.QUEUED
        bed.core.close_all(grace_s=0.0)
        bed.run(limit=bed.clock.now() + 60.0)
        assert set(self.closed) == self.closing  # each close by the rule completed once
        assert len(self.closed) == len(self.closing)
        assert all(c.state is ContextState.CLOSED for c in self.contexts)
        stats = bed.core.statistics()
        text = repr(stats)
        for ctx in self.contexts:
            assert ctx.id not in text
            assert bed.core.device().residency.context_usage(ctx.id) == 0
        assert stats.contexts == 0
        report = stats.device("sim0")
        assert report.scheduler.contexts == 0
        assert all(e.in_flight == 0 for e in report.scheduler.engines)
        assert report.residency.buffers == 0


SchedulerMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestSchedulerMachine = SchedulerMachine.TestCase
