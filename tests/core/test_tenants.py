"""Tenants in core: accounts inside one uid, owned and limited apart from each other."""

from __future__ import annotations

import pytest

from npud.core.owner import Owner, TenantQuota
from npud.core.service import CoreLimits
from npud.errors import NotFound, QuotaExceeded
from npud.vocab import BufferUsage
from tests.core.harness import make_bed

MiB = 1 << 20
QUOTA = TenantQuota(max_contexts=2, max_live_jobs=8, memory_bytes=2 * MiB)
ROOT = Owner(uid=0, gid=0, pid=10)
POD_A = Owner(uid=0, gid=0, pid=11, tenant="a", quota=QUOTA)
POD_A_OTHER_PROCESS = Owner(uid=0, gid=0, pid=12, tenant="a", quota=QUOTA)
POD_B = Owner(uid=0, gid=0, pid=13, tenant="b", quota=QUOTA)


def test_a_tenant_is_its_own_party_and_never_admin() -> None:
    """Same uid, different tenants: neither owns the other's objects; a tenant of uid 0 is
    no admin; two processes of one tenant share its objects; the plain user owns neither."""
    assert not POD_A.is_admin()
    assert ROOT.is_admin()
    assert not POD_A.owns(POD_B)
    assert POD_A.owns(POD_A_OTHER_PROCESS)
    assert not ROOT.owns(POD_A)
    assert POD_A.account == (0, "a")
    assert ROOT.account == (0, None)


def test_tenants_of_one_uid_see_and_spend_apart() -> None:
    """Each tenant lists only its contexts, cannot reach the other's, and exhausting its own
    context and byte quota leaves the other tenant's and the user's limits untouched."""
    core = make_bed(limits=CoreLimits(max_contexts_per_user=64)).core
    a = core.create_context(POD_A)
    b = core.create_context(POD_B)
    assert [c.id for c in core.contexts(POD_A, all_users=True)] == [a.id]
    assert [c.id for c in core.contexts(POD_B)] == [b.id]
    with pytest.raises(NotFound):
        core.create_buffer(POD_A, b.id, 4096, usage=BufferUsage.SCRATCH)
    core.create_buffer(POD_A_OTHER_PROCESS, a.id, 2 * MiB, usage=BufferUsage.SCRATCH)
    with pytest.raises(QuotaExceeded, match="per tenant is 2097152"):
        core.create_buffer(POD_A, a.id, 1, usage=BufferUsage.SCRATCH)
    core.create_context(POD_A)
    with pytest.raises(QuotaExceeded, match="per tenant is 2"):
        core.create_context(POD_A)
    assert core.user_memory(0, "a") == 2 * MiB
    core.create_buffer(POD_B, b.id, 2 * MiB, usage=BufferUsage.SCRATCH)
    core.create_context(POD_B)
    # The plain user of the same uid counts neither tenant's contexts against its limit.
    for _ in range(10):
        core.create_context(ROOT)
    assert core.user_memory(0) == 0
