"""Faults a board produces in the field, injected into a running daemon: a hung engine, a
failing job, out-of-memory, a lost device (its process SIGKILLed, or lost by injection) and a
client SIGKILLed in the middle of a submit stream. Each time the faulty party gets a precise
error, everyone else carries on, and nothing leaks."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import grpc
import pytest

import npud.client
from npud.client import JobSpec, JobState, SchedulingClass
from npud.errors import DeviceLost, NotFound, OutOfDeviceMemory
from npud.isa import Program
from npud.testing.daemon import DaemonProcess
from npud.v1 import admin_pb2, types_pb2
from tests.reliability.harness import (
    NOBODY,
    Actor,
    Admin,
    children,
    eventually,
    own_daemon,
    record,
)
from tests.reliability.leaks import Baseline, assert_back

pytestmark = pytest.mark.slow


def _burn(seconds: float) -> bytes:
    return Program().burn(seconds).encode()


def _stats(root: npud.client.Client) -> npud.client.types.DeviceStats:
    return root.stats().devices[0]


def test_hung_engine_is_reset_by_the_watchdog_and_the_rest_continue(
    shared: DaemonProcess, root: npud.client.Client, admin: Admin, base: Baseline
) -> None:
    """A job that hangs its engine is TIMED_OUT by npud's watchdog, the engine is reset (and
    the daemon logs the reset as a device.health event), and the other jobs (its neighbours
    and another client's) all complete."""
    engines = len(root.device("sim0").engines)
    resets = _stats(root).device_resets
    admin.inject(admin_pb2.FAULT_KIND_HANG, engine=0)
    with npud.client.connect(shared.socket) as victim, npud.client.connect(shared.socket) as other:
        vctx = victim.create_context(label="hang-victim")
        vq = victim.create_queue(vctx, SchedulingClass.LATENCY, in_order=False)
        # one job per engine, overlapping, so one of them lands on the hung engine 0
        jobs = victim.submit_many(
            vctx, [JobSpec(vq, _burn(0.05), timeout_s=0.5, kind="hang")] * engines
        )
        octx = other.create_context(label="bystander")
        oq = other.create_queue(octx)
        theirs = other.submit_many(octx, [JobSpec(oq, _burn(0.005), kind="by")] * 20)
        ended = [victim.wait(vctx, j, timeout_s=30) for j in jobs]
        states = sorted(j.state.value for j in ended)
        assert states == ["completed"] * (engines - 1) + ["timed_out"], ended
        [hung] = [j for j in ended if j.state is JobState.TIMED_OUT]
        assert hung.error is not None
        assert hung.error.kind == "JobTimedOut"
        assert "reset" in hung.error.message
        assert all(other.wait(octx, j, timeout_s=30).state is JobState.COMPLETED for j in theirs)
        after = victim.submit(vctx, JobSpec(vq, _burn(0.001)))
        assert victim.wait(vctx, after, timeout_s=30).state is JobState.COMPLETED
    assert _stats(root).device_resets == resets + 1
    record("fault_hang_resets", _stats(root).device_resets - resets)
    health = [line for line in shared.log().splitlines() if "device.health" in line]
    assert any("resetting" in line and "timeout" in line for line in health), health[-5:]
    assert_back(shared, root, base)


def test_job_error_fails_only_that_job(
    shared: DaemonProcess, root: npud.client.Client, admin: Admin, base: Baseline
) -> None:
    """An injected job error fails exactly the next job with JobFailed; the next one runs."""
    admin.inject(admin_pb2.FAULT_KIND_JOB_ERROR, any_engine=True, message="ECC error (injected)")
    with npud.client.connect(shared.socket) as npu:
        ctx = npu.create_context(label="job-error")
        q = npu.create_queue(ctx)
        first = npu.wait(ctx, npu.submit(ctx, JobSpec(q, _burn(0.001))), timeout_s=30)
        assert first.state is JobState.FAILED
        assert first.error is not None
        assert "ECC error" in first.error.message
        second = npu.wait(ctx, npu.submit(ctx, JobSpec(q, _burn(0.001))), timeout_s=30)
        assert second.state is JobState.COMPLETED
    assert_back(shared, root, base)


def test_out_of_memory_is_precise_and_transient_oom_is_absorbed(
    shared: DaemonProcess, root: npud.client.Client, admin: Admin, base: Baseline
) -> None:
    """A buffer no tier can hold is RESOURCE_EXHAUSTED at creation with a message naming the
    budget; allocations the device refuses for a while stage the buffer and hold its job,
    which runs (once, contents intact) when the device allocates again, even with nothing
    else running; no state is left half-made."""
    dram = next(t.capacity_bytes for t in root.device("sim0").tiers if t.tier.value == "dram")
    with npud.client.connect(shared.socket) as npu:
        ctx = npu.create_context(label="oom")
        too_big = (dram + 4096, 1 << 62)
        for size in too_big:
            with pytest.raises(OutOfDeviceMemory, match="can never fit"):
                npu.create_buffer(ctx, size)
        assert npu.buffers(ctx) == []

        admin.inject(admin_pb2.FAULT_KIND_OUT_OF_MEMORY, tier=types_pb2.MEMORY_TIER_DRAM, count=8)
        q = npu.create_queue(ctx, in_order=False)
        staged = npu.create_buffer(ctx, 1 << 20)
        assert staged.resident_tier is None  # the device refused: staged in host memory
        npu.write_buffer(ctx, staged, b"\7" * (1 << 20))
        job = npu.submit(
            ctx,
            JobSpec(q, _burn(0.001), (npud.client.Bind(staged, npud.client.Access.READ),)),
        )
        # nothing else runs: the scheduler's idle retry places the buffer once the device
        # allocates again, with no other event needed
        assert npu.wait(ctx, job, timeout_s=30).state is JobState.COMPLETED
        assert npu.read_buffer(ctx, staged) == b"\7" * (1 << 20)
    record("fault_oom_cases", len(too_big) + 1)
    assert_back(shared, root, base)


def test_client_sigkilled_mid_stream_leaves_nothing(
    shared: DaemonProcess, root: npud.client.Client, base: Baseline
) -> None:
    """A client SIGKILLed with a submit stream open and jobs in flight loses its contexts
    after the session grace; another client's stream keeps running; fds return to baseline."""
    victim = Actor(shared.socket, NOBODY)
    try:
        ctx = victim.ok("create_context", label="stream-victim")["context_id"]
        q = victim.ok("create_queue", ctx)["queue_id"]
        first = victim.send(op="stream", ctx=ctx, queue=q, seconds=0.09, n=12)
        assert first["ok"], first
        with npud.client.connect(shared.socket) as other:
            octx = other.create_context(label="stream-bystander")
            oq = other.create_queue(octx, SchedulingClass.LATENCY)
            with other.submit_stream(octx) as stream:
                assert stream.run(JobSpec(oq, _burn(0.001))).ok
                victim.kill()
                results = [stream.run(JobSpec(oq, _burn(0.002))) for _ in range(10)]
            assert all(r.ok for r in results)
            other.destroy_context(octx)
    finally:
        victim.kill()

    def gone() -> bool:
        try:
            root.context(ctx)
        except NotFound:
            return True
        return False

    assert eventually(gone), "the killed client's context outlived its session grace"
    assert_back(shared, root, base)


@pytest.fixture
def fragile() -> Iterator[DaemonProcess]:
    """A daemon of its own: these tests lose its device."""
    # a slice that admits its 5 s THROUGHPUT jobs
    with own_daemon("npud-loss-", scheduler__time_slice_ms="10000") as daemon:
        yield daemon


def _seal_weights(npu: npud.client.Client, key: str, data: bytes) -> None:
    ctx = npu.create_context(label="weights")
    buf = npu.create_buffer(
        ctx,
        len(data),
        usage=npud.client.BufferUsage.WEIGHTS,
        persistence=npud.client.Persistence.PERSISTENT,
        key=key,
    )
    npu.write_buffer(ctx, buf, data, seal=True)
    npu.destroy_context(ctx)


def test_device_lost_mid_job_then_back_after_a_rescan(fragile: DaemonProcess) -> None:
    """SIGKILL of the simulated NPU's device process mid-job: its clients' jobs FAIL with
    DeviceLost, new work is UNAVAILABLE, the daemon keeps answering; a rescan re-opens a
    fresh device, closes the dead contexts (NOT_FOUND) and persistent weights are back.
    Then the same through an injected loss."""
    weights = bytes(range(256)) * 64
    lost_jobs = 0
    with npud.client.connect(fragile.socket) as root:
        admin = Admin(root)
        _seal_weights(root, "rel-weights@1", weights)
        for how in ("sigkill", "inject"):
            with npud.client.connect(fragile.socket) as npu:
                ctx = npu.create_context(label=f"loss-{how}")
                q = npu.create_queue(ctx, in_order=False)
                jobs = npu.submit_many(ctx, [JobSpec(q, _burn(5.0), timeout_s=30)] * 4)
                assert npu.job(ctx, jobs[0]).state in (JobState.RUNNING, JobState.READY)
                if how == "sigkill":
                    [device_process] = children(fragile.proc.pid)
                    os.kill(device_process, signal.SIGKILL)
                else:
                    admin.inject(admin_pb2.FAULT_KIND_DEVICE_LOSS, message="unplugged")
                ended = [npu.wait(ctx, j, timeout_s=30) for j in jobs]
                assert {j.state for j in ended} == {JobState.FAILED}
                assert all(j.error is not None and j.error.kind == "DeviceLost" for j in ended)
                lost_jobs += len(ended)
                with pytest.raises(DeviceLost) as err:
                    npu.submit(ctx, JobSpec(q, _burn(0.001)))
                assert "lost" in str(err.value)
                for _ in range(20):  # each inline stream asks for a command buffer
                    with pytest.raises(DeviceLost):
                        npu.submit(ctx, JobSpec(q, _burn(0.001)))
                assert eventually(lambda: npu.buffers(ctx) == []), npu.buffers(ctx)  # noqa: B023
                assert npu.version()  # the daemon itself is fine
                assert npu.device("sim0").health.value == "lost"

                report = admin.rescan()
                assert list(report.reopened) == ["sim0"]
                assert npu.device("sim0").health.value == "ok"
                with pytest.raises(NotFound):
                    npu.context(ctx)
                again = npu.create_context(label="after")
                q2 = npu.create_queue(again)
                job = npu.submit(again, JobSpec(q2, _burn(0.001)))
                assert npu.wait(again, job, timeout_s=30).state is JobState.COMPLETED
                shared_w = npu.open_persistent(again, "rel-weights@1")
                assert npu.read_buffer(again, shared_w) == weights
        with pytest.raises(grpc.RpcError) as nothing:
            admin.inject(admin_pb2.FAULT_KIND_UNSPECIFIED)
        assert nothing.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        admin.close()
    assert fragile.proc.poll() is None
    record("fault_device_losses_survived", 2)
    record("fault_device_loss_jobs_failed_precisely", lost_jobs)
