"""The daemon's hotplug plumbing on a real kernel: a uevent of vgem's render node reaches the
daemon-side watcher through MonitorEvents (the monitor's fd on the loop, no thread).

vgem has no adapter the daemon serves, so the watcher must see the event and leave it alone;
tests/daemon/test_hotplug.py drives the serving side over fake kernels.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from npud.clock import MonotonicClock
from npud.config import Settings
from npud.core.policy import SchedulerPolicy
from npud.core.service import Core
from npud.daemon.devices import SystemNodes
from npud.daemon.hotplug import HotplugStatistics, HotplugWatcher, MonitorEvents, Outcome
from npud.daemon.recovery import DeviceRecovery
from npud.devices.base import Device
from npud.devices.discovery import NodeEvent, NodeInfo
from npud.log import get_logger

pytestmark = pytest.mark.kernel


class RecordingWatcher(HotplugWatcher):
    """The daemon's watcher, keeping every event it handled."""

    heard: list[NodeEvent]

    async def handle(self, event: NodeEvent) -> Outcome:
        """Record, then handle as the daemon does."""
        self.heard.append(event)
        return await super().handle(event)


@pytest.mark.parametrize("source", [None, "netlink"])
def test_a_vgem_uevent_reaches_the_daemon_watcher(source: str | None, tmp_path: Path) -> None:
    """Writing "change" to renderD128's uevent file: MonitorEvents yields it (vgem named by
    probing the node), and the watcher handles it as an event for a node nobody serves."""
    uevent = Path("/sys/class/drm/renderD128/uevent")
    settings = Settings(socket=tmp_path / "npud.sock", state_dir=tmp_path / "state")

    async def scenario() -> tuple[NodeEvent, HotplugStatistics, str]:
        log = get_logger("npud.test")
        core = Core(MonotonicClock())
        devices: list[Device] = []
        on_node: dict[str, NodeInfo] = {}
        nodes = SystemNodes(log)
        policy = SchedulerPolicy()
        recovery = DeviceRecovery(
            core, settings, devices, policy=policy, log=log, nodes=nodes, on_node=on_node
        )
        watcher = RecordingWatcher(
            core, settings, devices, on_node, nodes=nodes, recovery=recovery, policy=policy, log=log
        )
        watcher.heard = heard = []
        events = MonitorEvents(source)
        events.start()
        task = asyncio.create_task(watcher.run(events))
        try:
            uevent.write_text("change")
            async with asyncio.timeout(30):
                while not any(e.devname == "/dev/dri/renderD128" for e in heard):
                    await asyncio.sleep(0.01)
            return (
                next(e for e in heard if e.devname == "/dev/dri/renderD128"),
                watcher.statistics(),
                events.name,
            )
        finally:
            events.stop()
            await asyncio.wait_for(task, 10)

    event, stats, used = asyncio.run(scenario())
    assert used == (source or "kernel")  # no udevd in the guest: libudev's kernel source
    assert (event.action, event.subsystem) == ("change", "drm")
    assert event.node is not None
    assert event.node.driver == "vgem"  # named by DRM_IOCTL_VERSION: vgem has no driver link
    assert stats.events >= 1
    assert (stats.added, stats.removed, stats.failures) == (0, 0, 0)
    assert stats.ignored == stats.events
