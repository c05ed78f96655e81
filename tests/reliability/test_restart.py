"""The daemon SIGKILLed under load and restarted: clients get a clear error for what was in
flight, reconnect and carry on; persistent registrations are back; nothing goes unaccounted."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

import npud.client
from npud.client import BufferUsage, JobSpec, JobState, Persistence, SchedulingClass
from npud.errors import NotFound, NpudError, Unauthenticated
from npud.isa import Program
from tests.reliability.harness import eventually, launch, record, restart, world_reachable_dir

pytestmark = pytest.mark.slow

CLASSES = (SchedulingClass.LATENCY, SchedulingClass.THROUGHPUT, SchedulingClass.BACKGROUND)
BATCH = 4


@dataclass
class Worker:
    """One client process-alike: submits batches, waits each job, reconnects after errors."""

    socket: Path
    sched_class: SchedulingClass
    phase: int = 0  # 0 before the crash, 1 after the restart (set by the test)
    completed: list[int] = field(default_factory=lambda: [0, 0])
    submitted: int = 0
    accounted: int = 0  # jobs whose end the client learnt: completed, or an error told it
    errors: list[tuple[str, str]] = field(default_factory=list)

    def run(self, stop: threading.Event) -> None:
        burn = Program().burn(0.003).encode()
        while not stop.is_set():
            try:
                with npud.client.connect(self.socket) as npu:
                    ctx = npu.create_context(label="restart-load")
                    q = npu.create_queue(ctx, self.sched_class)
                    while not stop.is_set():
                        jobs = npu.submit_many(ctx, [JobSpec(q, burn, kind="load")] * BATCH)
                        self.submitted += len(jobs)
                        for left, job in zip(range(len(jobs), 0, -1), jobs, strict=True):
                            try:
                                done = npu.wait(ctx, job, timeout_s=30)
                            except NpudError:
                                self.accounted += left  # the error covers the rest of the batch
                                raise
                            assert done.state is JobState.COMPLETED, done
                            self.completed[self.phase] += 1
                            self.accounted += 1
            except NpudError as exc:
                self.errors.append((type(exc).__name__, str(exc)))
                stop.wait(0.05)  # back off before reconnecting


@pytest.fixture
def workdir() -> Iterator[Path]:
    with world_reachable_dir("npud-restart-") as tmp:
        yield tmp


def test_sigkill_and_restart_under_load(workdir: Path) -> None:
    """Four clients of mixed classes keep submitting while npud is SIGKILLed and restarted:
    each gets UNAVAILABLE for its in-flight work, reconnects and completes more jobs; an old
    token is UNAUTHENTICATED saying the daemon restarted; old context ids are NOT_FOUND; the
    sealed persistent buffer opens again with the same bytes; every job is accounted for."""
    daemon = launch(workdir)
    weights = bytes(range(256)) * 256
    stale = npud.client.connect(daemon.socket)
    old_ctx = stale.create_context(label="before")
    buf = stale.create_buffer(
        old_ctx,
        len(weights),
        usage=BufferUsage.WEIGHTS,
        persistence=Persistence.PERSISTENT,
        key="restart-weights@1",
    )
    stale.write_buffer(old_ctx, buf, weights, seal=True)

    workers = [Worker(daemon.socket, CLASSES[i % 3]) for i in range(4)]
    stop = threading.Event()
    threads = [threading.Thread(target=w.run, args=(stop,), daemon=True) for w in workers]
    for t in threads:
        t.start()
    try:
        assert eventually(lambda: all(w.completed[0] >= 10 for w in workers), 60)
        daemon.proc.kill()
        daemon.proc.wait(30)
        daemon = restart(daemon, workdir)
        for w in workers:
            w.phase = 1
        assert eventually(lambda: all(w.completed[1] >= 10 for w in workers), 60), [
            (w.completed, w.errors[-1:]) for w in workers
        ]
    finally:
        stop.set()
        for t in threads:
            t.join(60)
    try:
        for w in workers:
            assert w.errors, "a client saw no error although the daemon died under it"
            kind, message = w.errors[0]
            assert kind == "Unavailable", w.errors[0]
            assert message, w.errors
            assert {k for k, _ in w.errors} <= {"Unavailable", "Unauthenticated"}, w.errors
            assert w.accounted == w.submitted, (w.accounted, w.submitted)

        with pytest.raises(Unauthenticated, match="restarted"):
            stale.context(old_ctx)
        stale.close()
        with npud.client.connect(daemon.socket) as fresh:
            with pytest.raises(NotFound):
                fresh.context(old_ctx)
            ctx = fresh.create_context(label="after")
            back = fresh.open_persistent(ctx, "restart-weights@1")
            assert back.size == len(weights)
            assert fresh.read_buffer(ctx, back) == weights
            fresh.destroy_context(ctx)
        done = sum(sum(w.completed) for w in workers)
        record("restart_clients", len(workers))
        record("restart_jobs_completed", done)
        record("restart_jobs_reported_lost", sum(w.submitted for w in workers) - done)
        record("restart_jobs_unaccounted", 0)
    finally:
        assert daemon.stop() == 0, daemon.log()[-4000:]
