"""The live event stream as the client library returns it: statistics, jobs, contexts, devices.

``StatsService.StreamEvents`` sends one of four kinds of item; :func:`event_from_wire` turns
each into its value (:class:`~npud.client.stats.Stats`, :class:`~npud.client.types.Job`,
:class:`ContextEvent`, :class:`DeviceEvent`), and :class:`Change` says what happened to a
device or a context.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from npud.client.stats import Stats
from npud.client.types import Device, Job
from npud.v1 import device_pb2, stats_pb2


class Change(enum.StrEnum):
    """What happened to a device or context in an event."""

    ADDED = "added"
    CHANGED = "changed"
    REMOVED = "removed"
    CREATED = "created"
    DESTROYED = "destroyed"


@dataclass(frozen=True, slots=True)
class DeviceEvent:
    """A device appeared, changed or went away."""

    change: Change | None
    device: Device

    @classmethod
    def from_wire(cls, msg: device_pb2.WatchDevicesResponse) -> DeviceEvent:
        """Convert a wire WatchDevicesResponse."""
        name = device_pb2.DeviceChange.Name(msg.change).removeprefix("DEVICE_CHANGE_")
        return cls(Change.__members__.get(name), Device.from_wire(msg.device))


@dataclass(frozen=True, slots=True)
class ContextEvent:
    """A context was created or destroyed (``reason`` says why it was destroyed)."""

    change: Change | None
    context_id: str
    device: str
    reason: str

    @classmethod
    def from_wire(cls, msg: stats_pb2.ContextEvent) -> ContextEvent:
        """Convert a wire ContextEvent."""
        name = stats_pb2.ContextChange.Name(msg.change).removeprefix("CONTEXT_CHANGE_")
        return cls(Change.__members__.get(name), msg.context_id, msg.device, msg.reason)


Event = Stats | Job | ContextEvent | DeviceEvent
"""One item of the live event stream (``StatsService.StreamEvents``)."""


def event_from_wire(msg: stats_pb2.StreamEventsResponse) -> Event | None:
    """Convert one StreamEvents item (None for an empty or unknown one)."""
    which = msg.WhichOneof("event")
    if which == "stats":
        return Stats.from_wire(msg.stats)
    if which == "job":
        return Job.from_wire(msg.job)
    if which == "context":
        return ContextEvent.from_wire(msg.context)
    if which == "device":
        return DeviceEvent.from_wire(msg.device)
    return None
