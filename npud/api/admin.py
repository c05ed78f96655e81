"""AdminService: operator actions guarded by admin identity - fault injection and rescans.

Reliability is only as good as its tests, and the faults a board produces in the field (a
hung engine, an allocation the kernel refuses, a device that disappears) must be producible on
a running daemon from outside, without patching it. So the daemon offers them as an rpc, with
three locks:

* the caller must be an admin (root or the configured ``admin_group``, from the kernel-verified
  identity of :mod:`npud.api.identity`);
* the daemon must have been started with ``fault_injection = true`` (off by default: a
  production board never arms faults);
* the device must be simulated (``capabilities.simulated``) and offer the simulated NPU's
  injection methods (:class:`FaultTarget`); a real NPU answers FAILED_PRECONDITION.

``RescanDevices`` is how a lost device comes back: the daemon re-opens every lost device (for
the simulated NPU a fresh device process of the same name and profile; for a real node the
node discovery finds again), closes the contexts of the lost one and serves the new one under
the old name. The daemon supplies that procedure as a :data:`Rescan` callable, because only
the daemon knows how its devices were opened.
"""

# ruff: noqa: N802 - servicer methods carry the rpc names of the .proto

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from npud.api.convert import device_to_wire
from npud.api.state import ApiState, Caller
from npud.api.status import unary
from npud.errors import DeviceLost, FailedPrecondition, InvalidArgument, PermissionDenied
from npud.log import get_logger
from npud.v1 import admin_pb2, admin_pb2_grpc, types_pb2
from npud.vocab import DeviceHealth, MemoryTier

MAX_FAULT_COUNT = 1024
"""Most allocations one OUT_OF_MEMORY injection may fail."""

_TIER_FROM_WIRE = {
    types_pb2.MEMORY_TIER_UNSPECIFIED: MemoryTier.DRAM,
    types_pb2.MEMORY_TIER_SRAM: MemoryTier.SRAM,
    types_pb2.MEMORY_TIER_DRAM: MemoryTier.DRAM,
}


@runtime_checkable
class FaultTarget(Protocol):
    """What a device must offer to have faults injected (the simulated NPU does)."""

    def inject_hang(self, engine: int) -> None:
        """The next job to start on ``engine`` never completes."""

    def inject_job_error(self, engine: int | None = None, message: str = "") -> None:
        """The next job to start (on ``engine``, or any) completes with an error."""

    def inject_oom(self, tier: MemoryTier, count: int = 1) -> None:
        """The next ``count`` allocations in ``tier`` fail."""

    def lose(self, reason: str = "") -> None:
        """Lose the device now."""


@dataclass(frozen=True, slots=True)
class RescanReport:
    """What a rescan did: devices served again, devices still lost and why."""

    reopened: tuple[str, ...]
    still_lost: tuple[str, ...]
    failures: tuple[str, ...]


Rescan = Callable[[], Awaitable[RescanReport]]
"""The daemon's procedure that re-opens lost devices."""


async def _no_rescan() -> RescanReport:
    return RescanReport((), (), ())


class AdminServicer(admin_pb2_grpc.AdminServiceServicer):
    """Fault injection on simulated devices and device rescans, for admins only."""

    def __init__(
        self, state: ApiState, *, fault_injection: bool = False, rescan: Rescan | None = None
    ) -> None:
        self._state = state
        self._faults = fault_injection
        self._rescan = rescan or _no_rescan
        self._log = get_logger("npud.admin")

    def _admin(self, context: Any, what: str) -> Caller:
        caller = self._state.caller(context)
        if not caller.admin:
            raise PermissionDenied(
                f"{what} is for admins (root or the daemon's admin_group); "
                f"{caller.owner} is not one"
            )
        return caller

    @unary
    async def InjectFault(
        self, request: admin_pb2.InjectFaultRequest, context: Any
    ) -> admin_pb2.InjectFaultResponse:
        """Arm one fault on a simulated device (see the module docstring for the locks)."""
        caller = self._admin(context, "fault injection")
        if not self._faults:
            raise PermissionDenied(
                "fault injection is disabled on this daemon: start it with fault_injection = "
                "true (NPUD_FAULT_INJECTION=1), for tests only"
            )
        core = self._state.core
        entry = core.device(request.device or None)
        device = entry.device
        if not device.capabilities.simulated or not isinstance(device, FaultTarget):
            raise FailedPrecondition(
                f"device {entry.name} is real hardware: faults are injected only into the "
                "simulated NPU"
            )
        if core.device_health(entry.name) is DeviceHealth.LOST:
            raise DeviceLost(f"device {entry.name} is lost; RescanDevices brings it back")
        engines = len(device.capabilities.engines)
        kind = request.kind

        def engine() -> int:
            if not 0 <= request.engine < engines:
                raise InvalidArgument(
                    f"engine {request.engine} is out of range: {entry.name} has engines "
                    f"0..{engines - 1}"
                )
            return request.engine

        if kind == admin_pb2.FAULT_KIND_HANG:
            device.inject_hang(engine())
        elif kind == admin_pb2.FAULT_KIND_JOB_ERROR:
            message = request.message or f"job error injected by {caller.owner}"
            device.inject_job_error(None if request.any_engine else engine(), message)
        elif kind == admin_pb2.FAULT_KIND_OUT_OF_MEMORY:
            tier = _TIER_FROM_WIRE.get(request.tier)
            if tier is None or device.capabilities.tier(tier).capacity_bytes == 0:
                raise InvalidArgument(
                    f"tier {request.tier} is not a memory tier of {entry.name} (SRAM or DRAM)"
                )
            count = request.count or 1
            if count > MAX_FAULT_COUNT:
                raise InvalidArgument(f"count must be 1..{MAX_FAULT_COUNT}, got {count}")
            device.inject_oom(tier, count)
        elif kind == admin_pb2.FAULT_KIND_DEVICE_LOSS:
            device.lose(request.message or f"device lost (injected by {caller.owner})")
        else:
            raise InvalidArgument(f"kind: {kind} is not a fault kind (HANG, JOB_ERROR, ...)")
        self._log.warning(
            "admin.fault_injected",
            device=entry.name,
            kind=admin_pb2.FaultKind.Name(kind),
            by=str(caller.owner),
        )
        return admin_pb2.InjectFaultResponse(device=entry.name)

    @unary
    async def RescanDevices(
        self, request: admin_pb2.RescanDevicesRequest, context: Any
    ) -> admin_pb2.RescanDevicesResponse:
        """Re-open every lost device; report what is served now."""
        caller = self._admin(context, "rescanning devices")
        report = await self._rescan()
        self._log.info(
            "admin.rescan",
            reopened=list(report.reopened),
            still_lost=list(report.still_lost),
            by=str(caller.owner),
        )
        core = self._state.core
        return admin_pb2.RescanDevicesResponse(
            reopened=report.reopened,
            still_lost=report.still_lost,
            failures=report.failures,
            devices=[
                device_to_wire(
                    e.device, core.device_health(e.name), core.device_report(e.name), node=e.node
                )
                for e in core.devices()
            ],
        )
