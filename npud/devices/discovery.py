"""Finding NPU nodes, and hearing when they come and go.

npud serves two kinds of device nodes:

- **accel nodes** (``/dev/accel/accelN``, subsystem ``accel``): every drivers/accel NPU (ivpu,
  amdxdna, rocket, ethosu, qaic, ...);
- **NPU render nodes** (``/dev/dri/renderD*``, subsystem ``drm``, ``DEVTYPE=drm_minor``) of
  drivers that expose an NPU through DRM rather than accel: etnaviv (Vivante NPUs) and
  Rockchip's vendor rknpu by default;
  callers can widen the set (tests add ``vgem``).

:func:`enumerate_nodes` lists them with pyudev (which reads sysfs through libudev, and adds
udev's properties such as ``ID_PATH`` when udevd runs); where libudev itself is missing it
scans sysfs directly (:func:`scan_sysfs`). Both return the same frozen :class:`NodeInfo`.

:class:`NodeMonitor` reports hotplug on the asyncio loop without a thread: its netlink socket's
fd sits in ``loop.add_reader`` and each readable event drains the socket. It listens to udev's
events when udevd runs (``/run/udev/control`` exists: the node's permissions are then set), and
to the kernel's own uevents otherwise (libudev's udev source stays silent without udevd); with
no libudev at all it opens a ``NETLINK_KOBJECT_UEVENT`` socket itself. Start the monitor
before enumerating and de-duplicate by ``sys_path``, so no node is missed in between.

The driver name comes from sysfs (the parent device's driver). Some virtual devices have none
(vgem on 6.12 has no driver link; on 6.15+ it is a "faux" device); then, if the node can be
opened, ``DRM_IOCTL_VERSION`` names the driver.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from npud.abi.drmfile import DrmFile

NPU_RENDER_DRIVERS: frozenset[str] = frozenset({"etnaviv", "rknpu", "RKNPU"})
"""Drivers whose render nodes are NPUs (the rest of /dev/dri is GPUs and displays): etnaviv
(Vivante NPU cores; its adapter serves only those, not the GPU beside them) and Rockchip's
vendor rknpu, whose platform driver sysfs names ``RKNPU`` (``rknpu_driver.driver.name``) while
its DRM name (``DRM_IOCTL_VERSION``) is ``rknpu``."""

NETLINK_KOBJECT_UEVENT = 15
_KERNEL_UEVENT_GROUP = 1
_UDEV_CONTROL = Path("/run/udev/control")
_SUBSYSTEMS = ("accel", "drm")
_NO_DRIVER = ("", "faux_driver")


@dataclass(frozen=True, slots=True)
class NodeInfo:
    """One NPU device node.

    ``bus_id`` is udev's ``ID_PATH`` when udev provides it, else ``<bus>-<parent name>``
    (``pci-0000:c4:00.1``, ``platform-fdab0000.npu``); ``parent`` is the parent device's sysfs
    path. ``driver`` may be ``None`` when neither sysfs nor the node could name it.
    """

    path: str
    subsystem: str
    driver: str | None
    bus_id: str
    major: int
    minor: int
    sys_path: str
    parent: str | None


@dataclass(frozen=True, slots=True)
class NodeEvent:
    """A hotplug event for an NPU node: ``action`` is add/remove/change/bind/unbind/...

    ``node`` is filled for nodes that still exist (not for ``remove``).
    """

    action: str
    sys_path: str
    subsystem: str
    devname: str | None
    node: NodeInfo | None


@dataclass(frozen=True, slots=True)
class MonitorStatistics:
    """A snapshot of a monitor's counters."""

    source: str  # "udev", "kernel" (through libudev) or "netlink" (our own socket)
    running: bool
    events: int
    npu_events: int


def udev_running() -> bool:
    """Whether udevd runs here (it creates ``/run/udev/control``)."""
    return _UDEV_CONTROL.exists()


def _is_npu_node(subsystem: str, sys_name: str, devtype: str | None) -> bool:
    if subsystem == "accel":
        return sys_name.startswith("accel")
    return subsystem == "drm" and devtype == "drm_minor" and sys_name.startswith("renderD")


def _driver_from_node(path: str) -> str | None:
    try:
        with DrmFile.open(path) as drm_file:
            return drm_file.version().name
    except OSError:
        return None


def _accepted(info: NodeInfo, render_drivers: frozenset[str]) -> bool:
    return info.subsystem == "accel" or info.driver in render_drivers


# -- pyudev ------------------------------------------------------------------------------------


def _udev_context() -> Any:
    """A pyudev Context, or None where libudev cannot be loaded."""
    try:
        import pyudev

        return pyudev.Context()
    except (ImportError, OSError):
        return None


def _info_from_udev(device: Any, *, probe: bool) -> NodeInfo | None:
    if device.device_node is None:
        return None
    parent = device.parent
    driver = parent.driver if parent is not None else None
    if (driver or "") in _NO_DRIVER:
        driver = _driver_from_node(device.device_node) if probe else None
    bus_id = device.properties.get("ID_PATH")
    if not bus_id:
        bus_id = f"{parent.subsystem}-{parent.sys_name}" if parent is not None else device.sys_name
    number = device.device_number
    return NodeInfo(
        path=device.device_node,
        subsystem=device.subsystem,
        driver=driver,
        bus_id=bus_id,
        major=os.major(number),
        minor=os.minor(number),
        sys_path=device.sys_path,
        parent=parent.sys_path if parent is not None else None,
    )


def enumerate_nodes(
    *,
    render_drivers: Iterable[str] = NPU_RENDER_DRIVERS,
    probe: bool = True,
    sysfs: Path = Path("/sys"),
    dev: Path = Path("/dev"),
) -> list[NodeInfo]:
    """Every NPU node present now: accel nodes and render nodes of ``render_drivers``.

    Uses pyudev; falls back to :func:`scan_sysfs` where libudev is unavailable. With ``probe``
    a node whose driver sysfs cannot name is asked with ``DRM_IOCTL_VERSION``. Never raises
    for a node that vanishes meanwhile; sorted by path.
    """
    drivers = frozenset(render_drivers)
    context = _udev_context()
    if context is None:
        return scan_sysfs(sysfs=sysfs, dev=dev, render_drivers=drivers, probe=probe)
    found: dict[str, NodeInfo] = {}
    for subsystem in _SUBSYSTEMS:
        for device in context.list_devices(subsystem=subsystem):
            if not _is_npu_node(subsystem, device.sys_name, device.device_type):
                continue
            info = _info_from_udev(device, probe=probe)
            if info is not None and _accepted(info, drivers):
                found[info.sys_path] = info
    return sorted(found.values(), key=lambda n: n.path)


# -- plain sysfs -------------------------------------------------------------------------------


def _read_uevent(path: Path) -> dict[str, str]:
    try:
        text = path.read_text()
    except OSError:
        return {}
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def _info_from_sysfs(
    node_dir: Path, subsystem: str, *, sysfs: Path, dev: Path, probe: bool
) -> NodeInfo | None:
    uevent = _read_uevent(node_dir / "uevent")
    if not _is_npu_node(subsystem, node_dir.name, uevent.get("DEVTYPE")):
        return None
    try:
        major, minor = (int(x) for x in (node_dir / "dev").read_text().strip().split(":"))
    except (OSError, ValueError):
        return None
    devname = uevent.get("DEVNAME", f"{subsystem}/{node_dir.name}")
    path = str(dev / devname)
    real = node_dir.resolve()
    parent_link = node_dir / "device"
    parent = parent_link.resolve() if parent_link.exists() else None
    driver: str | None = None
    if parent is not None and (parent / "driver").exists():
        driver = (parent / "driver").resolve().name
    if (driver or "") in _NO_DRIVER:
        driver = _driver_from_node(path) if probe else None
    bus_id = node_dir.name
    if parent is not None:
        bus = (parent / "subsystem").resolve().name if (parent / "subsystem").exists() else "?"
        bus_id = f"{bus}-{parent.name}"
    return NodeInfo(
        path=path,
        subsystem=subsystem,
        driver=driver,
        bus_id=bus_id,
        major=major,
        minor=minor,
        sys_path=str(real),
        parent=str(parent) if parent is not None else None,
    )


def scan_sysfs(
    *,
    sysfs: Path = Path("/sys"),
    dev: Path = Path("/dev"),
    render_drivers: Iterable[str] = NPU_RENDER_DRIVERS,
    probe: bool = True,
) -> list[NodeInfo]:
    """Every NPU node, read from ``<sysfs>/class/{accel,drm}`` without libudev; sorted by path."""
    drivers = frozenset(render_drivers)
    found: list[NodeInfo] = []
    for subsystem in _SUBSYSTEMS:
        class_dir = sysfs / "class" / subsystem
        if not class_dir.is_dir():
            continue
        for node_dir in sorted(class_dir.iterdir()):
            info = _info_from_sysfs(node_dir, subsystem, sysfs=sysfs, dev=dev, probe=probe)
            if info is not None and _accepted(info, drivers):
                found.append(info)
    return sorted(found, key=lambda n: n.path)


def parse_uevent(message: bytes) -> tuple[str, dict[str, str]] | None:
    """Split a kernel uevent (``action@devpath\\0KEY=VALUE\\0...``) into (action, properties).

    Returns ``None`` for messages that are not kernel uevents (udev's own ``libudev`` frames).
    """
    parts = message.split(b"\0")
    header = parts[0].decode("utf-8", "replace")
    if "@" not in header:
        return None
    props: dict[str, str] = {}
    for part in parts[1:]:
        key, sep, value = part.decode("utf-8", "replace").partition("=")
        if sep:
            props[key] = value
    return header.split("@", 1)[0], props


# -- the monitor ---------------------------------------------------------------------------------


def open_uevent_socket() -> socket.socket:
    """A socket receiving the kernel's uevents (``NETLINK_KOBJECT_UEVENT``, group 1).

    Non-root processes may receive them (the kernel creates the socket with
    ``NL_CFG_F_NONROOT_RECV``), but only in the initial user namespace.

    Raises:
        OSError: netlink is unavailable or refused.
    """
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_KOBJECT_UEVENT)
    try:
        sock.bind((0, _KERNEL_UEVENT_GROUP))
    except OSError:
        sock.close()
        raise
    return sock


class NodeMonitor:
    """Hotplug events of NPU nodes, delivered on an asyncio loop without a thread.

    ``callback`` runs on the loop's thread, once per event of an accel node or a render node
    (of any driver: a removed node can no longer say which driver it had; the callback filters).
    """

    def __init__(
        self,
        callback: Callable[[NodeEvent], None],
        *,
        source: str | None = None,
        probe: bool = False,
        sysfs: Path = Path("/sys"),
        dev: Path = Path("/dev"),
    ) -> None:
        """Prepare a monitor; ``source`` forces "udev", "kernel" or "netlink" (default: auto)."""
        self._callback = callback
        self._requested = source
        self._probe = probe
        self._sysfs = sysfs
        self._dev = dev
        self._source = ""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._monitor: Any = None
        self._socket: socket.socket | None = None
        self._events = 0
        self._npu_events = 0

    @property
    def source(self) -> str:
        """Where events come from ("udev", "kernel", "netlink"); "" before :meth:`start`."""
        return self._source

    def start(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        """Open the event socket and put its fd on ``loop`` (default: the running loop).

        Raises:
            OSError: the netlink socket could not be opened (no permission, no netlink).
            RuntimeError: already started, or no loop is running and none was given.
        """
        if self._loop is not None:
            raise RuntimeError("monitor already started")
        loop = loop if loop is not None else asyncio.get_running_loop()
        source = self._requested
        context = _udev_context() if source != "netlink" else None
        if source is None:
            source = "netlink" if context is None else ("udev" if udev_running() else "kernel")
        if source == "netlink":
            sock = open_uevent_socket()
            sock.setblocking(False)
            self._socket = sock
            fd = sock.fileno()
        else:
            import pyudev

            monitor = pyudev.Monitor.from_netlink(context, source=source)
            for subsystem in _SUBSYSTEMS:
                monitor.filter_by(subsystem)
            monitor.start()
            self._monitor = monitor
            fd = monitor.fileno()
        self._source = source
        self._loop = loop
        loop.add_reader(fd, self._on_readable)

    def stop(self) -> None:
        """Take the fd off the loop and close it (idempotent)."""
        loop, self._loop = self._loop, None
        if self._socket is not None:
            if loop is not None:
                loop.remove_reader(self._socket.fileno())
            self._socket.close()
            self._socket = None
        if self._monitor is not None:
            if loop is not None:
                loop.remove_reader(self._monitor.fileno())
            self._monitor = None

    def statistics(self) -> MonitorStatistics:
        """A frozen snapshot of the monitor's counters."""
        return MonitorStatistics(
            self._source, self._loop is not None, self._events, self._npu_events
        )

    def _on_readable(self) -> None:
        # Drain everything that is queued: one readable callback may cover several events.
        if self._socket is not None:
            while True:
                try:
                    message = self._socket.recv(65536)
                except BlockingIOError:
                    return
                parsed = parse_uevent(message)
                if parsed is not None:
                    self._deliver(parsed[0], parsed[1])
        elif self._monitor is not None:
            while (device := self._monitor.poll(0)) is not None:
                props = dict(device.properties)
                props.setdefault("DEVPATH", device.device_path)
                self._deliver(device.action or "", props)

    def _deliver(self, action: str, props: Mapping[str, str]) -> None:
        self._events += 1
        subsystem = props.get("SUBSYSTEM", "")
        devpath = props.get("DEVPATH", "")
        name = devpath.rsplit("/", 1)[-1]
        if subsystem not in _SUBSYSTEMS or not _is_npu_node(subsystem, name, props.get("DEVTYPE")):
            return
        self._npu_events += 1
        node = None
        sys_path = self._sysfs / devpath.lstrip("/")
        if action != "remove":
            with contextlib.suppress(OSError):
                node = _info_from_sysfs(
                    sys_path, subsystem, sysfs=self._sysfs, dev=self._dev, probe=self._probe
                )
        devname = props.get("DEVNAME")
        self._callback(
            NodeEvent(
                action=action,
                sys_path=str(sys_path),
                subsystem=subsystem,
                devname=str(self._dev / devname) if devname else None,
                node=node,
            )
        )
