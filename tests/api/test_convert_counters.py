"""Per-queue and per-context job figures on the wire: how many jobs were admitted and how they
ended, and the wait and run times of their recent jobs, from core's snapshots through the
client's types."""

from __future__ import annotations

import pytest

from npud.api.convert import context_to_wire, queue_to_wire
from npud.client.types import Context as ClientContext
from npud.client.types import Queue as ClientQueue
from npud.v1 import types_pb2
from npud.vocab import JobState, SchedulingClass
from tests.core.harness import ALICE, make_bed


def test_queues_and_contexts_carry_their_own_job_counts_and_durations() -> None:
    """Two queues of one context: each queue reports only its own jobs (submitted, ended by
    state, wait and run distributions), and the context reports all of them with its device
    time; the client reads the same numbers back."""
    bed = make_bed()
    ctx = bed.context()
    fast = bed.queue(ctx, SchedulingClass.LATENCY)
    slow = bed.queue(ctx, SchedulingClass.THROUGHPUT)
    bed.burn(ctx, fast, 0.002, n=3)
    bed.burn(ctx, slow, 0.02, n=2)
    bed.run()
    bed.device.inject_job_error(message="bad op")
    bed.burn(ctx, slow, 0.02)
    bed.run()

    q_fast, q_slow = queue_to_wire(fast), queue_to_wire(slow)
    assert (q_fast.submitted, q_slow.submitted) == (3, 3)
    assert {(c.state, c.count) for c in q_fast.ended} == {(types_pb2.JOB_STATE_COMPLETED, 3)}
    assert {(c.state, c.count) for c in q_slow.ended} == {
        (types_pb2.JOB_STATE_COMPLETED, 2),
        (types_pb2.JOB_STATE_FAILED, 1),
    }
    assert q_fast.run.count == 3
    assert q_fast.run.p50_s == pytest.approx(0.002, rel=0.05)
    assert q_slow.run.p50_s == pytest.approx(0.02, rel=0.05)
    assert q_fast.wait.count == 3
    assert q_fast.wait.max_s >= 0.0

    c = context_to_wire(bed.core, ctx, admin=False)
    assert c.submitted == 6
    assert sum(x.count for x in c.ended) == 6
    assert c.run.count == q_fast.run.count + q_slow.run.count
    assert c.run.max_s == pytest.approx(max(q_fast.run.max_s, q_slow.run.max_s))
    assert c.device_time_s == pytest.approx(ctx.device_time_s)
    assert c.device_time_s > 2 * 0.02 + 3 * 0.002 - 1e-9

    client_q = ClientQueue.from_wire(q_slow)
    assert client_q.submitted == 3
    assert client_q.ended == {JobState.COMPLETED: 2, JobState.FAILED: 1}
    assert client_q.run.p50_s == q_slow.run.p50_s
    client_c = ClientContext.from_wire(c)
    assert client_c.ended[JobState.COMPLETED] == 5
    assert client_c.wait.count == c.wait.count
    assert client_c.device_time_s == c.device_time_s
    assert ALICE.uid == client_c.owner.uid
