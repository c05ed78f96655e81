"""Who a request comes from: the owner identity of contexts, jobs and quotas.

npud trusts only identities the kernel vouches for: the API layer fills an :class:`Owner`
from the peer credentials of the client's socket (``SO_PEERCRED``: uid, gid, pid) and hands it
to every core call. Ownership is per user (uid): two processes of one user may use each other's
contexts, other users see them as not found. An *admin* (root, or a member of the configured
admin group) sees and may act on every context.

Tenants
-------
One uid is not always one party: in a Kubernetes pod every container usually runs as root, so
two pods sharing an NPU would be one user, and both admins. A *tenant* is an account inside a
uid that an operator created (a device-plugin allocation, say) and that a process joined with
the tenant's credential. A tenant owner is its own party: it owns only what the same tenant
created, is never an admin whatever its uid, and is counted against its own
:class:`TenantQuota` instead of the per-user limits. :attr:`Owner.account` is the key core
counts and compares by: ``(uid, None)`` for a plain user, ``(uid, tenant)`` for a tenant.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class TenantQuota:
    """What one tenant may hold at once, in place of the per-user limits (a value object)."""

    max_contexts: int
    max_live_jobs: int
    memory_bytes: int | None = None  # over all its contexts; None: no byte limit


Account = tuple[int, str | None]
"""Who is counted: ``(uid, tenant)``, with ``tenant`` None for a plain user."""


@dataclass(frozen=True, slots=True)
class Owner:
    """The identity behind a request (a value object).

    ``groups`` are supplementary group ids where the API layer knows them; ``name`` is a user
    name for display only and never decides anything.
    """

    uid: int
    gid: int
    pid: int = 0
    name: str | None = None
    groups: frozenset[int] = field(default_factory=frozenset)
    tenant: str | None = None
    quota: TenantQuota | None = None  # the tenant's limits (None for a plain user)

    @property
    def account(self) -> Account:
        """The key ownership and limits are counted by (see "Tenants" above)."""
        return (self.uid, self.tenant)

    def is_admin(self, admin_gid: int | None = None) -> bool:
        """Whether this owner may act on every context.

        Args:
            admin_gid: the configured admin group, or ``None`` when only root is admin.
        """
        if self.tenant is not None:
            return False  # a tenant is confined to its own objects, whatever its uid
        if self.uid == 0:
            return True
        return admin_gid is not None and (self.gid == admin_gid or admin_gid in self.groups)

    def owns(self, other: Owner) -> bool:
        """Whether objects created by ``other`` belong to this owner (same user, same tenant)."""
        return self.uid == other.uid and self.tenant == other.tenant

    def __str__(self) -> str:
        who = self.name if self.name is not None else f"uid {self.uid}"
        if self.tenant is not None:
            who = f"tenant {self.tenant} ({who})"
        return f"{who} (pid {self.pid})" if self.pid else who


SYSTEM = Owner(uid=0, gid=0, pid=0, name="npud")
"""The daemon itself (shutdown, device loss): an admin."""
