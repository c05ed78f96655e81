"""Discovery of NPU nodes from sysfs, and hotplug events on the loop (host side).

The real-kernel half (pyudev on vgem, a real uevent) is tests/kernel/test_discovery_kernel.py.
"""

from __future__ import annotations

import asyncio
import os
import socket
from pathlib import Path

import pytest

from npud.devices import discovery
from npud.devices.discovery import NodeEvent, NodeInfo, NodeMonitor, parse_uevent, scan_sysfs


def _link(link: Path, target: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(target, link.parent))


def _node(sysfs: Path, parent: Path, cls: str, name: str, dev: str, uevent: str) -> Path:
    node = parent / cls / name
    node.mkdir(parents=True)
    (node / "dev").write_text(dev + "\n")
    (node / "uevent").write_text(uevent)
    _link(node / "device", parent)
    _link(sysfs / "class" / cls / name, node)
    return node


@pytest.fixture
def sysfs(tmp_path: Path) -> Path:
    """A sysfs tree with an ivpu accel node, vgem's card0 and renderD128, and a GPU render node."""
    sys = tmp_path / "sys"
    pci = sys / "devices" / "pci0000:00" / "0000:00:0b.0"
    pci.mkdir(parents=True)
    (sys / "bus" / "pci" / "drivers" / "intel_vpu").mkdir(parents=True)
    _link(pci / "driver", sys / "bus" / "pci" / "drivers" / "intel_vpu")
    _link(pci / "subsystem", sys / "bus" / "pci")
    _node(sys, pci, "accel", "accel0", "261:0", "MAJOR=261\nMINOR=0\nDEVNAME=accel/accel0\n")
    vgem = sys / "devices" / "platform" / "vgem"
    vgem.mkdir(parents=True)
    (sys / "bus" / "platform").mkdir(parents=True)
    _link(vgem / "subsystem", sys / "bus" / "platform")
    minor = "DEVTYPE=drm_minor\n"
    _node(sys, vgem, "drm", "card0", "226:0", f"MAJOR=226\nMINOR=0\nDEVNAME=dri/card0\n{minor}")
    _node(sys, vgem, "drm", "renderD128", "226:128", f"DEVNAME=dri/renderD128\n{minor}")
    gpu = sys / "devices" / "pci0000:00" / "0000:00:02.0"
    gpu.mkdir(parents=True)
    (sys / "bus" / "pci" / "drivers" / "i915").mkdir(parents=True)
    _link(gpu / "driver", sys / "bus" / "pci" / "drivers" / "i915")
    _node(sys, gpu, "drm", "renderD129", "226:129", f"DEVNAME=dri/renderD129\n{minor}")
    (sys / "class" / "drm" / "version").write_text("drm 1.1.0\n")
    return sys


def test_sysfs_scan_finds_accel_nodes_with_driver_and_bus(sysfs: Path) -> None:
    """An accel node is found with its PCI driver, bus id, numbers and parent."""
    nodes = scan_sysfs(sysfs=sysfs, dev=Path("/dev"), probe=False)
    assert nodes == [
        NodeInfo(
            path="/dev/accel/accel0",
            subsystem="accel",
            driver="intel_vpu",
            bus_id="pci-0000:00:0b.0",
            major=261,
            minor=0,
            sys_path=str(sysfs / "devices/pci0000:00/0000:00:0b.0/accel/accel0"),
            parent=str(sysfs / "devices/pci0000:00/0000:00:0b.0"),
        )
    ]


def test_render_nodes_count_only_for_npu_drivers(sysfs: Path) -> None:
    """GPU render nodes and card nodes are never NPUs; a named render driver's node is."""
    nodes = scan_sysfs(sysfs=sysfs, render_drivers={"i915"}, probe=False)
    assert [(n.path, n.driver) for n in nodes] == [
        ("/dev/accel/accel0", "intel_vpu"),
        ("/dev/dri/renderD129", "i915"),
    ]
    # vgem has no driver link (6.12) and probing is off: its driver stays unknown, so unlisted.
    assert all(n.driver != "vgem" for n in scan_sysfs(sysfs=sysfs, render_drivers={"vgem"}))


def test_the_driver_falls_back_to_the_node_when_sysfs_cannot_name_it(
    sysfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without a driver link, DRM_IOCTL_VERSION on the node names the driver (vgem)."""
    asked: list[str] = []

    def version_name(path: str) -> str | None:
        asked.append(path)
        return "vgem"

    monkeypatch.setattr(discovery, "_driver_from_node", version_name)
    nodes = scan_sysfs(sysfs=sysfs, render_drivers={"vgem"})
    assert [n.path for n in nodes] == ["/dev/accel/accel0", "/dev/dri/renderD128"]
    assert nodes[1].bus_id == "platform-vgem"
    assert asked == ["/dev/dri/renderD128"]  # only the node sysfs could not name


def test_uevents_parse_and_udev_frames_are_ignored() -> None:
    """A kernel uevent splits into action and properties; libudev's binary frames do not parse."""
    msg = b"change@/devices/platform/vgem/drm/renderD128\0ACTION=change\0SUBSYSTEM=drm\0SEQNUM=9\0"
    action, props = parse_uevent(msg) or ("", {})
    assert action == "change"
    assert props["SUBSYSTEM"] == "drm"
    assert props["SEQNUM"] == "9"
    assert parse_uevent(b"libudev\0\xfe\xed") is None


def test_the_monitor_delivers_events_from_its_fd_on_the_loop(
    sysfs: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Readable netlink fd -> callback on the loop thread; non-NPU events are counted, not sent."""
    ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    monkeypatch.setattr(discovery, "open_uevent_socket", lambda: ours)
    seen: list[NodeEvent] = []

    async def scenario() -> None:
        done = asyncio.Event()

        def on_event(event: NodeEvent) -> None:
            seen.append(event)
            if len(seen) == 2:
                done.set()

        monitor = NodeMonitor(on_event, source="netlink", sysfs=sysfs, dev=Path("/dev"))
        monitor.start()
        base = "/devices/pci0000:00/0000:00:0b.0/accel/accel0"
        kernel.send(b"add@/devices/virtual/net/lo\0ACTION=add\0SUBSYSTEM=net\0DEVPATH=/x\0")
        kernel.send(
            f"change@{base}\0ACTION=change\0SUBSYSTEM=accel\0DEVPATH={base}\0"
            "DEVNAME=accel/accel0\0".encode()
        )
        kernel.send(f"remove@{base}\0ACTION=remove\0SUBSYSTEM=accel\0DEVPATH={base}\0".encode())
        await asyncio.wait_for(done.wait(), timeout=5)
        stats = monitor.statistics()
        monitor.stop()
        assert (stats.source, stats.running, stats.events, stats.npu_events) == (
            "netlink",
            True,
            3,
            2,
        )
        assert not monitor.statistics().running

    asyncio.run(scenario())
    kernel.close()
    assert [e.action for e in seen] == ["change", "remove"]
    assert seen[0].node is not None
    assert seen[0].node.driver == "intel_vpu"
    assert seen[0].devname == "/dev/accel/accel0"
    assert seen[1].node is None


def test_etnaviv_and_rknpu_render_nodes_are_npus(tmp_path: Path) -> None:
    """The render nodes of etnaviv and of the vendor rknpu (whose platform driver sysfs names
    RKNPU) are NPU nodes, each resolving to its adapter; a GPU's render node is not."""
    from npud.devices.accel_adapters import adapter_for

    sys = tmp_path / "sys"
    minor = "DEVTYPE=drm_minor\n"
    platform = sys / "bus" / "platform"
    for parent_name, driver, node, number in (
        ("etnaviv", "etnaviv", "renderD128", 128),
        ("fdab0000.npu", "RKNPU", "renderD129", 129),
        ("fb000000.gpu", "panthor", "renderD130", 130),
    ):
        parent = sys / "devices" / "platform" / parent_name
        parent.mkdir(parents=True)
        (platform / "drivers" / driver).mkdir(parents=True, exist_ok=True)
        _link(parent / "driver", platform / "drivers" / driver)
        _link(parent / "subsystem", platform)
        _node(sys, parent, "drm", node, f"226:{number}", f"DEVNAME=dri/{node}\n{minor}")
    nodes = scan_sysfs(sysfs=sys, probe=False)
    assert [(n.path, n.driver, n.bus_id) for n in nodes] == [
        ("/dev/dri/renderD128", "etnaviv", "platform-etnaviv"),
        ("/dev/dri/renderD129", "RKNPU", "platform-fdab0000.npu"),
    ]
    adapters = [adapter_for(n.driver or "") for n in nodes]
    assert [a.driver if a is not None else None for a in adapters] == ["etnaviv", "rknpu"]
