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
    DeviceHealth,
    MemoryTier,
    Submission,
    submit_and_wait,
)
from npud.devices.sim import SimDevice
from npud.errors import DeviceLost
from npud.isa import DType, Program, T
from tests.devices.contract import burn_job, download, upload

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
