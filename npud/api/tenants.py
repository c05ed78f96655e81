"""Tenants: accounts inside one uid, so that processes of the same user are kept apart.

npud tells clients apart by the uid the kernel vouches for. In Kubernetes that is not enough:
containers usually run as root, so every pod on a node would be the same user, and an admin.
A *tenant* is an account an operator (the device plugin, for each allocation) creates with an
admin's token through ``TenantService.CreateTenant``. The daemon answers with a random 256-bit
*credential*; a process that presents it to ``JoinTenant`` right after its identity handshake
has its session token rebound to an :class:`~npud.core.owner.Owner` carrying the tenant's name
and quota. From then on core counts and compares it by ``(uid, tenant)``: it sees only its
tenant's contexts, is never an admin, and its limits are the tenant's, not its user's.

The quota is sized by the tenant's share of the devices, ``shares / total_shares`` (a device
plugin that advertises each NPU as N shares and gives a pod k of them creates a tenant with
k out of N): that fraction of the per-user context and live-job limits (at least one each) and
of the per-user byte limit, or of the devices' DRAM budget when there is none. A request may
set any limit explicitly instead.

The credential is a bearer secret, like the session token: whoever holds it acts as the tenant.
The table keeps only its SHA-256, so a listing or a core dump of the daemon does not reveal
it. Tenants live as long as the daemon (a restart forgets them: the plugin creates new ones
for new allocations) or until ``DeleteTenant``.
"""

# ruff: noqa: N802 - servicer methods carry the rpc names of the .proto

from __future__ import annotations

import contextlib
import hashlib
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Final

from npud.api.state import ApiState, Caller
from npud.api.status import unary
from npud.core.owner import SYSTEM, Owner, TenantQuota
from npud.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    NpudError,
    PermissionDenied,
    Unauthenticated,
)
from npud.v1 import tenant_pb2, tenant_pb2_grpc
from npud.vocab import MemoryTier

NAME_PATTERN: Final = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
"""What a tenant name may be: short, printable, safe in a file name and a metric label."""

MAX_TOTAL_SHARES: Final = 1 << 16
"""The finest a device may be divided."""

MAX_LABEL: Final = 256
"""Longest label kept, in characters."""


def _digest(credential: str) -> str:
    return hashlib.sha256(credential.encode()).hexdigest()


@dataclass(slots=True, eq=False)
class Tenant:
    """One tenant: its name, its share, its quota and the digest of its credential."""

    name: str
    shares: int
    total_shares: int
    quota: TenantQuota
    digest: str
    label: str = ""


@dataclass(frozen=True, slots=True)
class TenantStatistics:
    """Tenants now, and how many were created, deleted and joined so far."""

    tenants: int
    created: int
    deleted: int
    joined: int
    refused: int


@dataclass(slots=True, eq=False)
class TenantTable:
    """Every tenant by name and by credential digest. Lives on the event loop's thread."""

    _by_name: dict[str, Tenant] = field(default_factory=dict)
    _by_digest: dict[str, Tenant] = field(default_factory=dict)
    _created: int = 0
    _deleted: int = 0
    _joined: int = 0
    _refused: int = 0

    def create(
        self,
        name: str,
        shares: int,
        total_shares: int,
        quota: TenantQuota,
        *,
        label: str = "",
    ) -> tuple[Tenant, str]:
        """A new tenant and its credential (returned once; the table keeps its digest).

        Raises:
            InvalidArgument: a bad name, zero shares, or shares above total_shares.
            AlreadyExists: the name is taken.
        """
        check_share(name, shares, total_shares)
        if name in self._by_name:
            raise AlreadyExists(f"tenant {name!r} exists; delete it or ask to replace it")
        credential = secrets.token_urlsafe(32)
        tenant = Tenant(name, shares, total_shares, quota, _digest(credential), label[:MAX_LABEL])
        self._by_name[name] = tenant
        self._by_digest[tenant.digest] = tenant
        self._created += 1
        return tenant, credential

    def delete(self, name: str) -> Tenant:
        """Forget tenant ``name`` (its credential stops working).

        Raises:
            NotFound: no such tenant.
        """
        tenant = self._by_name.pop(name, None)
        if tenant is None:
            raise NotFound(f"no tenant {name!r}")
        self._by_digest.pop(tenant.digest, None)
        self._deleted += 1
        return tenant

    def get(self, name: str) -> Tenant | None:
        """Tenant ``name``, or None."""
        return self._by_name.get(name)

    def by_credential(self, credential: str) -> Tenant:
        """The tenant ``credential`` belongs to.

        Raises:
            Unauthenticated: no tenant has that credential (deleted, or never issued).
        """
        tenant = self._by_digest.get(_digest(credential))
        if tenant is None:
            self._refused += 1
            raise Unauthenticated(
                "unknown tenant credential: the tenant was deleted or the daemon restarted "
                "since it was issued; ask the operator (or the device plugin) for a new one"
            )
        self._joined += 1
        return tenant

    def tenants(self) -> list[Tenant]:
        """Every tenant, in creation order."""
        return list(self._by_name.values())

    def statistics(self) -> TenantStatistics:
        """A snapshot of the table."""
        return TenantStatistics(
            tenants=len(self._by_name),
            created=self._created,
            deleted=self._deleted,
            joined=self._joined,
            refused=self._refused,
        )


def check_share(name: str, shares: int, total_shares: int) -> None:
    """Validate a tenant's name and share.

    Raises:
        InvalidArgument: saying which field is wrong and what it may be.
    """
    if not NAME_PATTERN.fullmatch(name):
        raise InvalidArgument(
            f"name: {name[:80]!r} is not a tenant name (1..63 of [a-z0-9._-], starting with a "
            "letter or digit)"
        )
    if not 1 <= total_shares <= MAX_TOTAL_SHARES:
        raise InvalidArgument(f"total_shares must be in 1..{MAX_TOTAL_SHARES}, got {total_shares}")
    if not 1 <= shares <= total_shares:
        raise InvalidArgument(f"shares must be in 1..total_shares ({total_shares}), got {shares}")


def sized_quota(state: ApiState, shares: int, total_shares: int, asked: TenantQuota) -> TenantQuota:
    """The tenant's quota: what ``asked`` sets (non-zero fields), the rest sized by its share.

    See the module docstring for the sizing. Does not raise for a validated share.
    """
    core = state.core
    fraction = shares / total_shares
    limits = core.limits
    contexts = asked.max_contexts or max(1, int(limits.max_contexts_per_user * fraction))
    jobs = asked.max_live_jobs or max(1, int(limits.max_live_jobs_per_user * fraction))
    memory = asked.memory_bytes
    if not memory:
        base = limits.max_memory_bytes_per_user
        if base is None:
            base = sum(
                d.residency.tier(MemoryTier.DRAM).budget_bytes for d in core.statistics().devices
            )
        memory = max(1, int(base * fraction)) if base else None
    return TenantQuota(max_contexts=contexts, max_live_jobs=jobs, memory_bytes=memory)


def tenant_owner(owner: Owner, tenant: Tenant) -> Owner:
    """``owner`` (kernel-verified uid, gid, pid) acting as ``tenant``."""
    return Owner(
        uid=owner.uid,
        gid=owner.gid,
        pid=owner.pid,
        name=owner.name,
        groups=owner.groups,
        tenant=tenant.name,
        quota=tenant.quota,
    )


class TenantServicer(tenant_pb2_grpc.TenantServiceServicer):
    """TenantService over the daemon's :class:`TenantTable` (see the module docstring)."""

    def __init__(self, state: ApiState, table: TenantTable) -> None:
        self._state = state
        self._table = table

    def _admin(self, context: Any, what: str) -> Caller:
        caller = self._state.caller(context)
        if not caller.admin:
            raise PermissionDenied(f"{what} is for admins; {caller.owner} is not one")
        return caller

    def _to_wire(self, tenant: Tenant) -> tenant_pb2.Tenant:
        core = self._state.core
        contexts = sum(
            1 for c in core.contexts(SYSTEM, all_users=True) if c.owner.tenant == tenant.name
        )
        sessions = sum(
            1
            for token in self._state.tokens.tokens()
            if (o := self._state.tokens.owner(token)) is not None and o.tenant == tenant.name
        )
        q = tenant.quota
        return tenant_pb2.Tenant(
            name=tenant.name,
            shares=tenant.shares,
            total_shares=tenant.total_shares,
            quota=tenant_pb2.TenantQuota(
                max_contexts=q.max_contexts,
                max_live_jobs=q.max_live_jobs,
                memory_bytes=q.memory_bytes or 0,
            ),
            contexts=contexts,
            sessions=sessions,
            label=tenant.label,
        )

    def _delete(self, name: str) -> int:
        """Delete tenant ``name``: its contexts, its sessions, its credential."""
        state = self._state
        self._table.delete(name)
        for token in state.tokens.tokens():
            owner = state.tokens.owner(token)
            if owner is not None and owner.tenant == name:
                state.tokens.revoke(token)
        destroyed = 0
        for ctx in state.core.contexts(SYSTEM, all_users=True):
            if ctx.owner.tenant == name and ctx.open:
                with contextlib.suppress(NpudError):
                    state.core.destroy_context(SYSTEM, ctx.id, reason=f"tenant {name} deleted")
                    destroyed += 1
        return destroyed

    @unary
    async def CreateTenant(
        self, request: tenant_pb2.CreateTenantRequest, context: Any
    ) -> tenant_pb2.CreateTenantResponse:
        """Create a tenant sized by its share (admins only)."""
        self._admin(context, "CreateTenant")
        self._state.require_serving()
        check_share(request.name, request.shares, request.total_shares)
        if request.name in {t.name for t in self._table.tenants()}:
            if not request.replace:
                raise AlreadyExists(
                    f"tenant {request.name!r} exists; delete it or set replace to replace it"
                )
            self._delete(request.name)
        q = request.quota
        asked = TenantQuota(
            max_contexts=q.max_contexts, max_live_jobs=q.max_live_jobs, memory_bytes=q.memory_bytes
        )
        quota = sized_quota(self._state, request.shares, request.total_shares, asked)
        tenant, credential = self._table.create(
            request.name, request.shares, request.total_shares, quota, label=request.label
        )
        return tenant_pb2.CreateTenantResponse(tenant=self._to_wire(tenant), credential=credential)

    @unary
    async def DeleteTenant(
        self, request: tenant_pb2.DeleteTenantRequest, context: Any
    ) -> tenant_pb2.DeleteTenantResponse:
        """Delete a tenant and everything it holds (admins only)."""
        self._admin(context, "DeleteTenant")
        return tenant_pb2.DeleteTenantResponse(contexts_destroyed=self._delete(request.name))

    @unary
    async def ListTenants(
        self, request: tenant_pb2.ListTenantsRequest, context: Any
    ) -> tenant_pb2.ListTenantsResponse:
        """Every tenant, without credentials (admins only)."""
        self._admin(context, "ListTenants")
        return tenant_pb2.ListTenantsResponse(
            tenants=[self._to_wire(t) for t in self._table.tenants()]
        )

    @unary
    async def JoinTenant(
        self, request: tenant_pb2.JoinTenantRequest, context: Any
    ) -> tenant_pb2.JoinTenantResponse:
        """Rebind the caller's session token to the tenant of the credential it presents."""
        caller = self._state.caller(context)
        if caller.owner.tenant is not None:
            raise FailedPrecondition(
                f"this session already acts as tenant {caller.owner.tenant}; a session joins "
                "one tenant, once"
            )
        if self._state.sessions.holds_contexts(caller.token):
            # Contexts created as the plain user stay the user's: joining later would leave
            # the session half in, half out of the tenant.
            raise FailedPrecondition(
                "join the tenant before creating contexts: this session holds contexts "
                "already; connect afresh and join first"
            )
        tenant = self._table.by_credential(request.credential)
        self._state.tokens.rebind(caller.token, tenant_owner(caller.owner, tenant))
        return tenant_pb2.JoinTenantResponse(tenant=self._to_wire(tenant))
