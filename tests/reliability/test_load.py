"""Load: many clients submitting jobs of every class at once (the rknn-llm #315 situation:
concurrent submitters must not hang the board). Every job completes exactly once."""

from __future__ import annotations

import threading
import time
from collections import Counter

import pytest

import npud.client
from npud.client import JobSpec, JobState, SchedulingClass
from npud.isa import Program
from npud.testing.daemon import DaemonProcess
from tests.reliability.harness import record
from tests.reliability.leaks import Baseline, assert_back, difference

pytestmark = pytest.mark.slow

CLIENTS = 8
JOBS = 200
BATCH = 25
MIX = (
    (SchedulingClass.LATENCY, "decode", 0.0005),
    (SchedulingClass.THROUGHPUT, "prefill", 0.002),
    (SchedulingClass.BACKGROUND, "background", 0.001),
)


def _client(daemon: DaemonProcess, index: int, out: dict[str, str], errors: list[str]) -> None:
    try:
        with npud.client.connect(daemon.socket) as npu:
            ctx = npu.create_context(label=f"load-{index}")
            queues = [npu.create_queue(ctx, cls) for cls, _, _ in MIX]
            programs = [Program().burn(s).encode() for _, _, s in MIX]
            for start in range(0, JOBS, BATCH):
                specs = [
                    JobSpec(
                        queues[(start + i) % 3],
                        programs[(start + i) % 3],
                        kind=MIX[(start + i) % 3][1],
                    )
                    for i in range(BATCH)
                ]
                for job in npu.submit_many(ctx, specs):
                    done = npu.wait(ctx, job, timeout_s=60)
                    out[done.job_id] = done.state.value
            npu.destroy_context(ctx)
    except Exception as exc:  # reported by the test, with the client's index
        errors.append(f"client {index}: {exc!r}")


def test_clients_times_jobs_of_mixed_classes_each_complete_exactly_once(
    shared: DaemonProcess, root: npud.client.Client, base: Baseline
) -> None:
    """8 clients x 200 jobs (LATENCY, THROUGHPUT, BACKGROUND interleaved) all complete; the
    daemon's one canonical log line per finished job appears exactly once per job id; the
    daemon returns to its baseline of contexts, buffers and fds afterwards."""
    results: list[dict[str, str]] = [{} for _ in range(CLIENTS)]
    errors: list[str] = []
    threads = [
        threading.Thread(target=_client, args=(shared, i, results[i], errors))
        for i in range(CLIENTS)
    ]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    elapsed = time.monotonic() - started
    assert not errors, errors
    ours = {job: state for r in results for job, state in r.items()}
    assert len(ours) == CLIENTS * JOBS
    assert set(ours.values()) == {JobState.COMPLETED.value}
    finished = Counter(
        rec["job"] for rec in shared.log_events("job.finished") if rec.get("job") in ours
    )
    assert set(finished) == set(ours), "a job ended without its canonical log line"
    assert set(finished.values()) == {1}, [j for j, n in finished.items() if n != 1]
    outcomes = {
        rec["outcome"] for rec in shared.log_events("job.finished") if rec.get("job") in ours
    }
    assert outcomes == {"completed"}
    record("load_clients", CLIENTS)
    record("load_jobs_per_client", JOBS)
    record("load_jobs_completed_once", sum(finished.values()))
    record("load_jobs_lost", CLIENTS * JOBS - len(finished))
    record("load_seconds", round(elapsed, 1))
    after = assert_back(shared, root, base)
    record("leaks_after_load", difference(after, base))
