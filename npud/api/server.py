"""The gRPC server: every npud.v1 service, standard health checking and server reflection.

:func:`build_server` returns a ``grpc.aio`` server (one event loop, no thread per stream: a
sync server would pin a worker thread per open Watch stream) with the servicers registered,
the health service reporting SERVING for every npud service, and reflection listing them all
(``grpcurl -plaintext -unix /run/npud/npud.sock list``).
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
import grpc.aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection

from npud.api.admin import AdminServicer
from npud.api.buffers import BufferServicer
from npud.api.contexts import ContextServicer
from npud.api.decoding import DecodeGuard
from npud.api.devices import DeviceServicer
from npud.api.jobs import JobServicer
from npud.api.state import ApiState
from npud.api.stats import StatsServicer
from npud.api.system import SystemServicer
from npud.api.tenants import TenantServicer, TenantTable
from npud.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    buffer_pb2,
    buffer_pb2_grpc,
    context_pb2,
    context_pb2_grpc,
    device_pb2,
    device_pb2_grpc,
    job_pb2,
    job_pb2_grpc,
    stats_pb2,
    stats_pb2_grpc,
    system_pb2,
    system_pb2_grpc,
    tenant_pb2,
    tenant_pb2_grpc,
)

SERVICE_NAMES: tuple[str, ...] = (
    system_pb2.DESCRIPTOR.services_by_name["SystemService"].full_name,
    device_pb2.DESCRIPTOR.services_by_name["DeviceService"].full_name,
    context_pb2.DESCRIPTOR.services_by_name["ContextService"].full_name,
    buffer_pb2.DESCRIPTOR.services_by_name["BufferService"].full_name,
    job_pb2.DESCRIPTOR.services_by_name["JobService"].full_name,
    stats_pb2.DESCRIPTOR.services_by_name["StatsService"].full_name,
    admin_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name,
    tenant_pb2.DESCRIPTOR.services_by_name["TenantService"].full_name,
)
"""Every npud service's full name ("npud.v1.JobService", ...)."""

MAX_MESSAGE_BYTES = 64 << 20
"""Largest message either way (a WriteBuffer chunk, a readback): 64 MiB."""


@dataclass(slots=True, eq=False)
class Server:
    """The running gRPC server and its health servicer."""

    server: grpc.aio.Server
    health: health_aio.HealthServicer
    stats: StatsServicer

    async def set_serving(self, serving: bool) -> None:
        """Report SERVING / NOT_SERVING for the whole server and every npud service."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        for name in ("", *SERVICE_NAMES):
            await self.health.set(name, status)


def build_server(
    state: ApiState,
    address: str,
    *,
    admin: AdminServicer | None = None,
    tenants: TenantTable | None = None,
) -> Server:
    """A grpc.aio server bound to ``address`` (e.g. ``unix:/run/npud/npud.sock``), not started.

    ``admin`` is the daemon's AdminService (default: no fault injection, no rescan);
    ``tenants`` its tenant table (default: a fresh one).

    Raises:
        RuntimeError: the address cannot be bound (grpc's own error).
    """
    server = grpc.aio.server(
        interceptors=[DecodeGuard()],
        options=[
            ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
            ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
            ("grpc.so_reuseport", 0),
        ],
    )
    jobs = JobServicer(state)
    stats = StatsServicer(state, jobs)
    system_pb2_grpc.add_SystemServiceServicer_to_server(SystemServicer(state), server)
    device_pb2_grpc.add_DeviceServiceServicer_to_server(DeviceServicer(state), server)
    context_pb2_grpc.add_ContextServiceServicer_to_server(ContextServicer(state), server)
    buffer_pb2_grpc.add_BufferServiceServicer_to_server(BufferServicer(state), server)
    job_pb2_grpc.add_JobServiceServicer_to_server(jobs, server)
    stats_pb2_grpc.add_StatsServiceServicer_to_server(stats, server)
    admin_pb2_grpc.add_AdminServiceServicer_to_server(admin or AdminServicer(state), server)
    tenant_pb2_grpc.add_TenantServiceServicer_to_server(
        TenantServicer(state, tenants if tenants is not None else TenantTable()), server
    )
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (
            *SERVICE_NAMES,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    server.add_insecure_port(address)
    return Server(server, health, stats)
