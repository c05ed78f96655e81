"""Device loss by hotplug, under load, for every accel adapter: a node unplugged while its
jobs run fails exactly those jobs with DeviceLost, closes their contexts and the node's file,
never disturbs a client of another device, and the device is served again - under its old
name, computing correctly - on the next discovery event.

The daemon runs in this process (its devices are the real adapters on the fake kernels of
tests/devices/fakekernel, plugged into a fake machine), its node events are injected through
its event source, and clients use the asyncio client library over the daemon's socket.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

import npud.client.aio
from npud.client import DeviceHealth, JobSpec, JobState, SchedulingClass
from npud.core.ids import ContextId
from npud.core.owner import SYSTEM
from npud.daemon.hotplug import QueuedEvents
from npud.errors import DeviceLost, NotFound
from npud.isa import Program
from tests.daemon.fakenodes import (
    FakeMachine,
    accel_node,
    add_on,
    serving,
    settings_for,
    until,
)
from tests.reliability.harness import FIGURES, record

pytestmark = pytest.mark.slow

DRIVERS = ("rocket", "ivpu", "amdxdna", "ethosu", "qaic")


async def _add(npu: npud.client.aio.AsyncClient, device: str) -> bool:
    """out = a + b on ``device``; whether the result is right."""
    state, a, out = await add_on(npu, device, 2.0, f"check-{device}")
    return state is JobState.COMPLETED and bool(np.array_equal(out, a + 2.0))


async def _bystander(
    npu: npud.client.aio.AsyncClient, device: str, stop: asyncio.Event, outcomes: list[JobState]
) -> None:
    """Stream short LATENCY jobs to ``device`` until ``stop``; every outcome is kept (LATENCY:
    admission never refuses one for its length, however a loaded host inflates their times)."""
    ctx = await npu.create_context(device, label="bystander")
    q = await npu.create_queue(ctx, SchedulingClass.LATENCY)
    async with npu.submit_stream(ctx) as stream:
        while not stop.is_set():
            result = await stream.run(JobSpec(q, Program().burn(0.002).encode(), timeout_s=10))
            assert result.job is not None
            outcomes.append(result.job.state)
    await npu.destroy_context(ctx)


@pytest.mark.parametrize("driver", DRIVERS)
def test_unplug_under_load_then_back_on_the_next_event(driver: str, tmp_path: Path) -> None:
    """Unplug a node of ``driver`` with jobs in its kernel and queued behind them while another
    device streams jobs: the victim's jobs all FAIL with DeviceLost, its context is NOT_FOUND,
    the device is LOST and UNAVAILABLE for new contexts, the node's files are closed, every
    bystander job completes; a re-plug brings the device back under its name and it computes."""
    machine, source = FakeMachine(), QueuedEvents()
    victim_node, other_node = accel_node(0, driver), accel_node(1, "rocket")
    machine.plug(victim_node)
    machine.plug(other_node)

    async def scenario() -> dict[str, float]:
        async with (
            serving(settings_for(tmp_path), machine, source) as daemon,
            npud.client.aio.connect(daemon.settings.socket) as npu,
        ):
            assert {d.name for d in await npu.devices()} == {"accel0", "accel1"}
            assert await _add(npu, "accel0")
            stop, outcomes = asyncio.Event(), list[JobState]()
            bystander = asyncio.create_task(_bystander(npu, "accel1", stop, outcomes))

            def streamed(count: int) -> bool:
                if bystander.done():
                    bystander.result()  # raises what stopped it
                return len(outcomes) >= count

            await until(lambda: streamed(3))

            engines = len((await npu.device("accel0")).engines)
            ctx = await npu.create_context("accel0", label="victim")
            q = await npu.create_queue(ctx, in_order=False)
            count = engines + 3  # more than the kernel takes at once: some wait in npud
            assert daemon.core is not None
            core, fake = daemon.core, machine.fake(victim_node)
            async with npu.submit_stream(ctx) as stream:
                burn = Program().burn(10.0).encode()
                results = [
                    await stream.submit(JobSpec(q, burn, timeout_s=60)) for _ in range(count)
                ]
                victim = ContextId(ctx.context_id)

                def all_in() -> bool:  # submitted, and the kernel runs some of them
                    live = core.jobs(SYSTEM, victim, include_ended=False)
                    return len(live) == count and bool(fake.pending())

                await until(all_in)
                source.put(machine.unplug(victim_node))
                ended = await asyncio.gather(*results)
            jobs = [r.job for r in ended]
            precise = sum(
                j is not None
                and j.state is JobState.FAILED
                and j.error is not None
                and j.error.kind == "DeviceLost"
                for j in jobs
            )
            assert precise == count
            with pytest.raises(NotFound):
                await npu.context(ctx)
            with pytest.raises(DeviceLost):
                await npu.create_context("accel0")
            assert (await npu.device("accel0")).health is DeviceHealth.LOST
            assert all(f.closed for f in fake.files)
            bystanders_before_replug = len(outcomes)
            await until(lambda: streamed(bystanders_before_replug + 3))

            source.put(machine.plug(victim_node))
            await until(
                lambda: daemon.hotplug is not None and daemon.hotplug.statistics().reopened == 1
            )
            assert (await npu.device("accel0")).health is DeviceHealth.OK
            assert await _add(npu, "accel0")
            stop.set()
            await bystander
            assert set(outcomes) == {JobState.COMPLETED}
            assert daemon.hotplug is not None
            return {
                "in_flight_failed_precisely": precise,
                "bystander_jobs": len(outcomes),
                "close_ms": daemon.hotplug.statistics().slowest_close_ms,
            }

    figures = asyncio.run(scenario())
    record(f"hotplug_{driver}_in_flight_failed_precisely", figures["in_flight_failed_precisely"])
    record(f"hotplug_{driver}_bystander_jobs_completed", figures["bystander_jobs"])
    record(f"hotplug_{driver}_removed_device_close_ms", figures["close_ms"])
    done = [d for d in DRIVERS if f"hotplug_{d}_in_flight_failed_precisely" in FIGURES]
    record("hotplug_adapters_survived", len(done))
