"""Discovery on a real kernel: pyudev finds vgem's node, and the monitor hears a real uevent."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from npud.devices.discovery import NodeEvent, NodeMonitor, enumerate_nodes, scan_sysfs

pytestmark = pytest.mark.kernel


def test_pyudev_finds_the_vgem_render_node() -> None:
    """enumerate_nodes lists /dev/dri/renderD128 as vgem with its numbers and parent."""
    nodes = enumerate_nodes(render_drivers={"vgem"})
    render = [n for n in nodes if n.path.startswith("/dev/dri/renderD")]
    assert len(render) == 1
    node = render[0]
    assert node.driver == "vgem"
    assert (node.subsystem, node.major) == ("drm", 226)
    assert node.minor >= 128
    assert os.stat(node.path).st_rdev == os.makedev(node.major, node.minor)
    assert node.parent is not None
    assert "vgem" in node.parent
    assert "vgem" in node.bus_id
    # Without udev's ID_PATH the sysfs scanner sees the very same node.
    if "ID_PATH" not in os.environ:
        assert scan_sysfs(render_drivers={"vgem"}) == nodes


def test_no_accel_device_exists_without_npu_hardware() -> None:
    """No mainline accel driver binds without hardware: discovery reports none, not a fake."""
    assert [n for n in enumerate_nodes(render_drivers=set()) if n.subsystem == "accel"] == []


@pytest.mark.parametrize("source", [None, "netlink"])
def test_the_monitor_sees_a_change_uevent(source: str | None) -> None:
    """Writing "change" to the node's uevent file reaches the callback on the loop."""
    uevent = Path("/sys/class/drm/renderD128/uevent")

    async def scenario() -> tuple[NodeEvent, str]:
        loop = asyncio.get_running_loop()
        got: asyncio.Future[NodeEvent] = loop.create_future()

        def on_event(event: NodeEvent) -> None:
            if event.devname == "/dev/dri/renderD128" and not got.done():
                got.set_result(event)

        monitor = NodeMonitor(on_event, source=source)
        monitor.start()
        try:
            uevent.write_text("change")
            return await asyncio.wait_for(got, timeout=30), monitor.source
        finally:
            monitor.stop()

    event, used = asyncio.run(scenario())
    assert used == (source or "kernel")  # no udevd in the guest: libudev's kernel source
    assert event.action == "change"
    assert event.subsystem == "drm"
    assert event.node is not None
    assert event.node.path == "/dev/dri/renderD128"
