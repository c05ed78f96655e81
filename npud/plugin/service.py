"""The DevicePlugin service the kubelet calls, over the share table and the allocator.

ListAndWatch sends the whole share list at once and again after every change of the table
(:meth:`Watchers.changed` wakes every open stream); Allocate turns each container's shares into
an npud tenant (:mod:`npud.plugin.allocations`); GetPreferredAllocation packs shares onto few
devices; PreStartContainer has nothing to do (the options say so, and the kubelet never calls
it). A failure reaches the kubelet as a gRPC status with a message a person can act on (it
shows in the pod's events): INVALID_ARGUMENT for shares that are not ours, UNAVAILABLE when npud
is not running.
"""

# ruff: noqa: N802 - servicer methods carry the rpc names of the .proto

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from npud.errors import InvalidArgument, NpudError, Unavailable
from npud.log import get_logger
from npud.plugin.allocations import Allocator
from npud.plugin.shares import ShareTable
from npud.plugin.v1beta1 import deviceplugin_pb2 as dp
from npud.plugin.v1beta1 import deviceplugin_pb2_grpc as dp_grpc

_CODES = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
}


def _code(error: NpudError) -> grpc.StatusCode:
    for cls, code in _CODES.items():
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.FAILED_PRECONDITION


class Watchers:
    """Wakes every ListAndWatch stream when the share table changes (loop thread only)."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def changed(self) -> None:
        """The table changed: every stream sends the list again."""
        self._event.set()
        self._event = asyncio.Event()

    async def wait(self) -> None:
        """Until the next :meth:`changed`."""
        await self._event.wait()


class DevicePluginService(dp_grpc.DevicePluginServicer):
    """The kubelet's view of npud's NPUs (see the module docstring)."""

    def __init__(self, shares: ShareTable, watchers: Watchers, allocator: Allocator) -> None:
        self._shares = shares
        self._watchers = watchers
        self._allocator = allocator
        self._log = get_logger("npud.plugin")

    def _list(self) -> dp.ListAndWatchResponse:
        return dp.ListAndWatchResponse(
            devices=[dp.Device(ID=s.id, health=s.health) for s in self._shares.shares()]
        )

    async def GetDevicePluginOptions(
        self, request: dp.Empty, context: Any
    ) -> dp.DevicePluginOptions:
        """Preferred allocations yes, PreStartContainer no."""
        return dp.DevicePluginOptions(
            pre_start_required=False, get_preferred_allocation_available=True
        )

    async def ListAndWatch(
        self, request: dp.Empty, context: Any
    ) -> AsyncIterator[dp.ListAndWatchResponse]:
        """The list now, then after every change, until the kubelet hangs up."""
        while True:
            seen = self._shares.version
            yield self._list()
            if self._shares.version == seen:
                await self._watchers.wait()

    async def GetPreferredAllocation(
        self, request: dp.PreferredAllocationRequest, context: Any
    ) -> dp.PreferredAllocationResponse:
        """Per container, shares packed onto as few devices as possible."""
        return dp.PreferredAllocationResponse(
            container_responses=[
                dp.ContainerPreferredAllocationResponse(
                    deviceIDs=self._shares.preferred(
                        r.available_deviceIDs, r.must_include_deviceIDs, r.allocation_size
                    )
                )
                for r in request.container_requests
            ]
        )

    async def Allocate(self, request: dp.AllocateRequest, context: Any) -> dp.AllocateResponse:
        """One npud tenant per container; its sockets, credential and environment."""
        responses = []
        for r in request.container_requests:
            try:
                responses.append(await self._allocator.allocate(list(r.devices_ids)))
            except NpudError as exc:
                self._log.warning(
                    "plugin.allocate_failed", shares=list(r.devices_ids), error=str(exc)
                )
                return _refuse(context, _code(exc), f"npud-device-plugin: {exc}")
            except OSError as exc:
                self._log.warning(
                    "plugin.allocate_failed", shares=list(r.devices_ids), error=str(exc)
                )
                return _refuse(
                    context,
                    grpc.StatusCode.INTERNAL,
                    f"npud-device-plugin: cannot write the tenant credential: {exc}",
                )
        self._log.info("plugin.allocated", containers=len(responses))
        return dp.AllocateResponse(container_responses=responses)

    async def PreStartContainer(
        self, request: dp.PreStartContainerRequest, context: Any
    ) -> dp.PreStartContainerResponse:
        """Nothing to prepare."""
        return dp.PreStartContainerResponse()


def _refuse(context: Any, code: grpc.StatusCode, details: str) -> dp.AllocateResponse:
    """Fail the rpc with ``code`` and ``details`` by setting its status, not by
    ``context.abort()``: grpc.aio keeps the AbortError on the call, a reference cycle through
    the handler's frames that holds the request until a full garbage-collector pass. grpc
    discards the returned (empty) response and sends the status."""
    context.set_code(code)
    context.set_details(details)
    return dp.AllocateResponse()
