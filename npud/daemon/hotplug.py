"""Hotplug: the daemon follows NPU nodes as they come and go, without a thread.

Discovery's :class:`~npud.devices.discovery.NodeMonitor` puts its netlink fd on the asyncio
loop and reports each event of an accel node or render node. The daemon does not talk to it
directly: it reads an :class:`EventSource`, an async stream of
:class:`~npud.devices.discovery.NodeEvent`. :class:`MonitorEvents` is that stream over the real
monitor; :class:`QueuedEvents` is the same stream fed by hand (tests put synthetic events into
it, so the whole daemon-side path runs without udev). The source is started before the daemon
enumerates its devices, so a node that appears in between is not missed: its ``add`` waits in
the queue and is recognised as served when it is read.

:class:`HotplugWatcher` runs in the daemon's TaskGroup and handles one event at a time:

* ``remove``/``unbind`` of a node a served device is on: the device is lost now
  (:meth:`npud.core.service.Core.lose_device`: its jobs end FAILED with DeviceLost, which
  clients see as UNAVAILABLE; its contexts are closed) and the adapter is closed, so the
  daemon holds no file of a node that is gone. The device keeps its record, health LOST.
* ``add``/``bind`` (or ``change``) of a node no device serves, that the configuration allows
  (:func:`npud.daemon.devices.wanted`) and an adapter drives: it is opened and served as a new
  device named after the node (``accel1``); WatchDevices reports it. A node that could not be
  opened is retried on the next event.
* after every event, whatever it was: lost devices are re-opened
  (:meth:`npud.daemon.recovery.DeviceRecovery.rescan`, the code RescanDevices runs), so a lost
  device comes back on the next discovery event - a re-added node under its old name. The
  simulated NPU has no node and produces no events: RescanDevices is its trigger (any node
  event re-opens it too).

An event never stops the watcher: a failure is logged and counted, and the next event is
handled.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, Protocol

from npud.config import Settings
from npud.core.policy import SchedulerPolicy
from npud.core.registry import make_private
from npud.core.service import Core, DeviceEntry
from npud.daemon.budgets import residency_budgets
from npud.daemon.devices import Nodes, wanted
from npud.daemon.recovery import DeviceRecovery
from npud.devices.base import Device
from npud.devices.discovery import NodeEvent, NodeInfo, NodeMonitor
from npud.errors import ConfigError, NpudError
from npud.vocab import DeviceHealth

ARRIVALS = frozenset({"add", "bind", "change", "online", "move"})
"""Actions after which the node is (still) there: it may be served."""

DEPARTURES = frozenset({"remove", "unbind", "offline"})
"""Actions after which a device on the node has lost it."""


class EventSource(Protocol):
    """An async stream of node events that is started and stopped by the daemon."""

    def start(self) -> None:
        """Begin collecting events (on the running loop).

        Raises:
            OSError: events cannot be received here (no netlink, no permission).
        """
        ...

    def stop(self) -> None:
        """Stop collecting (idempotent); :meth:`events` ends after what is queued."""
        ...

    def events(self) -> AsyncIterator[NodeEvent]:
        """The events, in order, until the source is stopped."""
        ...

    @property
    def name(self) -> str:
        """Where events come from, for the log ("udev", "kernel", "netlink", "queue")."""
        ...


class QueuedEvents:
    """An :class:`EventSource` fed by :meth:`put`: the monitor's callback, or a test."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[NodeEvent | None] = asyncio.Queue()
        self._stopped = False

    @property
    def name(self) -> str:
        """ "queue": events are put by hand."""
        return "queue"

    def start(self) -> None:
        """Nothing to open."""

    def stop(self) -> None:
        """End :meth:`events` once what is queued has been read (idempotent)."""
        if not self._stopped:
            self._stopped = True
            self._queue.put_nowait(None)

    def put(self, event: NodeEvent) -> None:
        """Queue ``event`` (dropped once stopped); call on the loop's thread."""
        if not self._stopped:
            self._queue.put_nowait(event)

    async def events(self) -> AsyncIterator[NodeEvent]:
        """Queued events in order, until :meth:`stop`."""
        while (event := await self._queue.get()) is not None:
            yield event


class MonitorEvents(QueuedEvents):
    """The machine's hotplug events: a :class:`~npud.devices.discovery.NodeMonitor` whose fd
    is on the running loop feeds the queue.

    ``source`` forces the monitor's source ("udev", "kernel", "netlink"; default: auto).
    """

    def __init__(self, source: str | None = None) -> None:
        super().__init__()
        # probe: a node whose sysfs names no driver (vgem, faux devices) is asked with VERSION.
        self._monitor = NodeMonitor(self.put, source=source, probe=True)

    @property
    def name(self) -> str:
        """The monitor's source ("udev", "kernel", "netlink"; "" before :meth:`start`)."""
        return self._monitor.source

    def start(self) -> None:
        """Open the monitor's socket and put its fd on the running loop.

        Raises:
            OSError: the netlink socket could not be opened.
        """
        self._monitor.start()

    def stop(self) -> None:
        """Take the fd off the loop, close it, and end :meth:`events` (idempotent)."""
        self._monitor.stop()
        super().stop()


@dataclass(frozen=True, slots=True)
class HotplugStatistics:
    """A snapshot of what the watcher did."""

    source: str
    running: bool
    events: int
    added: int  # nodes served as new devices
    removed: int  # served devices whose node went away
    reopened: int  # lost devices brought back by the rescans events triggered
    ignored: int  # events that changed nothing (not served, not wanted, no adapter)
    failures: int  # events whose handling failed (logged)
    pending: int  # nodes that failed to open, retried on the next event
    slowest_close_ms: float  # the longest close of a removed device (it runs on the loop)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What one event did (for the log and for tests)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    reopened: tuple[str, ...] = ()


class HotplugWatcher:
    """Applies node events to the daemon's devices (see the module docstring).

    ``devices`` and ``on_node`` (device name -> the node it was opened on) are the daemon's
    own, shared with ``recovery``; they are updated in place. ``on_entry`` runs for every new
    core entry (the daemon's per-job log hook).
    """

    def __init__(
        self,
        core: Core,
        settings: Settings,
        devices: list[Device],
        on_node: dict[str, NodeInfo],
        *,
        nodes: Nodes,
        recovery: DeviceRecovery,
        policy: SchedulerPolicy,
        log: Any,
        on_entry: Callable[[DeviceEntry], None] | None = None,
    ) -> None:
        self._core = core
        self._settings = settings
        self._devices = devices
        self._on_node = on_node
        self._nodes = nodes
        self._recovery = recovery
        self._policy = policy
        self._log = log
        self._on_entry = on_entry
        self._pending: dict[str, NodeInfo] = {}  # path -> a wanted node that failed to open
        self._closed: list[Device] = []  # devices closed on their node's removal, still listed
        self._source = ""
        self._running = False
        self._events = 0
        self._added = 0
        self._removed = 0
        self._reopened = 0
        self._ignored = 0
        self._failures = 0
        self._slowest_close_ms = 0.0

    @property
    def running(self) -> bool:
        """Whether :meth:`run` is reading events."""
        return self._running

    async def run(self, source: EventSource) -> None:
        """Handle ``source``'s events until it ends (or the task is cancelled); never raises
        for one event's failure. The caller started ``source`` and stops it."""
        self._source = source.name
        self._running = True
        try:
            async for event in source.events():
                await self.handle(event)
        finally:
            self._running = False

    async def handle(self, event: NodeEvent) -> Outcome:
        """Apply one event, then re-open lost devices; failures are logged, not raised."""
        self._events += 1
        self._log.info(
            "hotplug.event",
            action=event.action,
            node=event.devname or event.sys_path,
            driver=event.node.driver if event.node is not None else None,
        )
        removed: tuple[str, ...] = ()
        added: tuple[str, ...] = ()
        failed = False
        try:
            if event.action in DEPARTURES:
                removed = self._departed(event)
            elif event.action in ARRIVALS:
                added = self._arrived(event)
            added += self._retry_pending(exclude=event)
        except Exception as exc:  # one bad event must not end hotplug for the daemon
            failed = True
            self._failures += 1
            self._log.exception("hotplug.event_failed", action=event.action, error=str(exc))
        report = await self._recovery.rescan(exclude=removed)
        self._reopened += len(report.reopened)
        if not (failed or added or removed or report.reopened):
            self._ignored += 1
        return Outcome(added, removed, report.reopened)

    # -- departures ----------------------------------------------------------------------------

    def _served_on(self, event: NodeEvent) -> list[str]:
        """Names of the served devices on the event's node (by device path or sysfs path)."""
        paths = {p for p in (event.devname, event.node.path if event.node else None) if p}
        return [
            name
            for name, node in self._on_node.items()
            if node.path in paths or node.sys_path == event.sys_path
        ]

    def _departed(self, event: NodeEvent) -> tuple[str, ...]:
        for path in (event.devname, event.node.path if event.node else None):
            if path:
                self._pending.pop(path, None)
        lost: list[str] = []
        for name in self._served_on(event):
            device = next((d for d in self._devices if d.name == name), None)
            if device is None or any(device is d for d in self._closed):
                continue  # its removal was handled already (a repeated remove/unbind)
            already = self._core.device_health(name) is DeviceHealth.LOST
            reason = f"its node {self._on_node[name].path} was removed ({event.action})"
            self._core.lose_device(name, reason)
            started = time.monotonic()
            with contextlib.suppress(NpudError, OSError):
                device.close()  # hold no file of a node that is gone
            close_ms = round((time.monotonic() - started) * 1e3, 3)
            self._slowest_close_ms = max(self._slowest_close_ms, close_ms)
            self._closed = [d for d in self._closed if d in self._devices] + [device]
            self._removed += 1
            lost.append(name)
            self._log.warning(
                "device.removed", device=name, reason=reason, was_lost=already, close_ms=close_ms
            )
        return tuple(lost)

    # -- arrivals ------------------------------------------------------------------------------

    def _arrived(self, event: NodeEvent) -> tuple[str, ...]:
        node = event.node
        if node is None:
            return ()  # the node is gone again already, or sysfs could not describe it
        if self._served_on(event) or not wanted(self._settings, node):
            return ()  # served (or lost and left to the rescan), or not ours to serve
        name = self._serve(node)
        return (name,) if name else ()

    def _retry_pending(self, *, exclude: NodeEvent) -> tuple[str, ...]:
        added: list[str] = []
        for path, node in list(self._pending.items()):
            if path in (exclude.devname, exclude.node.path if exclude.node else None):
                continue  # handled by this very event
            name = self._serve(node)
            if name:
                added.append(name)
        return tuple(added)

    def _serve(self, node: NodeInfo) -> str | None:
        """Open an adapter on ``node`` and serve it; ``None`` when it is not served (no
        adapter: ignored for good; failed to open: pending, retried on the next event)."""
        try:
            device = self._nodes.open(node)
        except ConfigError as exc:  # needs a setting it lacks: served after a restart with it
            self._pending.pop(node.path, None)
            self._log.error("device.not_configured", node=node.path, error=str(exc))
            return None
        if device is None:
            self._pending.pop(node.path, None)
            return None  # no adapter drives it (logged by open)
        if any(d.name == device.name for d in self._devices):
            self._pending.pop(node.path, None)
            self._log.warning(
                "hotplug.name_taken", node=node.path, device=device.name, detail="not served"
            )
            return None
        state_dir = self._settings.state_dir / device.name
        try:
            device.open()
            make_private(state_dir)
        except (NpudError, OSError) as exc:
            with contextlib.suppress(NpudError, OSError):
                device.close()
            self._pending[node.path] = node
            self._log.warning("device.open_failed", device=device.name, error=str(exc))
            return None
        self._pending.pop(node.path, None)
        entry = self._core.add_device(
            device,
            policy=self._policy,
            state_dir=state_dir,
            node=node.path,
            budgets=residency_budgets(self._settings),
            sram_policy=self._settings.residency.sram_placement,
        )
        if self._on_entry is not None:
            self._on_entry(entry)
        self._devices.append(device)
        self._on_node[device.name] = node
        self._added += 1
        caps = device.capabilities
        self._log.info(
            "device.added",
            device=device.name,
            node=node.path,
            driver=caps.driver,
            engines=len(caps.engines),
            simulated=caps.simulated,
        )
        return device.name

    def statistics(self) -> HotplugStatistics:
        """A frozen snapshot of the watcher's counters."""
        return HotplugStatistics(
            source=self._source,
            running=self._running,
            events=self._events,
            added=self._added,
            removed=self._removed,
            reopened=self._reopened,
            ignored=self._ignored,
            failures=self._failures,
            pending=len(self._pending),
            slowest_close_ms=self._slowest_close_ms,
        )
