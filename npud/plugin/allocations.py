"""Allocations: what a container that was given some shares receives.

Every Allocate becomes one npud tenant (see docs/kubernetes.md): the plugin asks npud, through
``TenantService.CreateTenant`` with its own admin token, for a tenant whose share is the number
of shares given out of the shares per device, so npud sizes its quota (contexts, live jobs,
bytes) by that fraction. The tenant's credential is written to a file of its own under the
plugin's state directory, and the container gets:

* a mount of the directory holding npud's sockets (the directory, not the socket files, so a
  restarted npud's new sockets are seen) and ``NPUD_SOCKET`` naming the socket in it;
* a read-only mount of the credential's directory and ``NPUD_TENANT_FILE`` naming the file, which
  npud.client reads to join the tenant;
* never a device node: the container reaches the NPU only through npud.

The kubelet does not tell a device plugin when a pod ends. A share is allocated again only
after its pod is gone, so when an Allocate names a share an older tenant held, that tenant is
deleted first (npud destroys its contexts) and its credential file removed.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import grpc

from npud.client.aio import AsyncClient
from npud.client.errors import from_rpc_error
from npud.errors import InvalidArgument, NotFound
from npud.plugin.shares import ShareTable
from npud.plugin.v1beta1 import deviceplugin_pb2 as dp
from npud.v1 import tenant_pb2

CREDENTIAL_FILE: Final = "credential"
CONTAINER_TENANT_DIR: Final = "/run/npud-tenant"


@dataclass(frozen=True, slots=True)
class Layout:
    """Where things are on the host and in the container."""

    npud_socket: Path  # on the host (and in this process)
    state_dir: Path  # on the host: tenants/<name>/credential
    container_socket_dir: str = "/run/npud"

    @property
    def container_socket(self) -> str:
        """``NPUD_SOCKET`` inside the container."""
        return f"{self.container_socket_dir}/{self.npud_socket.name}"


@dataclass(frozen=True, slots=True)
class AllocationStatistics:
    """Allocations made, tenants replaced, and tenants held now."""

    allocations: int
    replaced: int
    tenants: int


@dataclass(slots=True, eq=False)
class Allocator:
    """Turns Allocate requests into npud tenants (see the module docstring)."""

    shares: ShareTable
    layout: Layout
    client: Callable[[], Awaitable[AsyncClient]]
    _holder: dict[str, str] = field(default_factory=dict)  # share -> tenant name
    _allocations: int = 0
    _replaced: int = 0

    async def _delete(self, npu: AsyncClient, tenant: str) -> None:
        req = tenant_pb2.DeleteTenantRequest(name=tenant)
        try:
            await npu.tenant_stub.DeleteTenant(req, metadata=npu.metadata)
        except grpc.RpcError as exc:
            error = from_rpc_error(exc)
            if not isinstance(error, NotFound):
                raise error from None
        for share in [s for s, t in self._holder.items() if t == tenant]:
            del self._holder[share]
        shutil.rmtree(self.layout.state_dir / "tenants" / tenant, ignore_errors=True)
        self._replaced += 1

    def _write_credential(self, tenant: str, credential: str) -> Path:
        directory = self.layout.state_dir / "tenants" / tenant
        directory.mkdir(parents=True, mode=0o755, exist_ok=True)
        path = directory / CREDENTIAL_FILE
        tmp = directory / f".{CREDENTIAL_FILE}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w") as out:
            out.write(credential + "\n")
        tmp.replace(path)
        return directory

    async def allocate(self, share_ids: list[str]) -> dp.ContainerAllocateResponse:
        """One container's allocation: a new tenant for ``share_ids`` and what to give it.

        Raises:
            InvalidArgument: no shares, or one that is not ours.
            NpudError: npud refused (its error, e.g. Unavailable when it is not running).
        """
        if not share_ids:
            raise InvalidArgument("an allocation needs at least one share")
        strangers = [s for s in share_ids if not self.shares.is_share(s)]
        if strangers:
            raise InvalidArgument(f"not shares of this plugin: {', '.join(strangers[:8])}")
        npu = await self.client()
        for old in sorted({self._holder[s] for s in share_ids if s in self._holder}):
            await self._delete(npu, old)
        name = f"k8s-{secrets.token_hex(6)}"
        req = tenant_pb2.CreateTenantRequest(
            name=name,
            shares=len(share_ids),
            total_shares=self.shares.per_device,
            label=",".join(sorted(share_ids)),
        )
        try:
            resp = await npu.tenant_stub.CreateTenant(req, metadata=npu.metadata)
        except grpc.RpcError as exc:
            raise from_rpc_error(exc) from None
        try:
            directory = self._write_credential(name, resp.credential)
        except OSError:
            with contextlib.suppress(Exception):
                await self._delete(npu, name)
            raise
        for s in share_ids:
            self._holder[s] = name
        self._allocations += 1
        layout = self.layout
        return dp.ContainerAllocateResponse(
            envs={
                "NPUD_SOCKET": layout.container_socket,
                "NPUD_TENANT_FILE": f"{CONTAINER_TENANT_DIR}/{CREDENTIAL_FILE}",
                "NPUD_TENANT": name,
            },
            mounts=[
                dp.Mount(
                    container_path=layout.container_socket_dir,
                    host_path=str(layout.npud_socket.parent),
                    read_only=False,
                ),
                dp.Mount(
                    container_path=CONTAINER_TENANT_DIR, host_path=str(directory), read_only=True
                ),
            ],
        )

    def statistics(self) -> AllocationStatistics:
        """A snapshot of the allocator."""
        return AllocationStatistics(
            allocations=self._allocations,
            replaced=self._replaced,
            tenants=len(set(self._holder.values())),
        )
