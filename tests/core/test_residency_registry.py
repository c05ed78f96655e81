"""Persistent registrations survive a daemon restart and are restored lazily from disk."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from npud.clock import VirtualClock
from npud.core.buffers import Location
from npud.core.registry import MANIFEST_NAME, Registry
from npud.core.residency import ResidencyManager
from npud.errors import NotFound, Unavailable
from npud.vocab import BufferUsage, MemoryTier, Persistence
from tests.core.test_residency import A, B, KiB, MemDevice

WEIGHTS = bytes((i * 31 + 7) % 251 for i in range(12 * KiB))


def _daemon(state_dir: Path, dram: int = 64 * KiB) -> tuple[ResidencyManager, MemDevice]:
    dev = MemDevice(dram)
    return ResidencyManager(dev, VirtualClock(), state_dir=state_dir), dev


def _upload(res: ResidencyManager, key: str | None = "llama/v1/wq") -> str:
    buf = res.create(
        A, len(WEIGHTS), usage=BufferUsage.WEIGHTS, persistence=Persistence.PERSISTENT, key=key
    )
    res.write(buf, 0, WEIGHTS)
    sealed = res.seal(A, buf)
    assert sealed.key is not None
    return sealed.key


def test_seal_records_manifest_and_content_addressed_blob(tmp_path: Path) -> None:
    """Sealing writes blobs/<sha256> and a manifest entry naming key, size, usage and digest."""
    res, _ = _daemon(tmp_path)
    _upload(res)
    digest = hashlib.sha256(WEIGHTS).hexdigest()
    assert (tmp_path / "blobs" / digest).read_bytes() == WEIGHTS
    doc = json.loads((tmp_path / MANIFEST_NAME).read_text())
    assert doc["registrations"] == [
        {
            "key": "~0/llama/v1/wq",
            "sha256": digest,
            "size": len(WEIGHTS),
            "tier_preference": "any",
            "usage": "weights",
        }
    ]


def test_backed_weights_are_dropped_on_eviction_and_reread(tmp_path: Path) -> None:
    """Sealed weights with a backing file are dropped (no host copy) and re-read when needed."""
    res, dev = _daemon(tmp_path, dram=16 * KiB)
    key = _upload(res)
    weights = res.open_persistent(A, key)
    other = res.create(B, 16 * KiB, usage=BufferUsage.SCRATCH)
    assert other.device is not None
    assert weights.device is None
    assert weights.location is Location.BACKED
    stats = res.statistics()
    assert (stats.drops, stats.spills, stats.tier(MemoryTier.HOST).used_bytes) == (1, 0, 0)
    assert res.read(weights, 100, 50) == WEIGHTS[100:150]
    res.release(B, other)
    assert res.prepare([weights])
    assert weights.device is not None
    assert dev.contents(weights.device.handle) == WEIGHTS
    assert res.statistics().restored_bytes[MemoryTier.DRAM] == len(WEIGHTS)


def test_restart_restores_registrations_lazily(tmp_path: Path) -> None:
    """A restarted manager offers every key, uploads nothing until a job needs the bytes, then
    restores them from the backing file."""
    first, _ = _daemon(tmp_path)
    key = _upload(first)
    del first

    res, dev = _daemon(tmp_path)
    stats = res.statistics()
    assert stats.dormant_registrations == 1
    assert stats.buffers == 0
    assert dev.used(MemoryTier.DRAM) == 0
    buf = res.open_persistent(B, key)
    assert buf.sealed
    assert buf.device is None
    assert buf.location is Location.BACKED
    assert dev.used(MemoryTier.DRAM) == 0
    assert res.read(buf, 0, 64) == WEIGHTS[:64]
    assert res.prepare([buf])
    assert buf.device is not None
    assert dev.contents(buf.device.handle) == WEIGHTS
    stats = res.statistics()
    assert sum(stats.uploaded_bytes.values()) == 0
    assert (stats.misses, stats.restores, stats.dormant_registrations) == (1, 1, 0)


def test_restart_deduplicates_against_disk(tmp_path: Path) -> None:
    """Uploading contents already registered on disk ends up attached to that registration."""
    first, _ = _daemon(tmp_path)
    key = _upload(first, key=None)
    res, dev = _daemon(tmp_path)
    again = _upload(res, key=None)
    assert again == key
    assert res.statistics().dedups == 1
    assert len(Registry(tmp_path)) == 1
    assert dev.used(MemoryTier.DRAM) == 0  # the fresh upload was released; the key is backed


def test_corrupt_backing_copy_is_refused_and_forgotten(tmp_path: Path) -> None:
    """A backing file that no longer matches its digest makes open NotFound and drops the key."""
    first, _ = _daemon(tmp_path)
    key = _upload(first)
    blob = tmp_path / "blobs" / hashlib.sha256(WEIGHTS).hexdigest()
    blob.write_bytes(b"x" + WEIGHTS[1:])
    res, _ = _daemon(tmp_path)
    with pytest.raises(NotFound):
        res.open_persistent(A, key)
    assert key not in Registry(tmp_path)
    assert not blob.exists()


def test_drained_backed_keys_stay_openable(tmp_path: Path) -> None:
    """Draining the warm pool frees device memory but keeps backed keys on disk."""
    res, dev = _daemon(tmp_path)
    key = _upload(res)
    res.release_context(A)
    assert res.statistics().warm_pool_bytes == len(WEIGHTS)
    assert res.drain_warm_pool() == len(WEIGHTS)
    assert dev.used(MemoryTier.DRAM) == 0
    buf = res.open_persistent(B, key)
    assert res.read(buf, 0, len(WEIGHTS)) == WEIGHTS


def test_unreadable_manifest_is_reported(tmp_path: Path) -> None:
    """A torn or foreign manifest raises Unavailable instead of being silently ignored."""
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(Unavailable):
        Registry(tmp_path)


def test_state_directory_is_private_to_the_daemons_user(tmp_path: Path) -> None:
    """The state directory and its blobs directory are created 0700 (missing parents too), an
    existing one loses its permissions for others, and the blob and the manifest are 0600: no
    other local user reads stored weights."""
    state = tmp_path / "fresh" / "state"
    res, _ = _daemon(state)
    _upload(res)
    blob = state / "blobs" / hashlib.sha256(WEIGHTS).hexdigest()
    modes = {p: p.stat().st_mode & 0o777 for p in (state.parent, state, state / "blobs")}
    assert set(modes.values()) == {0o700}, {str(p): oct(m) for p, m in modes.items()}
    assert blob.stat().st_mode & 0o777 == 0o600
    assert (state / MANIFEST_NAME).stat().st_mode & 0o777 == 0o600
    old = tmp_path / "old"
    old.mkdir(mode=0o755)
    old.chmod(0o755)
    Registry(old)
    assert old.stat().st_mode & 0o777 == 0o750
