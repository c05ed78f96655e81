"""Statistics on the wire: every residency counter core keeps reaches ResidencyStats (and the
client's ResidencyStats), field by field, and engines report utilisation that counts running
work."""

from __future__ import annotations

from npud.api.convert import device_stats_to_wire, residency_to_wire
from npud.client.stats import DeviceStats
from npud.core.residency import ResidencyStatistics
from npud.v1 import stats_pb2, types_pb2
from npud.vocab import BufferUsage, DeviceHealth, MemoryTier, Persistence, SchedulingClass
from tests.core.harness import ALICE, BOB, Bed, make_bed

WEIGHTS = b"w" * 8192


def _busy_bed() -> tuple[Bed, ResidencyStatistics]:
    """Alice uploads and seals weights and runs a job; Bob attaches the weights by key."""
    bed = make_bed()
    core = bed.core
    alice = bed.context()
    w = core.create_buffer(
        ALICE,
        alice.id,
        len(WEIGHTS),
        usage=BufferUsage.WEIGHTS,
        persistence=Persistence.PERSISTENT,
        key="model@1",
    )
    core.write_buffer(ALICE, alice.id, w.id, 0, WEIGHTS)
    core.seal_buffer(ALICE, alice.id, w.id)
    scratch = core.create_buffer(ALICE, alice.id, 100, usage=BufferUsage.SCRATCH)
    core.write_buffer(ALICE, alice.id, scratch.id, 0, b"s" * 100)
    bed.burn(alice, bed.queue(alice, SchedulingClass.LATENCY), 0.001)
    bed.run()
    bob = bed.context(BOB)
    core.open_persistent(BOB, bob.id, f"~{ALICE.uid}/model@1")
    return bed, core.device_report().residency


def test_every_residency_counter_of_core_is_on_the_wire() -> None:
    """ResidencyStats carries core's snapshot field by field: counts, uploaded bytes (total,
    of WEIGHTS, per usage), attaches, and the bytes moved per tier."""
    _, res = _busy_bed()
    msg = residency_to_wire(res)
    assert msg.buffers == res.buffers
    assert msg.persistent_buffers == res.persistent
    assert msg.warm_buffers == res.warm_pool_buffers
    assert msg.warm_bytes == res.warm_pool_bytes
    assert msg.evictions == res.evictions
    assert msg.spilled_bytes == sum(res.spilled_bytes.values())
    assert msg.restored_bytes == sum(res.restored_bytes.values())
    assert msg.uploaded_bytes == sum(res.uploaded_bytes.values())
    assert msg.uploaded_weight_bytes == res.uploaded_by_usage[BufferUsage.WEIGHTS]
    assert msg.attaches == res.attaches
    assert msg.hits == res.hits
    assert msg.misses == res.misses
    assert msg.holds == res.holds
    assert msg.drops == res.drops
    assert msg.spills == res.spills
    assert msg.forgotten == res.forgotten
    assert msg.restores == res.restores
    assert msg.promotions == res.promotions
    assert msg.demotions == res.demotions
    assert msg.dedups == res.dedups
    assert msg.quota_refusals == res.quota_refusals
    assert msg.dormant_registrations == res.dormant_registrations
    assert msg.recycled == res.recycled
    traffic = {t.tier: t for t in msg.traffic}
    assert set(traffic) == {
        types_pb2.MEMORY_TIER_SRAM,
        types_pb2.MEMORY_TIER_DRAM,
        types_pb2.MEMORY_TIER_HOST,
    }
    dram = traffic[types_pb2.MEMORY_TIER_DRAM]
    assert dram.uploaded_bytes == res.uploaded_bytes[MemoryTier.DRAM]
    assert dram.spilled_bytes == res.spilled_bytes[MemoryTier.DRAM]
    assert dram.restored_bytes == res.restored_bytes[MemoryTier.DRAM]
    assert dram.migrated_bytes == res.migrated_bytes[MemoryTier.DRAM]
    assert sum(t.uploaded_bytes for t in msg.traffic) == msg.uploaded_bytes
    usages = {u.usage: u.bytes for u in msg.uploaded_by_usage}
    assert usages[types_pb2.BUFFER_USAGE_WEIGHTS] == len(WEIGHTS)
    assert usages[types_pb2.BUFFER_USAGE_SCRATCH] == 100
    assert sum(usages.values()) == msg.uploaded_bytes
    # the values themselves, not only their copies: what the workload did
    assert msg.attaches == 1
    assert msg.uploaded_weight_bytes == len(WEIGHTS)
    assert msg.persistent_buffers == 1


def test_the_client_reads_every_residency_field() -> None:
    """The client's DeviceStats.residency mirrors the wire message field by field."""
    bed, _ = _busy_bed()
    report = bed.core.device_report()
    wire = device_stats_to_wire(report, DeviceHealth.OK)
    got = DeviceStats.from_wire(wire).residency
    msg = wire.residency
    for name in (
        "buffers",
        "persistent_buffers",
        "warm_buffers",
        "warm_bytes",
        "evictions",
        "spilled_bytes",
        "restored_bytes",
        "uploaded_bytes",
        "uploaded_weight_bytes",
        "attaches",
        "hits",
        "misses",
        "holds",
        "drops",
        "spills",
        "forgotten",
        "restores",
        "promotions",
        "demotions",
        "dedups",
        "quota_refusals",
        "dormant_registrations",
        "recycled",
    ):
        assert getattr(got, name) == getattr(msg, name), name
    assert {f.name for f in stats_pb2.ResidencyStats.DESCRIPTOR.fields} == {
        *(f for f in got.__slots__ if not f.startswith("_")),  # type: ignore[attr-defined]
    }
    assert got.uploaded_by_usage[BufferUsage.WEIGHTS] == len(WEIGHTS)
    assert got.uploaded_by_usage[BufferUsage.SCRATCH] == 100
    dram = next(t for t in got.traffic if t.tier is MemoryTier.DRAM)
    assert dram.uploaded_bytes == report.residency.uploaded_bytes[MemoryTier.DRAM]


def test_engine_utilisation_on_the_wire_counts_the_running_job() -> None:
    """DeviceStats.engines[i].utilisation is non-zero while a long job runs on engine i."""
    bed = make_bed()
    ctx = bed.context()
    bed.burn(ctx, bed.queue(ctx, SchedulingClass.LATENCY), 8.0, engine=0, timeout_s=9.0)
    bed.clock.advance(5.0)
    wire = device_stats_to_wire(bed.core.device_report(), DeviceHealth.OK)
    assert [round(e.utilisation, 3) for e in wire.engines] == [1.0, 0.0, 0.0]
