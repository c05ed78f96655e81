"""The sharing rule of persistent buffers, with contexts of two users (uids 1000 and 1001).

A free-form key lives in its creator's namespace; a content-addressed key is verified at seal
and global once sealed; nobody but the creator's user opens (so writes) an unsealed buffer.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from npud.clock import VirtualClock
from npud.core.buffers import Buffer
from npud.core.ids import ContextId
from npud.core.keys import content_digest, resolve
from npud.core.residency import ResidencyManager
from npud.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
)
from npud.vocab import BufferUsage, Persistence
from tests.core.test_residency import KiB, MemDevice

VICTIM, ATTACKER = 1000, 1001
V = ContextId("ctx-victim")
V2 = ContextId("ctx-victim-2")
X = ContextId("ctx-attacker")
WEIGHTS = bytes((i * 7 + 3) % 256 for i in range(4 * KiB))
ZEROS = bytes(len(WEIGHTS))
DIGEST = hashlib.sha256(WEIGHTS).hexdigest()
LLM_KEY = f"npud-llm:sha256:{DIGEST}"


def _manager(state_dir: Path | None = None) -> ResidencyManager:
    return ResidencyManager(MemDevice(), VirtualClock(), state_dir=state_dir)


def _create(res: ResidencyManager, ctx: ContextId, uid: int, key: str | None) -> Buffer:
    return res.create(
        ctx,
        len(WEIGHTS),
        usage=BufferUsage.WEIGHTS,
        persistence=Persistence.PERSISTENT,
        key=key,
        uid=uid,
    )


def test_another_user_cannot_open_or_overwrite_an_unsealed_upload() -> None:
    """While the victim uploads a content key, the attacker's open finds nothing of it; after
    the seal the attacker may open and read it but not write it, and the bytes stay the
    victim's."""
    res = _manager()
    buf = _create(res, V, VICTIM, LLM_KEY)
    res.write(buf, 0, WEIGHTS[:100])
    with pytest.raises(NotFound):
        res.open_persistent(X, LLM_KEY, uid=ATTACKER)
    res.write(buf, 100, WEIGHTS[100:])
    sealed = res.seal(V, buf)
    seen = res.open_persistent(X, LLM_KEY, uid=ATTACKER)
    assert seen is sealed
    with pytest.raises(FailedPrecondition, match="sealed"):
        res.write(seen, 0, ZEROS)
    assert res.read(sealed, 0, len(WEIGHTS)) == WEIGHTS


def test_a_squatted_content_key_blocks_nobody_and_a_wrong_seal_is_refused() -> None:
    """The attacker creates the victim's content key first and fills it with zeros: its seal
    is refused (the bytes do not hash to the key) and the victim creates, uploads and seals
    its own; the attacker's later seal of the right bytes attaches to the victim's buffer."""
    res = _manager()
    squat = _create(res, X, ATTACKER, LLM_KEY)
    res.write(squat, 0, ZEROS)
    with pytest.raises(InvalidArgument, match="not the key"):
        res.seal(X, squat)
    assert not squat.sealed
    mine = _create(res, V, VICTIM, LLM_KEY)
    res.write(mine, 0, WEIGHTS)
    sealed = res.seal(V, mine)
    assert res.open_persistent(V2, LLM_KEY, uid=VICTIM) is sealed
    assert res.read(sealed, 0, len(WEIGHTS)) == WEIGHTS
    res.write(squat, 0, WEIGHTS)
    assert res.seal(X, squat) is sealed
    assert res.statistics().dedups == 1
    with pytest.raises(AlreadyExists):
        _create(res, X, ATTACKER, LLM_KEY)


def test_free_form_keys_are_per_user_and_shared_only_when_sealed_and_named() -> None:
    """Two users' ``model@1`` are two buffers; the attacker reaches the victim's only as
    ``~1000/model@1``, only once sealed, and may not create keys in the victim's namespace."""
    res = _manager()
    squat = _create(res, X, ATTACKER, "model@1")
    mine = _create(res, V, VICTIM, "model@1")
    assert mine is not squat
    assert res.open_persistent(V2, "model@1", uid=VICTIM) is mine
    with pytest.raises(NotFound):
        res.open_persistent(X, f"~{VICTIM}/model@1", uid=ATTACKER)
    res.write(mine, 0, WEIGHTS)
    res.seal(V, mine)
    assert res.open_persistent(X, "model@1", uid=ATTACKER) is squat
    assert res.open_persistent(X, f"~{VICTIM}/model@1", uid=ATTACKER) is mine
    with pytest.raises(PermissionDenied, match="namespace"):
        _create(res, X, ATTACKER, f"~{VICTIM}/model@2")
    with pytest.raises(InvalidArgument, match="global"):
        res.open_persistent(X, f"~{VICTIM}/{LLM_KEY}", uid=ATTACKER)


def test_namespaces_and_content_keys_survive_a_restart(tmp_path: Path) -> None:
    """A restarted daemon offers a sealed free-form key in its user's namespace only and a
    sealed content key to everyone, with the bytes that were sealed."""
    res = _manager(tmp_path)
    free = _create(res, V, VICTIM, "model@1")
    res.write(free, 0, WEIGHTS)
    res.seal(V, free)
    content = _create(res, V, VICTIM, LLM_KEY)
    res.write(content, 0, WEIGHTS)
    res.seal(V, content)
    fresh = _manager(tmp_path)
    with pytest.raises(NotFound):
        fresh.open_persistent(X, "model@1", uid=ATTACKER)
    back = fresh.open_persistent(V, "model@1", uid=VICTIM)
    assert back.sealed
    assert back.key == "model@1"
    assert fresh.open_persistent(X, f"~{VICTIM}/model@1", uid=ATTACKER) is back
    shared = fresh.open_persistent(X, LLM_KEY, uid=ATTACKER)
    assert shared.sealed
    assert fresh.read(shared, 0, len(WEIGHTS)) == WEIGHTS


_SEGMENT = st.text("abcxyz019._@+-", min_size=1, max_size=8)


@given(
    prefix=st.lists(_SEGMENT, max_size=3),
    digest=st.binary(min_size=1, max_size=16).map(lambda b: hashlib.sha256(b).hexdigest()),
    uid=st.integers(0, 2**32 - 1),
)
def test_content_keys_are_global_for_every_user(prefix: list[str], digest: str, uid: int) -> None:
    """Any ``[segment:]*sha256:<hex>`` key names the same global buffer for every uid and
    promises exactly its digest."""
    key = "".join(p + ":" for p in prefix) + "sha256:" + digest
    name = resolve(key, uid)
    assert (name.namespace, name.key, name.digest, name.stored) == (None, key, digest, key)
    assert content_digest(key) == digest


@given(key=st.text(st.characters(min_codepoint=33, max_codepoint=126), min_size=1, max_size=40))
def test_free_form_keys_of_two_users_never_meet(key: str) -> None:
    """A printable key that is not content-addressed is stored apart for two users, and each
    user's stored name is what the other must give to reach it."""
    try:
        one, two = resolve(key, VICTIM), resolve(key, ATTACKER)
    except InvalidArgument:
        assert key.startswith(("~", "sha256:"))
        return
    if one.digest is not None:
        assert one == two
        return
    if key.startswith("~"):  # already qualified: the same for both
        assert one == two
        return
    assert one.stored != two.stored
    assert resolve(one.stored, ATTACKER) == one
