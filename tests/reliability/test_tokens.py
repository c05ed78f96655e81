"""The token table is bounded per user: handshaking in a loop cannot grow it without limit,
nor revoke the tokens the user's other processes are using."""

from __future__ import annotations

import pytest

from npud.api.identity import TokenRegistry
from npud.core.owner import Owner
from npud.errors import QuotaExceeded
from npud.testing.daemon import DaemonProcess
from tests.reliability.harness import NOBODY, Actor

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


def test_a_full_table_makes_room_from_the_callers_idle_tokens_first() -> None:
    """At the cap, a handshake revokes the caller's own oldest idle token, then another
    process's idle one; a token in use (a live session or context) is never revoked, and when
    all are in use the handshake is QuotaExceeded."""
    busy: set[str] = set()
    reg = TokenRegistry(max_per_user=3, in_use=busy.__contains__)
    other = Owner(uid=ALICE.uid, gid=ALICE.gid, pid=7)  # another process of alice
    [kept] = [reg.issue(other)]
    busy.add(kept)
    spare = reg.issue(other)
    loop = [reg.issue(ALICE) for _ in range(5)]
    assert reg.owner(kept) == other
    assert reg.owner(spare) == other  # alice's loop recycled only its own tokens
    assert [reg.owner(t) for t in loop] == [None] * 4 + [ALICE]
    busy.add(loop[-1])
    again = reg.issue(ALICE)  # none of alice's own idle: the other process's idle one goes
    assert reg.owner(spare) is None
    busy.add(again)
    with pytest.raises(QuotaExceeded, match="every one with a live session"):
        reg.issue(ALICE)
    assert {reg.owner(t) for t in (kept, loop[-1], again)} == {other, ALICE}
    assert reg.statistics().refused == 1


def test_a_handshake_loop_leaves_the_users_other_processes_signed_in(shared: DaemonProcess) -> None:
    """As the attacker: one process of a user handshakes 1,100 times (past the 1,024 tokens a
    user may hold) while another process of the same user holds a session and a context; the
    victim process's token still works and its context is still there."""
    victim = Actor(shared.socket, NOBODY)
    attacker = Actor(shared.socket, NOBODY)
    try:
        ctx = victim.ok("create_context", label="token-victim")["context_id"]
        assert attacker.send(op="handshakes", n=1100, timeout=300) == {"ok": True, "value": 1100}
        queue = victim.ok("create_queue", ctx)
        assert queue["context_id"] == ctx
        assert [c["context_id"] for c in victim.ok("contexts")] == [ctx]
        victim.ok("destroy_context", ctx)
    finally:
        attacker.close()
        victim.close()
