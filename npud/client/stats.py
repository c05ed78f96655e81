"""Statistics as the client library returns them: the daemon's and each device's, by class.

:meth:`npud.client.Client.stats` and the live event stream return a :class:`Stats`: the
daemon's uptime and sessions, and per device a :class:`DeviceStats` (its scheduling classes'
waits and runs, its engines, its memory tiers, its residency counters). Each is a frozen value
converted from the wire message of the same name.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from npud.client.types import (
    Distribution,
    Engine,
    TierMemory,
    engines_from_wire,
    state_counts_from_wire,
    tiers_from_wire,
)
from npud.v1 import stats_pb2
from npud.vocab import BufferUsage, DeviceHealth, JobState, MemoryTier, SchedulingClass
from npud.vocab.wire import CLASS, HEALTH, TIER, USAGE


@dataclass(frozen=True, slots=True)
class ClassStats:
    """One scheduling class on one device."""

    scheduling_class: SchedulingClass | None
    queued: int
    running: int
    wait: Distribution
    run: Distribution
    share: float


@dataclass(frozen=True, slots=True)
class TierTraffic:
    """Bytes that entered or left one memory tier since the daemon started."""

    tier: MemoryTier | None
    uploaded_bytes: int = 0
    spilled_bytes: int = 0
    restored_bytes: int = 0
    migrated_bytes: int = 0


@dataclass(frozen=True, slots=True)
class ResidencyStats:
    """Buffer residency on one device: occupancy now and counters since the daemon started.

    ``uploaded_bytes`` are client writes into buffers (any tier); ``uploaded_by_usage`` splits
    them by buffer usage (``uploaded_weight_bytes`` is its WEIGHTS entry); ``attaches`` counts
    persistent buffers opened by key instead of uploaded.
    """

    buffers: int = 0
    persistent_buffers: int = 0
    warm_buffers: int = 0
    warm_bytes: int = 0
    evictions: int = 0
    spilled_bytes: int = 0
    restored_bytes: int = 0
    uploaded_bytes: int = 0
    uploaded_weight_bytes: int = 0
    attaches: int = 0
    hits: int = 0
    misses: int = 0
    holds: int = 0
    drops: int = 0
    spills: int = 0
    forgotten: int = 0
    restores: int = 0
    promotions: int = 0
    demotions: int = 0
    dedups: int = 0
    quota_refusals: int = 0
    dormant_registrations: int = 0
    recycled: int = 0
    traffic: tuple[TierTraffic, ...] = ()
    uploaded_by_usage: dict[BufferUsage, int] = field(default_factory=dict)

    @classmethod
    def from_wire(cls, msg: stats_pb2.ResidencyStats) -> ResidencyStats:
        """Convert a wire ResidencyStats."""
        by_usage: dict[BufferUsage, int] = {}
        for entry in msg.uploaded_by_usage:
            usage = USAGE.from_wire(entry.usage)
            if usage is not None:
                by_usage[usage] = entry.bytes
        return cls(
            buffers=msg.buffers,
            persistent_buffers=msg.persistent_buffers,
            warm_buffers=msg.warm_buffers,
            warm_bytes=msg.warm_bytes,
            evictions=msg.evictions,
            spilled_bytes=msg.spilled_bytes,
            restored_bytes=msg.restored_bytes,
            uploaded_bytes=msg.uploaded_bytes,
            uploaded_weight_bytes=msg.uploaded_weight_bytes,
            attaches=msg.attaches,
            hits=msg.hits,
            misses=msg.misses,
            holds=msg.holds,
            drops=msg.drops,
            spills=msg.spills,
            forgotten=msg.forgotten,
            restores=msg.restores,
            promotions=msg.promotions,
            demotions=msg.demotions,
            dedups=msg.dedups,
            quota_refusals=msg.quota_refusals,
            dormant_registrations=msg.dormant_registrations,
            recycled=msg.recycled,
            traffic=tuple(
                TierTraffic(
                    TIER.from_wire(t.tier),
                    t.uploaded_bytes,
                    t.spilled_bytes,
                    t.restored_bytes,
                    t.migrated_bytes,
                )
                for t in msg.traffic
            ),
            uploaded_by_usage=by_usage,
        )


@dataclass(frozen=True, slots=True)
class DeviceStats:
    """One device's scheduler, engines and memory (``residency`` holds every residency
    counter; ``buffers`` .. ``evictions`` repeat its first few for older callers)."""

    device: str
    simulated: bool
    health: DeviceHealth | None
    policy: str
    contexts: int
    queues: int
    classes: tuple[ClassStats, ...]
    engines: tuple[Engine, ...]
    memory: tuple[TierMemory, ...]
    states: dict[JobState, int] = field(default_factory=dict)
    buffers: int = 0
    persistent_buffers: int = 0
    warm_buffers: int = 0
    evictions: int = 0
    submitted: int = 0
    device_resets: int = 0
    residency: ResidencyStats = field(default_factory=ResidencyStats)

    @classmethod
    def from_wire(cls, msg: stats_pb2.DeviceStats) -> DeviceStats:
        """Convert a wire DeviceStats."""
        return cls(
            device=msg.device,
            simulated=msg.simulated,
            health=HEALTH.from_wire(msg.health),
            policy=msg.policy,
            contexts=msg.contexts,
            queues=msg.queues,
            classes=tuple(
                ClassStats(
                    CLASS.from_wire(c.scheduling_class),
                    c.queued,
                    c.running,
                    Distribution.from_wire(c.wait),
                    Distribution.from_wire(c.run),
                    c.share,
                )
                for c in msg.classes
            ),
            engines=engines_from_wire(msg.engines),
            memory=tiers_from_wire(msg.memory),
            states=state_counts_from_wire(msg.states),
            buffers=msg.residency.buffers,
            persistent_buffers=msg.residency.persistent_buffers,
            warm_buffers=msg.residency.warm_buffers,
            evictions=msg.residency.evictions,
            submitted=msg.submitted,
            device_resets=msg.device_resets,
            residency=ResidencyStats.from_wire(msg.residency),
        )


@dataclass(frozen=True, slots=True)
class Stats:
    """The daemon and every device."""

    version: str
    uptime_s: float
    sessions: int
    status: str
    shutting_down: bool
    devices: tuple[DeviceStats, ...]

    @classmethod
    def from_wire(cls, msg: stats_pb2.GetStatsResponse) -> Stats:
        """Convert a wire GetStatsResponse."""
        return cls(
            version=msg.daemon.version,
            uptime_s=msg.daemon.uptime_s,
            sessions=msg.daemon.sessions,
            status=msg.daemon.status,
            shutting_down=msg.daemon.shutting_down,
            devices=tuple(DeviceStats.from_wire(d) for d in msg.devices),
        )
