"""DeviceService: the devices the daemon serves, and changes to them."""

# ruff: noqa: N802 - servicer methods carry the rpc names of the .proto

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from npud.api.convert import device_change_to_wire, device_to_wire
from npud.api.state import ApiState, EventFeed
from npud.api.status import streaming, unary
from npud.core.events import DeviceEvent
from npud.core.service import DeviceEntry
from npud.v1 import device_pb2, device_pb2_grpc


class DeviceServicer(device_pb2_grpc.DeviceServiceServicer):
    """Lists devices (simulated ones say so) and streams their changes."""

    def __init__(self, state: ApiState) -> None:
        self._state = state

    def _device(self, entry: DeviceEntry) -> device_pb2.Device:
        core = self._state.core
        return device_to_wire(
            entry.device,
            core.device_health(entry.name),
            core.device_report(entry.name),
            node=entry.node,
        )

    @unary
    async def ListDevices(
        self, request: device_pb2.ListDevicesRequest, context: Any
    ) -> device_pb2.ListDevicesResponse:
        """Every device."""
        self._state.caller(context)
        return device_pb2.ListDevicesResponse(
            devices=[self._device(e) for e in self._state.core.devices()]
        )

    @unary
    async def GetDevice(
        self, request: device_pb2.GetDeviceRequest, context: Any
    ) -> device_pb2.GetDeviceResponse:
        """One device by name (NOT_FOUND otherwise)."""
        self._state.caller(context)
        entry = self._state.core.device(request.name or None)
        return device_pb2.GetDeviceResponse(device=self._device(entry))

    @streaming
    async def WatchDevices(
        self, request: device_pb2.WatchDevicesRequest, context: Any
    ) -> AsyncIterator[device_pb2.WatchDevicesResponse]:
        """Every device as ADDED, then each health change."""
        self._state.caller(context)
        core = self._state.core
        with EventFeed(core) as feed:
            for entry in core.devices():
                yield device_pb2.WatchDevicesResponse(
                    change=device_pb2.DEVICE_CHANGE_ADDED, device=self._device(entry)
                )
            while True:
                event = await feed.get()
                if not isinstance(event, DeviceEvent):
                    continue
                entry = core.device(event.device)
                change = device_change_to_wire(event)
                yield device_pb2.WatchDevicesResponse(change=change, device=self._device(entry))
