"""ResidencyManager basics on an in-memory device: allocate, write/read, share, release, quota.

``MemDevice`` is a minimal byte-backed implementation of the Device contract's memory half,
enough to exercise residency without the simulated NPU; the tests that run real jobs use the
sim (``test_residency_sim.py``).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from npud.clock import VirtualClock
from npud.core.buffers import Location
from npud.core.ids import ContextId
from npud.core.residency import ResidencyManager
from npud.devices.base import (
    Binding,
    BoHandle,
    BufferUse,
    Capabilities,
    CompletionCallback,
    DeviceBuffer,
    DeviceStatistics,
    EngineInfo,
    Submission,
    SubmitToken,
    TierInfo,
)
from npud.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfDeviceMemory,
    QuotaExceeded,
    ResourceExhausted,
    Unsupported,
)
from npud.vocab import BufferUsage, DeviceHealth, MemoryTier, Persistence, TierPreference

KiB = 1024
A = ContextId("ctx-a")
B = ContextId("ctx-b")
C = ContextId("ctx-c")


class MemDevice:
    """Device memory as bytearrays with per-tier capacities; submit is not supported."""

    def __init__(self, dram: int = 64 * KiB, sram: int = 0, *, sram_mappable: bool = True) -> None:
        self.name = "mem0"
        self.capabilities = Capabilities(
            driver="mem",
            driver_version=(1, 0, 0),
            description="test memory device",
            board="test",
            engines=(EngineInfo(0, "core0"),),
            tiers=(TierInfo(MemoryTier.DRAM, dram, 1e9), TierInfo(MemoryTier.SRAM, sram, 8e9)),
            native_priorities=1,
            has_syncobj=False,
            has_hw_contexts=False,
            max_hw_contexts=0,
            has_preemption=False,
            can_abort=False,
            can_export=False,
            simulated=True,
        )
        self.memory: dict[BoHandle, tuple[MemoryTier, bytearray]] = {}
        self.maps: dict[BoHandle, int] = {}
        self._next = 1
        self._sram_mappable = sram_mappable

    def open(self) -> None:
        """Nothing to open."""

    def close(self) -> None:
        """Forget every buffer."""
        self.memory.clear()

    def health(self) -> DeviceHealth:
        """Always OK."""
        return DeviceHealth.OK

    def used(self, tier: MemoryTier) -> int:
        """Bytes allocated in ``tier``."""
        return sum(len(b) for t, b in self.memory.values() if t is tier)

    def create_buffer(self, size: int, tier: MemoryTier, *, flags: int = 0) -> DeviceBuffer:
        """Allocate zeroed bytes; ENOMEM past the tier's capacity."""
        cap = self.capabilities.tier(tier).capacity_bytes
        if size <= 0 or size > cap:
            raise InvalidArgument(f"bad size {size}")
        if self.used(tier) + size > cap:
            raise OutOfDeviceMemory(f"{tier} full")
        handle = BoHandle(self._next)
        self._next += 1
        self.memory[handle] = (tier, bytearray(size))
        return DeviceBuffer(handle, size, tier, handle * 0x1000)

    def free_buffer(self, handle: BoHandle) -> None:
        """Free; NotFound for unknown handles and refused while mapped."""
        if handle not in self.memory:
            raise NotFound(f"handle {handle}")
        assert not self.maps.get(handle), "freed while mapped"
        del self.memory[handle]

    def map_buffer(self, handle: BoHandle) -> memoryview:
        """A view of the bytes (SRAM may be unmappable)."""
        if handle not in self.memory:
            raise NotFound(f"handle {handle}")
        tier, data = self.memory[handle]
        if tier is MemoryTier.SRAM and not self._sram_mappable:
            raise Unsupported("SRAM is not CPU-visible")
        self.maps[handle] = self.maps.get(handle, 0) + 1
        return memoryview(data)

    def unmap_buffer(self, handle: BoHandle) -> None:
        """Drop one mapping."""
        self.maps[handle] -= 1

    def export_buffer(self, handle: BoHandle) -> int:
        """Not supported."""
        raise Unsupported("no export")

    def submit(self, submission: Submission, on_done: CompletionCallback) -> SubmitToken:
        """Not supported: this device only holds memory."""
        raise Unsupported("MemDevice does not run jobs")

    def abort(self, token: SubmitToken) -> bool:
        """Nothing to abort."""
        return False

    def reset_engine(self, engine: int, reason: str) -> None:
        """Nothing to reset."""

    def add_loss_listener(self, callback: Callable[[str], None]) -> None:
        """Never lost."""

    def statistics(self) -> DeviceStatistics:
        """Memory counters only."""
        return DeviceStatistics(
            DeviceHealth.OK,
            0,
            0,
            0,
            0,
            0,
            0,
            (0.0,),
            used_bytes={t: self.used(t) for t in MemoryTier},
            buffers=len(self.memory),
        )

    def contents(self, handle: BoHandle) -> bytes:
        """The bytes behind a handle (test inspection)."""
        return bytes(self.memory[handle][1])


def manager(
    dram: int = 64 * KiB, sram: int = 0, **kw: object
) -> tuple[ResidencyManager, MemDevice]:
    """A manager over a fresh MemDevice."""
    dev = MemDevice(dram, sram)
    return ResidencyManager(dev, VirtualClock(), **kw), dev


def test_create_allocates_and_write_read_round_trips() -> None:
    """create() allocates device memory at once; write/read go through the device mapping."""
    res, dev = manager()
    buf = res.create(A, 4 * KiB, usage=BufferUsage.SCRATCH)
    assert buf.device is not None
    assert buf.location is Location.RESIDENT
    res.write(buf, 10, b"hello")
    assert res.read(buf, 8, 9) == b"\0\0hello\0\0"
    assert dev.contents(buf.device.handle)[10:15] == b"hello"
    stats = res.statistics()
    assert stats.tier(MemoryTier.DRAM).used_bytes == 4 * KiB
    assert stats.uploaded_bytes[MemoryTier.DRAM] == 5
    assert stats.context_bytes == {A: 4 * KiB}
    assert not dev.maps or not any(dev.maps.values())


def test_out_of_range_and_bad_arguments_are_refused() -> None:
    """Bad sizes, ranges and keys raise InvalidArgument; too-large buffers OutOfDeviceMemory."""
    res, _ = manager()
    buf = res.create(A, 16, usage=BufferUsage.SCRATCH)
    with pytest.raises(InvalidArgument):
        res.write(buf, 10, b"0123456789")
    with pytest.raises(InvalidArgument):
        res.read(buf, -1, 4)
    with pytest.raises(InvalidArgument):
        res.create(A, 0, usage=BufferUsage.SCRATCH)
    with pytest.raises(InvalidArgument):
        res.create(A, 8, usage=BufferUsage.SCRATCH, key="x")
    with pytest.raises(InvalidArgument):
        res.create(
            A, 8, usage=BufferUsage.WEIGHTS, persistence=Persistence.PERSISTENT, key="sha256:zz"
        )
    with pytest.raises(OutOfDeviceMemory):
        res.create(A, 65 * KiB, usage=BufferUsage.SCRATCH)


def test_get_hides_buffers_of_other_contexts() -> None:
    """get() is NotFound for unknown ids and for ids the context holds no reference to."""
    res, _ = manager()
    buf = res.create(A, 64, usage=BufferUsage.SCRATCH)
    assert res.get(A, buf.id) is buf
    with pytest.raises(NotFound):
        res.get(B, buf.id)
    res.release(A, buf)
    with pytest.raises(NotFound):
        res.get(A, buf.id)
    with pytest.raises(NotFound):
        res.release(A, buf)


def test_ephemeral_release_frees_device_memory() -> None:
    """Releasing an EPHEMERAL buffer frees its device allocation; release_context frees all."""
    res, dev = manager()
    one = res.create(A, 1 * KiB, usage=BufferUsage.SCRATCH)
    res.create(A, 2 * KiB, usage=BufferUsage.STATE)
    res.create(B, 4 * KiB, usage=BufferUsage.SCRATCH)
    res.release(A, one)
    assert dev.used(MemoryTier.DRAM) == 6 * KiB
    res.release_context(A)
    assert dev.used(MemoryTier.DRAM) == 4 * KiB
    assert res.context_usage(A) == 0
    assert A not in res.statistics().context_bytes


def test_persistent_key_is_shared_and_warm_after_last_user() -> None:
    """Two contexts share one allocation by key; it stays resident in the warm pool after both
    leave, and a third attaches with no upload."""
    res, dev = manager()
    weights = res.create(
        A, 8 * KiB, usage=BufferUsage.WEIGHTS, persistence=Persistence.PERSISTENT, key="m/v1/w0"
    )
    res.write(weights, 0, b"\x01" * 8 * KiB)
    res.seal(A, weights)
    assert res.open_persistent(B, "m/v1/w0") is weights
    assert res.statistics().tier(MemoryTier.DRAM).used_bytes == 8 * KiB
    assert res.context_usage(A) == res.context_usage(B) == 8 * KiB
    res.release_context(A)
    res.release_context(B)
    stats = res.statistics()
    assert (stats.warm_pool_buffers, stats.warm_pool_bytes) == (1, 8 * KiB)
    uploaded = sum(stats.uploaded_bytes.values())
    again = res.open_persistent(C, "m/v1/w0")
    assert again is weights
    assert again.device is not None
    assert res.prepare([again])
    after = res.statistics()
    assert sum(after.uploaded_bytes.values()) == uploaded
    assert after.hits == 1
    assert after.misses == 0
    assert dev.used(MemoryTier.DRAM) == 8 * KiB
    with pytest.raises(AlreadyExists):
        res.create(
            C, 8, usage=BufferUsage.WEIGHTS, persistence=Persistence.PERSISTENT, key="m/v1/w0"
        )
    with pytest.raises(NotFound):
        res.open_persistent(C, "m/v1/unknown")


def test_seal_keys_by_content_hash_and_deduplicates() -> None:
    """An unkeyed persistent buffer is keyed sha256:<contents> at seal; identical contents
    uploaded twice end up as one buffer."""
    import hashlib

    res, dev = manager()
    data = bytes(range(256)) * 16
    first = res.create(A, len(data), usage=BufferUsage.WEIGHTS, persistence=Persistence.PERSISTENT)
    for off in range(0, len(data), 1000):
        res.write(first, off, data[off : off + 1000])
    assert res.seal(A, first) is first
    assert first.key == "sha256:" + hashlib.sha256(data).hexdigest()
    with pytest.raises(FailedPrecondition):
        res.write(first, 0, b"x")
    second = res.create(B, len(data), usage=BufferUsage.WEIGHTS, persistence=Persistence.PERSISTENT)
    res.write(second, 100, data[100:])  # out of order: the hash is recomputed at seal
    res.write(second, 0, data[:100])
    shared = res.seal(B, second)
    assert shared is first
    assert B in first.users
    assert res.statistics().dedups == 1
    assert dev.used(MemoryTier.DRAM) == len(data)
    with pytest.raises(NotFound):
        res.get(B, second.id)


def test_seal_rejects_a_wrong_content_hash_key() -> None:
    """A sha256: key that does not match the contents is refused at seal."""
    res, _ = manager()
    buf = res.create(
        A,
        4,
        usage=BufferUsage.WEIGHTS,
        persistence=Persistence.PERSISTENT,
        key="sha256:" + "0" * 64,
    )
    res.write(buf, 0, b"abcd")
    with pytest.raises(InvalidArgument):
        res.seal(A, buf)


def test_quota_refusal_names_quota_and_usage_and_allocates_nothing() -> None:
    """Exceeding a context's quota raises QuotaExceeded (a ResourceExhausted) with the numbers;
    nothing is allocated."""
    res, dev = manager()
    res.create(A, 3 * KiB, usage=BufferUsage.SCRATCH, quota_bytes=4 * KiB)
    before = dev.used(MemoryTier.DRAM), len(res.buffers())
    with pytest.raises(ResourceExhausted) as info:
        res.create(A, 2 * KiB, usage=BufferUsage.SCRATCH)
    assert isinstance(info.value, QuotaExceeded)
    assert "4096" in str(info.value)
    assert "3072" in str(info.value)
    assert (dev.used(MemoryTier.DRAM), len(res.buffers())) == before
    assert res.context_usage(A) == 3 * KiB
    shared = res.create(
        B, 2 * KiB, usage=BufferUsage.WEIGHTS, persistence=Persistence.PERSISTENT, key="big"
    )
    with pytest.raises(QuotaExceeded):
        res.open_persistent(A, "big")
    assert A not in shared.users
    assert res.statistics().quota_refusals == 2


def test_prepare_binding_and_run_bracket() -> None:
    """prepare/begin_run/end_run keep in_use balanced; binding gives the current handle."""
    res, _ = manager()
    buf = res.create(A, 64, usage=BufferUsage.STATE)
    assert res.prepare([buf, buf])
    assert res.is_resident([buf])
    res.begin_run([buf, buf])
    assert buf.in_use == 1
    assert buf.device is not None
    assert res.binding(buf, BufferUse.READWRITE) == Binding(
        buf.device.handle, BufferUse.READWRITE, buf.size
    )
    with pytest.raises(FailedPrecondition):
        res.write(buf, 0, b"x")
    res.end_run([buf], written=[buf])
    assert buf.in_use == 0
    assert buf.valid


def test_eviction_spills_state_bit_exact_and_drops_scratch() -> None:
    """Under pressure a STATE buffer is spilled to host and restored bit-exact; scratch is
    dropped; counters record both."""
    res, dev = manager(dram=16 * KiB)
    state = res.create(A, 8 * KiB, usage=BufferUsage.STATE)
    pattern = bytes((i * 7 + 3) % 256 for i in range(8 * KiB))
    res.write(state, 0, pattern)
    scratch = res.create(A, 8 * KiB, usage=BufferUsage.SCRATCH)
    res.write(scratch, 0, b"\xff" * 16)
    big = res.create(B, 16 * KiB, usage=BufferUsage.SCRATCH)
    assert big.device is not None
    assert state.device is None
    assert state.location is Location.HOST
    assert scratch.device is None
    assert scratch.location is Location.EMPTY
    assert res.read(state, 0, 8 * KiB) == pattern
    stats = res.statistics()
    assert (stats.evictions, stats.spills, stats.drops) == (2, 1, 1)
    assert stats.tier(MemoryTier.HOST).used_bytes == 8 * KiB
    assert res.prepare([state])  # evicts `big` (scratch) to make room
    assert state.device is not None
    assert dev.contents(state.device.handle) == pattern
    assert res.read(scratch, 0, 16) == bytes(16)
    stats = res.statistics()
    assert stats.restores == 1
    assert stats.restored_bytes[MemoryTier.DRAM] == 8 * KiB
    assert stats.tier(MemoryTier.HOST).used_bytes == 0


def test_pinned_and_running_buffers_are_never_evicted() -> None:
    """prepare() returns False rather than evict a pinned or running buffer."""
    res, _ = manager(dram=16 * KiB)
    pinned = res.create(A, 8 * KiB, usage=BufferUsage.STATE)
    res.pin(pinned, ctx=A)
    running = res.create(A, 8 * KiB, usage=BufferUsage.STATE)
    assert res.prepare([running])
    res.begin_run([running])
    newcomer = res.create(B, 8 * KiB, usage=BufferUsage.STATE)
    assert newcomer.device is None
    assert not res.prepare([newcomer])
    assert pinned.device is not None
    assert running.device is not None
    res.end_run([running], written=[])
    assert res.prepare([newcomer])
    assert running.device is None
    assert pinned.device is not None
    res.unpin(pinned, ctx=A)
    with pytest.raises(FailedPrecondition):
        res.unpin(pinned, ctx=A)


def test_a_set_that_can_never_fit_raises() -> None:
    """prepare() raises OutOfDeviceMemory when a job's buffers exceed the whole budget."""
    res, _ = manager(dram=16 * KiB)
    one = res.create(A, 10 * KiB, usage=BufferUsage.SCRATCH)
    two = res.create(A, 10 * KiB, usage=BufferUsage.SCRATCH)
    with pytest.raises(OutOfDeviceMemory):
        res.prepare([one, two])


def test_budget_smaller_than_capacity_is_respected() -> None:
    """A budget below the device capacity caps what npud allocates."""
    res, dev = manager(dram=64 * KiB, budgets={MemoryTier.DRAM: 8 * KiB})
    res.create(A, 6 * KiB, usage=BufferUsage.SCRATCH)
    res.create(A, 6 * KiB, usage=BufferUsage.SCRATCH)
    assert dev.used(MemoryTier.DRAM) == 6 * KiB
    assert res.statistics().tier(MemoryTier.DRAM).budget_bytes == 8 * KiB


def test_device_without_sram_reports_an_empty_tier() -> None:
    """With no SRAM (capacity 0) the tier is reported empty and SRAM requests land in DRAM."""
    res, _ = manager(sram=0)
    buf = res.create(A, 64, usage=BufferUsage.STATE, tier=TierPreference.SRAM)
    assert buf.device is not None
    assert buf.device.tier is MemoryTier.DRAM
    sram = res.statistics().tier(MemoryTier.SRAM)
    assert (sram.capacity_bytes, sram.budget_bytes, sram.used_bytes) == (0, 0, 0)
