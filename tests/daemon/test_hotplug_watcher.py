"""The hotplug watcher on its own: core, recovery and the watcher over a fake machine, fed node
events directly (no gRPC, no simulated NPU process), so every rule is checked cheaply."""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from npud.clock import MonotonicClock
from npud.config import Settings
from npud.core.policy import SchedulerPolicy
from npud.core.service import Core
from npud.daemon.hotplug import HotplugWatcher, QueuedEvents
from npud.daemon.recovery import DeviceRecovery
from npud.devices.base import Device
from npud.devices.discovery import NodeEvent, NodeInfo
from npud.log import get_logger
from npud.vocab import DeviceHealth
from tests.daemon.fakenodes import FakeMachine, accel_node, event, settings_for, until


class Rig:
    """Core + recovery + watcher over a fake machine, as the daemon wires them."""

    def __init__(self, settings: Settings, machine: FakeMachine) -> None:
        log = get_logger("npud.test")
        self.machine = machine
        self.core = Core(MonotonicClock())
        self.devices: list[Device] = []
        self.on_node: dict[str, NodeInfo] = {}
        policy = SchedulerPolicy()
        recovery = DeviceRecovery(
            self.core,
            settings,
            self.devices,
            policy=policy,
            log=log,
            nodes=machine,
            on_node=self.on_node,
        )
        self.watcher = HotplugWatcher(
            self.core,
            settings,
            self.devices,
            self.on_node,
            nodes=machine,
            recovery=recovery,
            policy=policy,
            log=log,
        )

    def health(self) -> dict[str, DeviceHealth]:
        """Every device core serves, by name."""
        return {e.name: self.core.device_health(e.name) for e in self.core.devices()}

    def close(self) -> None:
        """Close the devices and stop the fake firmware."""
        for device in self.devices:
            device.close()
        self.machine.stop()


def _run(tmp: Path, body: Callable[[Rig], Awaitable[None]], **overrides: Any) -> None:
    async def scenario() -> None:
        rig = Rig(settings_for(tmp, **overrides), FakeMachine())
        try:
            await body(rig)
        finally:
            rig.close()

    asyncio.run(scenario())


def test_unwanted_and_undriven_nodes_are_ignored(tmp_path: Path) -> None:
    """With device = one node path, another node is not served; a node no adapter drives and
    the remove of a node nobody serves change nothing."""

    async def body(rig: Rig) -> None:
        wanted, other = accel_node(1), accel_node(2)
        await rig.watcher.handle(rig.machine.plug(other))
        assert rig.health() == {}
        outcome = await rig.watcher.handle(rig.machine.plug(wanted))
        assert outcome.added == ("accel1",)
        assert (await rig.watcher.handle(event("add", accel_node(3, driver="mystery")))).added == ()
        await rig.watcher.handle(event("remove", accel_node(4)))
        assert rig.health() == {"accel1": DeviceHealth.OK}
        stats = rig.watcher.statistics()
        assert (stats.events, stats.added, stats.ignored, stats.failures) == (4, 1, 3, 0)

    _run(tmp_path, body, device="/dev/accel/accel1")


def test_a_node_that_fails_to_open_is_retried_on_the_next_event(tmp_path: Path) -> None:
    """An add whose node cannot be opened yet (ENODEV) leaves it pending; the next event of
    any node serves it; a remove of a pending node forgets it."""

    async def body(rig: Rig) -> None:
        first, second = accel_node(0), accel_node(1)
        add = rig.machine.plug(first)
        rig.machine.fake(first).unplugged = True  # the driver is not ready: open gives ENODEV
        assert (await rig.watcher.handle(add)).added == ()
        assert rig.watcher.statistics().pending == 1
        rig.machine.fake(first).unplugged = False
        outcome = await rig.watcher.handle(rig.machine.plug(second))
        assert set(outcome.added) == {"accel0", "accel1"}
        assert rig.watcher.statistics().pending == 0

        third = accel_node(2)
        add = rig.machine.plug(third)
        rig.machine.fake(third).unplugged = True
        await rig.watcher.handle(add)
        assert rig.watcher.statistics().pending == 1
        await rig.watcher.handle(rig.machine.unplug(third))
        assert rig.watcher.statistics().pending == 0
        assert set(rig.health()) == {"accel0", "accel1"}

    _run(tmp_path, body)


def test_a_repeated_remove_and_a_device_that_noticed_first(tmp_path: Path) -> None:
    """A device whose adapter saw ENODEV before the remove arrived is still closed by the
    remove; a second remove of the same node changes nothing."""

    async def body(rig: Rig) -> None:
        node = accel_node(0)
        await rig.watcher.handle(rig.machine.plug(node))
        [device] = rig.devices
        fake = rig.machine.fake(node)
        fake.unplugged = True  # gone, but no event yet: the next ioctl reports it
        ctx_health_before = rig.core.device_health("accel0")
        assert ctx_health_before is DeviceHealth.OK
        remove = rig.machine.unplug(node)
        assert (await rig.watcher.handle(remove)).removed == ("accel0",)
        assert all(f.closed for f in fake.files)
        assert (await rig.watcher.handle(remove)).removed == ()
        assert rig.watcher.statistics().removed == 1
        assert rig.health() == {"accel0": DeviceHealth.LOST}
        assert rig.devices == [device]

    _run(tmp_path, body)


def test_one_failing_event_does_not_end_the_watcher(tmp_path: Path) -> None:
    """An event whose handling raises is logged and counted; the watcher reads the next one."""

    async def body(rig: Rig) -> None:
        calls = 0
        real_open = rig.machine.open

        def flaky_open(node: NodeInfo) -> Device | None:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise RuntimeError("adapter bug")
            return real_open(node)

        rig.machine.open = flaky_open  # type: ignore[method-assign]
        source = QueuedEvents()
        task = asyncio.create_task(rig.watcher.run(source))
        source.put(rig.machine.plug(accel_node(0)))
        source.put(rig.machine.plug(accel_node(1)))
        await until(lambda: rig.watcher.statistics().events == 2)
        assert rig.watcher.running
        source.stop()
        await asyncio.wait_for(task, 10)
        assert not rig.watcher.running
        stats = rig.watcher.statistics()
        assert (stats.failures, stats.added, stats.ignored) == (1, 1, 0)
        assert set(rig.health()) == {"accel1"}

    _run(tmp_path, body)


def test_a_stopped_queue_ends_after_what_it_holds() -> None:
    """QueuedEvents yields what was put before stop(), in order, then ends; later puts are
    dropped."""

    async def scenario() -> list[str]:
        source = QueuedEvents()
        for index in range(3):
            source.put(event("change", accel_node(index)))
        source.stop()
        source.put(event("change", accel_node(9)))
        return [e.devname or "" async for e in source.events()]

    assert asyncio.run(scenario()) == [f"/dev/accel/accel{i}" for i in range(3)]


OPS = st.lists(st.tuples(st.sampled_from(["plug", "unplug", "change"]), st.integers(0, 2)))


@settings(max_examples=25, deadline=None)
@given(ops=OPS)
def test_served_devices_follow_the_plugged_nodes(ops: list[tuple[str, int]]) -> None:
    """For any sequence of plugs, unplugs and change events (spurious ones included): after
    each event every plugged node is served healthy under its name, every node that went away
    is LOST with no file of it left open, and no name is served twice."""

    async def scenario(tmp: Path) -> None:
        rig = Rig(settings_for(tmp), FakeMachine())
        try:
            ever: set[str] = set()
            for op, index in ops:
                node = accel_node(index)
                plugged = node.path in rig.machine.fakes
                if op == "plug" and not plugged:
                    change = rig.machine.plug(node)
                elif op == "unplug" and plugged:
                    change = rig.machine.unplug(node)
                elif op == "unplug":
                    change = event("remove", node)  # a remove of a node that is not there
                else:
                    change = NodeEvent("change", node.sys_path, "accel", node.path, node)
                await rig.watcher.handle(change)
                if node.path in rig.machine.fakes:
                    ever.add(f"accel{index}")
                health = rig.health()
                for i in range(3):
                    name = f"accel{i}"
                    if accel_node(i).path in rig.machine.fakes:
                        assert health[name] is DeviceHealth.OK
                    elif name in ever:
                        assert health[name] is DeviceHealth.LOST
                assert set(health) == ever
                assert len(rig.devices) == len({d.name for d in rig.devices}) == len(ever)
                assert all(f.closed for fake in rig.machine.unplugged for f in fake.files)
        finally:
            rig.close()

    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(scenario(Path(tmp)))
