"""Hotplug in the daemon: nodes that appear are served, nodes that go away are lost devices, and
a lost device comes back on the next discovery event.

The daemon runs in this process over a fake machine (accel nodes backed by the fake kernels and
the real adapters) and a queue of synthetic node events; clients talk to it through the asyncio
client library on its real Unix socket. The real monitor's half (a uevent reaching the daemon's
source) is tests/kernel/test_hotplug_kernel.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

import npud.client.aio
from npud.client import DeviceEvent, DeviceHealth, JobSpec, JobState
from npud.client.events import Change
from npud.daemon.hotplug import QueuedEvents
from npud.devices.discovery import NodeEvent
from npud.errors import DeviceLost, NotFound
from npud.isa import Program
from tests.daemon.fakenodes import (
    ADD_N,
    FakeMachine,
    accel_node,
    add_on,
    serving,
    settings_for,
    until,
)

pytestmark = pytest.mark.slow

N = ADD_N


def _burn(seconds: float) -> bytes:
    return Program().burn(seconds).encode()


async def _add_on(npu: npud.client.aio.AsyncClient, device: str) -> np.ndarray:
    """Run out = a + b on ``device`` and return out."""
    state, _a, out = await add_on(npu, device, 0.5, f"add-{device}")
    assert state is JobState.COMPLETED
    return out


async def _watch(npu: npud.client.aio.AsyncClient, seen: list[DeviceEvent]) -> None:
    async for change in npu.watch_devices():
        seen.append(change)


def _seen(seen: list[DeviceEvent], name: str, health: DeviceHealth) -> bool:
    return any(e.device.name == name and e.device.health is health for e in seen)


def test_plug_serve_unplug_mid_job_and_back(tmp_path: Path) -> None:
    """A plugged rocket node is served (ListDevices, WatchDevices, a job computes); unplugged
    mid-job its in-flight jobs FAIL with DeviceLost, its context is closed, new work on it is
    UNAVAILABLE and the simulated NPU serves on; plugged again it is back under its name."""
    machine, source = FakeMachine(), QueuedEvents()
    node = accel_node(0)

    async def scenario() -> None:
        async with (
            serving(settings_for(tmp_path), machine, source) as daemon,
            npud.client.aio.connect(daemon.settings.socket) as npu,
        ):
            assert [d.name for d in await npu.devices()] == ["sim0"]  # no NPU: the sim
            seen: list[DeviceEvent] = []
            watcher = asyncio.create_task(_watch(npu, seen))
            await until(lambda: _seen(seen, "sim0", DeviceHealth.OK))

            # (a) the node appears: served as a new device
            source.put(machine.plug(node))
            await until(lambda: _seen(seen, "accel0", DeviceHealth.OK))
            assert any(e.device.name == "accel0" and e.change is Change.ADDED for e in seen)
            listed = {d.name: d for d in await npu.devices()}
            assert set(listed) == {"sim0", "accel0"}
            assert listed["accel0"].driver == "rocket"
            assert listed["accel0"].node == "/dev/accel/accel0"
            assert listed["sim0"].node == ""  # the simulated NPU has no node
            assert not listed["accel0"].simulated
            out = await _add_on(npu, "accel0")
            np.testing.assert_array_equal(out, np.arange(N, dtype=np.float32) + 0.5)
            assert machine.fake(node).firmware.executed == 1  # it ran on the node's kernel

            # (b) the node goes away mid-job
            ctx = await npu.create_context("accel0", label="victim")
            q = await npu.create_queue(ctx, in_order=False)
            fake = machine.fake(node)
            async with npu.submit_stream(ctx) as stream:
                results = [await stream.submit(JobSpec(q, _burn(5.0), timeout_s=30)) for _ in "abc"]
                assert daemon.core is not None
                core = daemon.core
                # one job runs in the kernel, two wait behind it (rocket: one engine)
                await until(lambda: len(fake.pending()) == 1 and core.statistics().live_jobs == 3)
                source.put(machine.unplug(node))
                ended = await asyncio.gather(*results)
            assert all(r.job is not None and r.job.state is JobState.FAILED for r in ended)
            errors = [r.job.error for r in ended if r.job is not None]
            assert all(e is not None and e.kind == "DeviceLost" for e in errors)
            assert all("removed" in e.message for e in errors if e is not None)
            await until(lambda: _seen(seen, "accel0", DeviceHealth.LOST))
            assert (await npu.device("accel0")).health is DeviceHealth.LOST
            with pytest.raises(NotFound):
                await npu.context(ctx)  # closed with the device
            with pytest.raises(DeviceLost):
                await npu.create_context("accel0")  # UNAVAILABLE on the wire
            assert all(f.closed for u in machine.unplugged for f in u.files)  # npud holds none
            out = await _add_on(npu, "sim0")  # the rest serves on
            np.testing.assert_array_equal(out, np.arange(N, dtype=np.float32) + 0.5)

            # (c) the node comes back: the lost device is served again under its name
            source.put(machine.plug(node))
            await until(
                lambda: daemon.hotplug is not None and daemon.hotplug.statistics().reopened == 1
            )
            assert (await npu.device("accel0")).health is DeviceHealth.OK
            assert [d.name for d in await npu.devices()] == ["sim0", "accel0"]
            out = await _add_on(npu, "accel0")
            np.testing.assert_array_equal(out, np.arange(N, dtype=np.float32) + 0.5)
            await until(lambda: sum(e.device.name == "accel0" for e in seen) >= 3)
            watcher.cancel()

            stats = daemon.hotplug.statistics() if daemon.hotplug else None
            assert stats is not None
            assert (stats.events, stats.added, stats.removed, stats.reopened) == (3, 1, 1, 1)
            assert stats.failures == 0

    asyncio.run(scenario())


def test_a_lost_simulated_npu_comes_back_on_the_next_event(tmp_path: Path) -> None:
    """The simulated NPU has no node; once lost, any discovery event (here a node no adapter
    drives) re-opens it as a fresh device process under its name."""
    machine, source = FakeMachine(), QueuedEvents()

    async def scenario() -> None:
        async with (
            serving(settings_for(tmp_path, device="sim"), machine, source) as daemon,
            npud.client.aio.connect(daemon.settings.socket) as npu,
        ):
            [sim] = daemon.devices
            sim.lose("lost for the test")  # type: ignore[attr-defined]
            assert (await npu.device("sim0")).health is DeviceHealth.LOST
            assert not daemon._healthy()  # nothing serves, and no node will bring it back
            vgem = accel_node(5, driver="vgem")
            source.put(
                NodeEvent(
                    "change",
                    "/sys/devices/faux/vgem/drm/renderD128",
                    "drm",
                    "/dev/dri/renderD128",
                    vgem,
                )
            )
            await until(
                lambda: daemon.hotplug is not None and daemon.hotplug.statistics().events == 1
            )
            assert (await npu.device("sim0")).health is DeviceHealth.OK
            assert daemon.devices[0] is not sim
            out = await _add_on(npu, "sim0")
            np.testing.assert_array_equal(out, np.arange(N, dtype=np.float32) + 0.5)
            # device = sim: a node, even one an adapter drives, is not served
            source.put(machine.plug(accel_node(1)))
            await until(
                lambda: daemon.hotplug is not None and daemon.hotplug.statistics().events == 2
            )
            assert [d.name for d in await npu.devices()] == ["sim0"]

    asyncio.run(scenario())


def test_the_only_npu_unplugged_keeps_the_daemon_up_and_healthy(tmp_path: Path) -> None:
    """With its only NPU unplugged the daemon keeps answering and its watchdog self-check
    holds (the node's return is awaited, no restart is wanted); the node's return serves it."""
    machine, source = FakeMachine(), QueuedEvents()
    node = accel_node(0, "ivpu")
    machine.plug(node)

    async def scenario() -> None:
        async with (
            serving(settings_for(tmp_path), machine, source) as daemon,
            npud.client.aio.connect(daemon.settings.socket) as npu,
        ):
            assert [d.name for d in await npu.devices()] == ["accel0"]  # no sim beside it
            source.put(machine.unplug(node))
            await until(
                lambda: daemon.hotplug is not None and daemon.hotplug.statistics().removed == 1
            )
            assert (await npu.device("accel0")).health is DeviceHealth.LOST
            assert daemon._healthy()
            assert await npu.version()
            source.put(machine.plug(node))
            await until(
                lambda: daemon.hotplug is not None and daemon.hotplug.statistics().reopened == 1
            )
            out = await _add_on(npu, "accel0")
            np.testing.assert_array_equal(out, np.arange(N, dtype=np.float32) + 0.5)
            assert daemon._healthy()

    asyncio.run(scenario())
