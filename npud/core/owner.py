"""Who a request comes from: the owner identity of contexts, jobs and quotas.

npud trusts only identities the kernel vouches for: the API layer fills an :class:`Owner`
from the peer credentials of the client's socket (``SO_PEERCRED``: uid, gid, pid) and hands it
to every core call. Ownership is per user (uid): two processes of one user may use each other's
contexts, other users see them as not found. An *admin* (root, or a member of the configured
admin group) sees and may act on every context.
"""

from __future__ import annotations

from dataclasses import dataclass, field


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

    def is_admin(self, admin_gid: int | None = None) -> bool:
        """Whether this owner may act on every context.

        Args:
            admin_gid: the configured admin group, or ``None`` when only root is admin.
        """
        if self.uid == 0:
            return True
        return admin_gid is not None and (self.gid == admin_gid or admin_gid in self.groups)

    def owns(self, other: Owner) -> bool:
        """Whether objects created by ``other`` belong to this owner (same user)."""
        return self.uid == other.uid

    def __str__(self) -> str:
        who = self.name if self.name is not None else f"uid {self.uid}"
        return f"{who} (pid {self.pid})" if self.pid else who


SYSTEM = Owner(uid=0, gid=0, pid=0, name="npud")
"""The daemon itself (shutdown, device loss): an admin."""
