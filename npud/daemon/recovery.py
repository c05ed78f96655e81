"""Bringing lost devices back: re-open, replace in core, keep the daemon's books.

A device is *lost* when its node disappears, its driver reports it gone, or (for the simulated
NPU) its device process dies. Core then fails the device's jobs with DeviceLost (clients see
UNAVAILABLE) and keeps serving everything else. :class:`DeviceRecovery` is what happens next,
on a rescan (``AdminService.RescanDevices``, and every hotplug event the daemon's
:class:`~npud.daemon.hotplug.HotplugWatcher` hears calls the same :meth:`DeviceRecovery.rescan`):

* for each lost device, a fresh one is created the way the daemon created the first: the
  simulated NPU as a new device process of the same name and profile (its memory starts
  empty, as a board's does after a power cycle); a real node through discovery, found again
  by the path of the node it was opened on;
* the new device is opened, then :meth:`npud.core.service.Core.replace_device` closes the
  contexts of the lost one (their buffers went with it) and serves the new one under the old
  name, with persistent registrations restored lazily from the state directory;
* the old device is closed and the daemon's device list updated, so shutdown closes the new
  one and the watchdog's health check sees it.

A device that cannot be opened again stays lost and is reported with the reason; the next
rescan tries again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

from npud.api.admin import RescanReport
from npud.config import Settings
from npud.core.policy import SchedulerPolicy
from npud.core.service import Core, DeviceEntry
from npud.daemon.devices import Nodes, SystemNodes, _make_sim
from npud.devices.base import Device
from npud.devices.discovery import NodeInfo
from npud.errors import DeviceLost, NpudError
from npud.vocab import DeviceHealth


class DeviceRecovery:
    """Re-opens lost devices for the daemon (see the module docstring).

    ``devices`` is the daemon's own list and ``on_node`` its map of device name -> the node a
    real device was opened on; both are updated in place. ``on_entry`` is called for every new
    core entry (the daemon adds its per-job log hook there). ``nodes`` finds and opens nodes
    (default: :class:`~npud.daemon.devices.SystemNodes`).
    """

    def __init__(
        self,
        core: Core,
        settings: Settings,
        devices: list[Device],
        *,
        policy: SchedulerPolicy,
        log: Any,
        on_entry: Callable[[DeviceEntry], None] | None = None,
        nodes: Nodes | None = None,
        on_node: dict[str, NodeInfo] | None = None,
    ) -> None:
        self._core = core
        self._settings = settings
        self._devices = devices
        self._nodes = nodes if nodes is not None else SystemNodes(log, settings)
        self._on_node = on_node if on_node is not None else {}
        self._policy = policy
        self._log = log
        self._on_entry = on_entry
        self.reopened = 0

    def _fresh(self, old: Device) -> tuple[Device, NodeInfo | None]:
        """A new, unopened device standing for ``old``, and the node it is on (None: sim).

        Raises:
            DeviceLost: discovery no longer finds the node, or no adapter drives it.
        """
        if old.capabilities.simulated:
            return _make_sim(self._settings, old.name), None
        node = self._on_node.get(old.name)
        if node is None:
            raise DeviceLost(f"{old.name}: the daemon does not know which node it was on")
        for found in self._nodes.discover():
            if found.path == node.path:
                device = self._nodes.open(found)
                if device is not None and device.name == old.name:
                    return device, found
        raise DeviceLost(f"{old.name}: node {node.path} is not present (yet)")

    def _state_dir(self, name: str) -> Path:
        return self._settings.state_dir / name

    async def rescan(self, *, exclude: Collection[str] = ()) -> RescanReport:
        """Re-open every lost device but those named in ``exclude``; never raises (failures
        are reported)."""
        reopened: list[str] = []
        still_lost: list[str] = []
        failures: list[str] = []
        for index, old in enumerate(list(self._devices)):
            if old.name in exclude or self._core.device_health(old.name) is not DeviceHealth.LOST:
                continue
            try:
                fresh, node = self._fresh(old)
                fresh.open()
            except NpudError as exc:
                still_lost.append(old.name)
                failures.append(f"{old.name}: {exc}")
                self._log.warning("device.reopen_failed", device=old.name, error=str(exc))
                continue
            entry = self._core.replace_device(
                fresh,
                policy=self._policy,
                state_dir=self._state_dir(fresh.name),
                node=node.path if node is not None else "",
            )
            if self._on_entry is not None:
                self._on_entry(entry)
            with contextlib.suppress(NpudError, OSError):
                old.close()
            self._devices[index] = fresh
            if node is not None:
                self._on_node[fresh.name] = node
            self.reopened += 1
            reopened.append(fresh.name)
            self._log.info(
                "device.reopened", device=fresh.name, simulated=fresh.capabilities.simulated
            )
        return RescanReport(tuple(reopened), tuple(still_lost), tuple(failures))
