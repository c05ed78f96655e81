"""A fake machine for the daemon: NPU nodes backed by the fake kernels, plugged and unplugged
by the test, and an in-process daemon that serves them.

:class:`FakeMachine` is the daemon's :class:`~npud.daemon.devices.Nodes`: ``discover`` lists the
nodes plugged in now, ``open`` puts the real adapter (rocket, ivpu, ...) on the node's fake
kernel with the stand-in ISA firmware, so jobs compute for real. :meth:`FakeMachine.plug` and
:meth:`FakeMachine.unplug` change the machine and return the :class:`NodeEvent` the kernel
would send; the test puts it into the daemon's :class:`~npud.daemon.hotplug.QueuedEvents`. An
unplugged fake kernel answers ENODEV from then on, as a removed DRM device does.

:func:`serving` runs :class:`npud.daemon.app.Daemon` on the test's event loop (no subprocess:
the fakes live in this process), yields it once it sent READY, and drains it at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import npud.client.aio
from npud.client import Access, Bind, JobSpec, JobState
from npud.config import Settings
from npud.daemon.app import Daemon
from npud.daemon.devices import build_adapter
from npud.daemon.hotplug import QueuedEvents
from npud.daemon.systemd import Notifier
from npud.devices.base import Device
from npud.devices.discovery import NodeEvent, NodeInfo
from npud.isa import Program, T
from tests.devices.accel_harness import make
from tests.devices.fakekernel.base import FakeDevice
from tests.devices.fakekernel.firmware import IsaFirmware

ACCEL_MAJOR = 261


def accel_node(index: int, driver: str = "rocket") -> NodeInfo:
    """The NodeInfo discovery reports for ``/dev/accel/accel<index>`` of a platform NPU."""
    parent = f"/sys/devices/platform/fdab{index:04x}.npu"
    return NodeInfo(
        path=f"/dev/accel/accel{index}",
        subsystem="accel",
        driver=driver,
        bus_id=f"platform-fdab{index:04x}.npu",
        major=ACCEL_MAJOR,
        minor=index,
        sys_path=f"{parent}/accel/accel{index}",
        parent=parent,
    )


DRM_MAJOR = 226


def render_node(index: int, driver: str) -> NodeInfo:
    """The NodeInfo discovery reports for ``/dev/dri/renderD<128 + index>`` of a platform NPU
    driven through DRM (etnaviv, rknpu)."""
    minor = 128 + index
    parent = f"/sys/devices/platform/fde4{index:04x}.npu"
    return NodeInfo(
        path=f"/dev/dri/renderD{minor}",
        subsystem="drm",
        driver=driver,
        bus_id=f"platform-fde4{index:04x}.npu",
        major=DRM_MAJOR,
        minor=minor,
        sys_path=f"{parent}/drm/renderD{minor}",
        parent=parent,
    )


def event(action: str, node: NodeInfo) -> NodeEvent:
    """The event the monitor delivers for ``node`` (``node`` is gone from a ``remove``)."""
    return NodeEvent(
        action=action,
        sys_path=node.sys_path,
        subsystem=node.subsystem,
        devname=node.path,
        node=None if action == "remove" else node,
    )


@dataclass(eq=False)
class FakeMachine:
    """Nodes plugged into a pretend machine, each with its own fake kernel (see the module)."""

    fakes: dict[str, tuple[NodeInfo, FakeDevice, Callable[..., Any]]] = field(default_factory=dict)
    opened: list[Device] = field(default_factory=list)
    unplugged: list[FakeDevice] = field(default_factory=list)

    def plug(self, node: NodeInfo) -> NodeEvent:
        """A fresh device (new fake kernel, firmware running) appears at ``node``."""
        fake, build = make(node.driver or "", auto_complete=False)
        fake.firmware = IsaFirmware(fake)
        self.fakes[node.path] = (node, fake, build)
        return event("add", node)

    def unplug(self, node: NodeInfo) -> NodeEvent:
        """The device at ``node`` goes away: its kernel answers ENODEV, discovery loses it."""
        _, fake, _ = self.fakes.pop(node.path)
        fake.unplugged = True
        self.unplugged.append(fake)
        return event("remove", node)

    def fake(self, node: NodeInfo) -> FakeDevice:
        """The fake kernel now at ``node``."""
        return self.fakes[node.path][1]

    def discover(self) -> list[NodeInfo]:
        """The nodes plugged in now."""
        return sorted((n for n, _, _ in self.fakes.values()), key=lambda n: n.path)

    def open(self, node: NodeInfo) -> Device | None:
        """The real adapter on the node's fake kernel (None for a node that is not there)."""
        plugged = self.fakes.get(node.path)
        if plugged is None:
            return None
        device: Device = plugged[2](name=Path(node.path).name)
        self.opened.append(device)
        return device

    def stop(self) -> None:
        """Stop every fake firmware's workers (teardown)."""
        for _, fake, _ in self.fakes.values():
            fake.firmware.stop()
        for fake in self.unplugged:
            fake.firmware.stop()


@dataclass(eq=False)
class ConfiguredMachine(FakeMachine):
    """A fake machine whose adapters are built the daemon's way, from the settings
    (:func:`npud.daemon.devices.build_adapter`: amdxdna's program, qaic's activation hook),
    on the nodes' fake kernels."""

    settings: Settings | None = None

    def open(self, node: NodeInfo) -> Device | None:
        """The adapter the daemon would build for ``node`` (ConfigError when a setting it needs
        is missing), opening the node's fake kernel."""
        plugged = self.fakes.get(node.path)
        if plugged is None or self.settings is None:
            return None
        device = build_adapter(node, self.settings, opener=plugged[1].open)
        if device is not None:
            self.opened.append(device)
        return device


def activate_fake_qaic(file: Any) -> list[int]:
    """A ``[qaic] activate`` hook for the fake card: two DMA Bridge Channels for this file.

    A real hook speaks the Cloud AI SDK's NNC protocol over ``DRM_IOCTL_QAIC_MANAGE``; the fake
    kernel's stand-in hands out channels the way a successful activation leaves them.
    """
    dbcs: list[int] = file.device.activate(file, count=2)
    return dbcs


def settings_for(tmp: Path, **overrides: Any) -> Settings:
    """Daemon settings on private paths under ``tmp`` (short graces: tests drain quickly)."""
    values: dict[str, Any] = {
        "socket": tmp / "npud.sock",
        "state_dir": tmp / "state",
        "device": "auto",
        "session_grace_s": 1.0,
        "close_grace_s": 1.0,
        "shutdown_grace_s": 1.0,
        "log_level": "warning",
    }
    values.update(overrides)
    return Settings(**values)


async def until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait until ``predicate()`` holds (a readiness wait, not a timing assertion)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def _ready(notify: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    while b"READY=1" not in await loop.sock_recv(notify, 4096):
        pass


@contextlib.asynccontextmanager
async def serving(
    settings: Settings, machine: FakeMachine, source: QueuedEvents
) -> AsyncIterator[Daemon]:
    """The daemon running on this loop over ``machine`` and ``source``, once READY; it is
    stopped (drained) on exit and must exit 0."""
    daemon = Daemon(settings, nodes=machine, hotplug=source)
    # READY=1 arrives on a notify socket, as systemd would receive it.
    notify_path = settings.socket.with_name("notify")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify.setblocking(False)
        daemon.notifier = Notifier(address=str(notify_path))
        task = asyncio.create_task(daemon.run())
        ready = asyncio.create_task(_ready(notify))
        await asyncio.wait({task, ready}, timeout=60, return_when=asyncio.FIRST_COMPLETED)
        if not ready.done():
            ready.cancel()
            if task.done():
                task.result()  # raises the start-up failure
            task.cancel()
            raise AssertionError("the daemon did not send READY=1 within 60 s")
    try:
        yield daemon
    finally:
        daemon.request_stop("test")
        assert await asyncio.wait_for(task, 60) == 0
        machine.stop()


ADD_N = 64
"""Elements of the ADD job :func:`add_on` runs."""


async def add_on(
    npu: npud.client.aio.AsyncClient, device: str, b: float, label: str
) -> tuple[JobState, np.ndarray, np.ndarray]:
    """Run out = a + b on ``device`` in a context of its own (destroyed after), ``a`` being
    ``arange(ADD_N)`` and ``b`` the constant ``b``; returns the job's end state, ``a`` and
    ``out``."""
    ctx = await npu.create_context(device, label=label)
    q = await npu.create_queue(ctx)
    a = np.arange(ADD_N, dtype=np.float32)
    bufs = []
    for data in (a, np.full(ADD_N, b, dtype=np.float32), np.zeros(ADD_N, dtype=np.float32)):
        buf = await npu.create_buffer(ctx, ADD_N * 4)
        await npu.write_buffer(ctx, buf, data.tobytes())
        bufs.append(buf)
    n = ADD_N
    program = Program().add(out=T(2, 0, (n,)), a=T(0, 0, (n,)), b=T(1, 0, (n,))).encode()
    spec = JobSpec(q, program, (Bind(bufs[0]), Bind(bufs[1]), Bind(bufs[2], Access.WRITE)))
    done = await npu.wait(ctx, await npu.submit(ctx, spec), timeout_s=30)
    out = np.frombuffer(await npu.read_buffer(ctx, bufs[2]), dtype=np.float32)
    await npu.destroy_context(ctx)
    return done.state, a, out
