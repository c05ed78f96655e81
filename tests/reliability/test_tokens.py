"""The token table is bounded per user: handshaking in a loop cannot grow it without limit."""

from __future__ import annotations

from npud.api.identity import TokenRegistry
from npud.core.owner import Owner

ALICE = Owner(uid=1000, gid=1000, pid=1)
BOB = Owner(uid=1001, gid=1001, pid=2)


def test_live_tokens_per_user_are_capped_oldest_first() -> None:
    """Past the cap a user's oldest token is revoked; other users' tokens are untouched."""
    reg = TokenRegistry(max_per_user=4)
    bob = reg.issue(BOB)
    alice = [reg.issue(ALICE) for _ in range(10)]
    assert reg.statistics().live == 5
    assert [reg.owner(t) for t in alice[:6]] == [None] * 6
    assert all(reg.owner(t) == ALICE for t in alice[6:])
    assert reg.owner(bob) == BOB
    reg.revoke(alice[-1])
    reg.revoke(alice[-1])
    assert reg.statistics().live == 4
    assert reg.statistics().issued == 11
