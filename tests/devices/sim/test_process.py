"""Process mode: the device process computes on shared memory and its death is device loss."""

from __future__ import annotations

import asyncio
import os
import signal

import numpy as np
import pytest

from npud.devices.base import (
    Binding,
    BufferUse,
    Completion,
    DeviceBuffer,
    Submission,
    SubmitToken,
    submit_and_wait,
)
from npud.devices.sim import SimDevice
from npud.errors import DeviceLost
from npud.isa import DType, Program, T
from npud.vocab import DeviceHealth, MemoryTier
from tests.devices.contract import add_job, burn_job, command, download, upload

pytestmark = pytest.mark.slow


def test_killing_the_device_process_is_device_loss() -> None:
    """SIGKILL of the device process completes every waiter DEVICE_LOST and tells listeners."""

    async def scenario() -> tuple[list[Completion], list[str], SimDevice]:
        dev = SimDevice(mode="process")
        dev.open()
        heard: list[str] = []
        dev.add_loss_listener(heard.append)
        waiters = [
            asyncio.ensure_future(submit_and_wait(dev, burn_job(dev, 60.0, engine=0))),
            asyncio.ensure_future(submit_and_wait(dev, burn_job(dev, 60.0, engine=0))),
            asyncio.ensure_future(submit_and_wait(dev, burn_job(dev, 60.0, engine=1))),
        ]
        await asyncio.sleep(0)
        pid = dev.firmware_pid
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        done = await asyncio.wait_for(asyncio.gather(*waiters), timeout=20)
        await asyncio.sleep(0)
        return list(done), heard, dev

    done, heard, dev = asyncio.run(scenario())
    assert [c.status for c in done] == ["device_lost"] * 3
    assert all("SIGKILL" in (c.error or "") for c in done)
    assert len(heard) == 1
    assert "SIGKILL" in heard[0]
    assert dev.health() is DeviceHealth.LOST
    with pytest.raises(DeviceLost):
        dev.create_buffer(16, MemoryTier.DRAM)
    dev.close()


def test_process_mode_computes_like_virtual_mode() -> None:
    """A multi-op program gives bit-identical results in process and virtual mode."""
    gen = np.random.default_rng(7)
    x = gen.standard_normal((3, 16)).astype(np.float32)
    w = gen.standard_normal((16, 16)).astype(np.float32)
    prog = Program()
    prog.rmsnorm(T(2, 0, (3, 16)), T(0, 0, (3, 16)), T(1, 0, (16,)))
    prog.matmul(T(3, 0, (3, 16)), T(2, 0, (3, 16)), T(1, 64, (16, 16)), transpose_b=True)
    prog.softmax(T(3, 0, (3, 16)), T(3, 0, (3, 16)))
    prog.argmax(T(4, 0, (3,), DType.I32), T(3, 0, (3, 16)))
    weights = np.concatenate([np.ones(16, np.float32), w.ravel()]).tobytes()

    def setup(dev: SimDevice) -> tuple[Submission, list]:
        xs, ws = upload(dev, x.tobytes()), upload(dev, weights, MemoryTier.SRAM)
        scratch = [dev.create_buffer(4096, MemoryTier.DRAM) for _ in range(3)]
        bufs = [xs, ws, *scratch]
        uses = [BufferUse.READ, BufferUse.READ] + [BufferUse.READWRITE] * 3
        blob = prog.encode()
        cmd = upload(dev, blob)
        bindings = tuple(Binding(b.handle, u) for b, u in zip(bufs, uses, strict=True))
        return Submission(cmd.handle, 0, len(blob), bindings, engine=2), bufs

    async def in_process() -> tuple[Completion, bytes, bytes]:
        dev = SimDevice(mode="process")
        dev.open()
        sub, bufs = setup(dev)
        completion = await submit_and_wait(dev, sub)
        result = download(dev, bufs[3], 48), download(dev, bufs[4], 12)
        dev.close()
        return completion, *result

    completion, probs, ids = asyncio.run(in_process())
    assert completion.status == "ok", completion.error
    assert completion.finished_at - completion.started_at >= completion.modelled_s - 1e-3

    virtual = SimDevice()
    virtual.open()
    sub, bufs = setup(virtual)
    box: list[Completion] = []
    virtual.submit(sub, box.append)
    virtual.clock.run_until_idle()  # type: ignore[attr-defined]
    assert box[0].status == "ok"
    assert box[0].modelled_s == pytest.approx(completion.modelled_s)
    assert download(virtual, bufs[3], 48) == probs
    assert download(virtual, bufs[4], 12) == ids


def test_closing_from_a_completion_callback_ends_the_other_jobs_once() -> None:
    """A completion callback that closes the device (while other replies may be waiting in
    the same wake-up of the reader) ends every other job exactly once, ABORTED or OK."""

    errors: list[dict[str, object]] = []

    async def scenario() -> dict[int, list[str]]:
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: errors.append(ctx))
        dev = SimDevice(mode="process")
        dev.open()
        ended: dict[int, list[str]] = {}
        all_done = asyncio.get_running_loop().create_future()
        engines = len(dev.capabilities.engines)

        def on_done(engine: int, completion: Completion) -> None:
            ended.setdefault(engine, []).append(completion.status.value)
            if sum(len(v) for v in ended.values()) == 1:
                dev.close()
            if sum(len(v) for v in ended.values()) == engines and not all_done.done():
                all_done.set_result(None)

        for engine in range(engines):
            job = burn_job(dev, 0.0, engine=engine)
            dev.submit(job, lambda c, e=engine: on_done(e, c))
        await asyncio.wait_for(all_done, timeout=20)
        await asyncio.sleep(0)
        return ended

    ended = asyncio.run(scenario())
    assert errors == []  # the reader did not touch the closed socket
    assert all(len(statuses) == 1 for statuses in ended.values())
    statuses = sorted(s for v in ended.values() for s in v)
    assert statuses.count("ok") >= 1
    assert set(statuses) <= {"ok", "aborted"}


def _future(dev: SimDevice, sub: Submission) -> tuple[SubmitToken, asyncio.Future[Completion]]:
    """Submit ``sub``; its token and a future for its completion."""
    future: asyncio.Future[Completion] = asyncio.get_running_loop().create_future()
    token = dev.submit(sub, lambda c: None if future.done() else future.set_result(c))
    return token, future


def test_a_hung_engine_in_the_device_process_does_not_hold_up_the_others() -> None:
    """A job hung in the device process on engine 0 (and then engine 1): a job on another
    engine completes while it still runs; abort or reset then frees the hung engine, whose
    next job runs."""

    async def scenario() -> list[tuple[str, str]]:
        dev = SimDevice(mode="process")
        dev.open()
        seen: list[tuple[str, str]] = []
        try:
            for hung_engine, other, end in ((0, 1, "abort"), (1, 2, "reset")):
                dev.inject_hang(hung_engine)
                hung_token, hung = _future(dev, burn_job(dev, 0.0, engine=hung_engine))
                job = add_job(dev, engine=other)
                _, beside = _future(dev, job.submission)
                done = await asyncio.wait_for(beside, timeout=30)
                assert done.status == "ok", done.error
                seen.append(("beside", "hung still running" if not hung.done() else "hung done"))
                if end == "abort":
                    assert dev.abort(hung_token)
                else:
                    dev.reset_engine(hung_engine, "reset by the test")
                seen.append(("hung", (await hung).status.value))
                after = add_job(dev, engine=hung_engine, seed=1)
                done = await asyncio.wait_for(submit_and_wait(dev, after.submission), timeout=30)
                seen.append(("next on the hung engine", done.status.value))
                assert download(dev, after.out, 64) == after.expected.tobytes()
        finally:
            dev.close()
        return seen

    assert (
        asyncio.run(scenario())
        == [
            ("beside", "hung still running"),
            ("hung", "aborted"),
            ("next on the hung engine", "ok"),
        ]
        * 2
    )


def _matmul_heavy_job(dev: SimDevice, engine: int) -> Submission:
    """Eight [256, 2048] x [2048, 2048] matmuls with int8 weights: seconds of CPU on a slow
    host, tens of milliseconds at worst on a fast one, but about 9 ms of modelled time."""
    gen = np.random.default_rng(3)
    a = gen.standard_normal((256, 2048)).astype(np.float32)
    w = gen.integers(-127, 128, (2048, 2048)).astype(np.int8)
    xa, xw = upload(dev, a.tobytes()), upload(dev, w.tobytes())
    out = dev.create_buffer(a.nbytes, MemoryTier.DRAM)
    prog = Program()
    for _ in range(8):
        prog.matmul(
            T(2, 0, (256, 2048)), T(0, 0, (256, 2048)), T(1, 0, (2048, 2048), DType.I8, 0.01)
        )
    bindings = (
        Binding(xa.handle, BufferUse.READ),
        Binding(xw.handle, BufferUse.READ),
        Binding(out.handle, BufferUse.WRITE),
    )
    return command(dev, prog, bindings=bindings, engine=engine)


@pytest.mark.parametrize(
    ("lanes", "order"),
    [(None, ["small", "big"]), (1, ["big", "small"])],
    ids=["per-engine", "serial-baseline"],
)
def test_a_small_job_ends_while_a_big_one_computes_on_another_engine(
    lanes: int | None, order: list[str]
) -> None:
    """Real compute: a tiny job on engine 1 sent after a matmul-heavy job on engine 0
    completes first with one executor per engine, and second with one shared executor (the
    old device process, whose engines overlapped only in modelled time)."""

    async def scenario() -> list[str]:
        dev = SimDevice(mode="process", firmware_lanes=lanes)
        dev.open()
        ended: list[str] = []
        try:
            big_sub = _matmul_heavy_job(dev, engine=0)
            small = add_job(dev, engine=1)
            _, big = _future(dev, big_sub)
            big.add_done_callback(lambda _f: ended.append("big"))
            _, tiny = _future(dev, small.submission)
            tiny.add_done_callback(lambda _f: ended.append("small"))
            # No deadline of its own: the big job is tens of milliseconds on a fast host and
            # minutes of CPU under qemu-user (over 15 min with one BLAS thread on a 2-core
            # machine under a load of 10), so pytest's timeout is the hang guard.
            results = await asyncio.gather(big, tiny)
            assert [c.status for c in results] == ["ok", "ok"]
            assert big.result().modelled_s < 0.05  # its end is its compute, not its model
        finally:
            dev.close()
        return ended

    assert asyncio.run(scenario()) == order


def _blas_threads_here() -> int:
    """How many threads OpenBLAS uses in this (the test's) process: its default is one per CPU."""
    return int(os.environ.get("OPENBLAS_NUM_THREADS") or os.cpu_count() or 1)


def test_engines_computing_at_once_give_the_same_bits_as_virtual_mode() -> None:
    """Jobs run concurrently on three engines of the device process write exactly the bytes
    virtual mode writes for them, given BLAS the same thread count on both sides (OpenBLAS's
    sgemm rounds differently at its threads' partition edges, see docs/sim.md)."""
    gen = np.random.default_rng(11)
    a = gen.standard_normal((96, 384)).astype(np.float32)
    b = gen.standard_normal((384, 320)).astype(np.float32)
    prog = Program()
    prog.matmul(T(2, 0, (96, 320)), T(0, 0, (96, 384)), T(1, 0, (384, 320)))
    prog.softmax(T(2, 0, (96, 320)), T(2, 0, (96, 320)))
    prog.rmsnorm(T(2, 0, (96, 320)), T(2, 0, (96, 320)), T(1, 0, (320,)))

    def submit_all(dev: SimDevice) -> list[tuple[Submission, DeviceBuffer]]:
        jobs = []
        for engine in range(3):
            xa, xb = upload(dev, a.tobytes()), upload(dev, b.tobytes())
            out = dev.create_buffer(96 * 320 * 4, MemoryTier.DRAM)
            bindings = (
                Binding(xa.handle, BufferUse.READ),
                Binding(xb.handle, BufferUse.READ),
                Binding(out.handle, BufferUse.WRITE),
            )
            jobs.append((command(dev, prog, bindings=bindings, engine=engine), out))
        return jobs

    async def in_process() -> list[bytes]:
        dev = SimDevice(mode="process", firmware_blas_threads=_blas_threads_here())
        dev.open()
        try:
            jobs = submit_all(dev)
            done = await asyncio.gather(*(submit_and_wait(dev, s) for s, _ in jobs))
            assert [c.status for c in done] == ["ok"] * 3
            return [download(dev, out, 96 * 320 * 4) for _, out in jobs]
        finally:
            dev.close()

    got = asyncio.run(in_process())
    virtual = SimDevice()
    virtual.open()
    jobs = submit_all(virtual)
    box: list[Completion] = []
    for sub, _ in jobs:
        virtual.submit(sub, box.append)
    virtual.clock.run_until_idle()  # type: ignore[attr-defined]
    assert [c.status for c in box] == ["ok"] * 3
    expected = [download(virtual, out, 96 * 320 * 4) for _, out in jobs]
    assert got == expected
    assert len(set(got)) == 1
