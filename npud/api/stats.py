"""StatsService: statistics snapshots and the live event stream behind ``npuctl top``."""

# ruff: noqa: N802 - servicer methods carry the rpc names of the .proto

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from npud.api.convert import (
    context_event_to_wire,
    device_change_to_wire,
    device_stats_to_wire,
    device_to_wire,
)
from npud.api.jobs import JobServicer
from npud.api.state import ApiState, EventFeed
from npud.api.status import streaming, unary
from npud.core.events import ContextEvent, DeviceEvent, JobEvent
from npud.core.limits import bounded
from npud.errors import NotFound, PermissionDenied
from npud.v1 import device_pb2, stats_pb2, stats_pb2_grpc


class StatsServicer(stats_pb2_grpc.StatsServiceServicer):
    """Converts core's statistics() snapshots; never counts anything itself."""

    def __init__(self, state: ApiState, jobs: JobServicer) -> None:
        self._state = state
        self._jobs = jobs

    def snapshot(self, device: str = "") -> stats_pb2.GetStatsResponse:
        """Daemon and device statistics (one device if named).

        Raises:
            NotFound: no such device.
        """
        state = self._state
        core = state.core
        names = [device] if device else [e.name for e in core.devices()]
        devices = [
            device_stats_to_wire(core.device_report(name), core.device_health(name))
            for name in names
        ]
        return stats_pb2.GetStatsResponse(
            daemon=stats_pb2.DaemonStats(
                version=state.version,
                uptime_s=state.uptime_s(),
                sessions=state.sessions.statistics().open,
                status=state.current_status(),
                shutting_down=state.shutting_down,
            ),
            devices=devices,
        )

    @unary
    async def GetStats(
        self, request: stats_pb2.GetStatsRequest, context: Any
    ) -> stats_pb2.GetStatsResponse:
        """A snapshot of every device's scheduler and memory."""
        self._state.caller(context)
        return self.snapshot(request.device)

    @streaming
    async def StreamEvents(
        self, request: stats_pb2.StreamEventsRequest, context: Any
    ) -> AsyncIterator[stats_pb2.StreamEventsResponse]:
        """Statistics every interval; the caller's job/context events and device events between."""
        state = self._state
        caller = state.caller(context)
        bounds = state.core.limits.bounds
        if request.interval_s != 0:  # 0 (unset): one second
            bounded(
                "interval_s",
                request.interval_s,
                low=bounds.min_event_interval_s,
                high=bounds.max_event_interval_s,
                why="0 means 1 s; shorter intervals would make one watcher a busy loop",
            )
        if request.all and not caller.admin:
            raise PermissionDenied(
                f"every owner's events are for admins; {caller.owner} is not one"
            )
        interval = request.interval_s or 1.0
        core = state.core
        loop_time = asyncio.get_running_loop().time
        with EventFeed(core) as feed:
            yield stats_pb2.StreamEventsResponse(stats=self.snapshot())
            next_at = loop_time() + interval
            while True:
                event = await feed.get(max(0.0, next_at - loop_time()))
                if event is None or loop_time() >= next_at:
                    yield stats_pb2.StreamEventsResponse(stats=self.snapshot())
                    next_at = loop_time() + interval
                if event is None:
                    continue
                if isinstance(event, JobEvent):
                    msg = self._jobs._job_of_event(caller, event, everyone=request.all)
                    if msg is not None:
                        yield stats_pb2.StreamEventsResponse(job=msg)
                elif isinstance(event, ContextEvent):
                    mine = (event.owner_uid, event.tenant) == caller.owner.account or (
                        request.all and caller.admin
                    )
                    if mine:
                        yield stats_pb2.StreamEventsResponse(context=context_event_to_wire(event))
                elif isinstance(event, DeviceEvent):
                    try:
                        entry = core.device(event.device)
                    except NotFound:
                        continue
                    change = device_change_to_wire(event)
                    yield stats_pb2.StreamEventsResponse(
                        device=device_pb2.WatchDevicesResponse(
                            change=change,
                            device=device_to_wire(
                                entry.device, core.device_health(entry.name), node=entry.node
                            ),
                        )
                    )


__all__ = ["StatsServicer"]
