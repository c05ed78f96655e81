"""Shares: each NPU npud serves, advertised to the kubelet as N schedulable units.

A share's id is ``<device>-share-<i>`` (``sim0-share-0`` ... ``sim0-share-3`` for four shares of
sim0). All shares of a device have its health: Healthy while npud serves it, Unhealthy while npud
reports it lost, Healthy again when it returns. A device npud stops reporting keeps its shares,
Unhealthy, so that the kubelet's count stays stable and pods are not admitted to it.

Which shares a container gets is the kubelet's choice; :meth:`ShareTable.preferred` answers
GetPreferredAllocation by packing a request onto as few devices as possible (the device with
the most free shares first), so that a pod's tenant quota maps onto one NPU where it can.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Final

HEALTHY: Final = "Healthy"
UNHEALTHY: Final = "Unhealthy"

_ID = re.compile(r"(?P<device>.+)-share-(?P<index>\d+)")


def share_id(device: str, index: int) -> str:
    """The id of share ``index`` of ``device``."""
    return f"{device}-share-{index}"


def device_of(share: str) -> str | None:
    """The device a share id belongs to, or None for an id that is not a share's."""
    m = _ID.fullmatch(share)
    return m["device"] if m else None


@dataclass(frozen=True, slots=True)
class Share:
    """One advertised share (a value object: what ListAndWatch sends)."""

    id: str
    device: str
    healthy: bool

    @property
    def health(self) -> str:
        """The kubelet's word for it."""
        return HEALTHY if self.healthy else UNHEALTHY


@dataclass(frozen=True, slots=True)
class ShareStatistics:
    """Devices, shares and how often the advertised list changed."""

    devices: int
    shares: int
    unhealthy: int
    changes: int


@dataclass(slots=True, eq=False)
class ShareTable:
    """The devices and their health; every change bumps :attr:`version`."""

    per_device: int
    _healthy: dict[str, bool] = field(default_factory=dict)
    version: int = 0

    def __post_init__(self) -> None:
        if self.per_device < 1:
            raise ValueError(f"shares per device must be at least 1, got {self.per_device}")

    def set_health(self, device: str, healthy: bool) -> bool:
        """Record a device's health (adding it when new); True when the list changed."""
        if self._healthy.get(device) == healthy:
            return False
        self._healthy[device] = healthy
        self.version += 1
        return True

    def shares(self) -> list[Share]:
        """Every share, devices in the order they were first seen."""
        return [
            Share(share_id(device, i), device, healthy)
            for device, healthy in self._healthy.items()
            for i in range(self.per_device)
        ]

    def is_share(self, share: str) -> bool:
        """Whether ``share`` is one of ours."""
        device = device_of(share)
        if device is None or device not in self._healthy:
            return False
        index = int(share.rsplit("-", 1)[1])
        return index < self.per_device

    def preferred(self, available: Iterable[str], must: Iterable[str], size: int) -> list[str]:
        """``size`` shares from ``available``, all of ``must`` first, then from the devices
        with the most available healthy shares (see the module docstring)."""
        chosen = [s for s in must if self.is_share(s)][:size]
        free: dict[str, list[str]] = {}
        for s in available:
            device = device_of(s)
            if s in chosen or device is None or not self._healthy.get(device, False):
                continue
            free.setdefault(device, []).append(s)
        must_devices = {device_of(s) for s in chosen}
        order = sorted(free, key=lambda d: (d not in must_devices, -len(free[d]), d))
        for device in order:
            for s in sorted(free[device], key=lambda x: int(x.rsplit("-", 1)[1])):
                if len(chosen) >= size:
                    return chosen
                chosen.append(s)
        return chosen

    def statistics(self) -> ShareStatistics:
        """A snapshot of the table."""
        unhealthy = sum(1 for ok in self._healthy.values() if not ok) * self.per_device
        return ShareStatistics(
            devices=len(self._healthy),
            shares=len(self._healthy) * self.per_device,
            unhealthy=unhealthy,
            changes=self.version,
        )
