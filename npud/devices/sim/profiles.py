"""Board profiles: the public figures (and stated assumptions) a simulated NPU is built from.

These are *models* of three NPU classes, not measurements: peak rates are vendor marketing
numbers divided evenly over the engines, bandwidths are the SoC's theoretical DRAM figures,
and wherever no public figure exists the value is an assumption, marked as such here and in
``docs/sim.md``. The cost model only needs them to be plausible and mutually consistent
(SRAM faster than DRAM; int8 faster than f16 faster than f32).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

from npud.devices.base import Capabilities, EngineInfo, TierInfo
from npud.devices.sim.memory import TierPool
from npud.devices.sim.wire import MAX_BINDINGS
from npud.errors import InvalidArgument
from npud.isa import DType

GIB = 1 << 30
MIB = 1 << 20
KIB = 1 << 10


@dataclass(frozen=True, slots=True)
class BoardProfile:
    """The modelled hardware of one simulated NPU.

    Rates are *per engine* (a job runs on exactly one engine); bandwidths are what one engine
    sees when it has the memory to itself (the model ignores contention between engines).
    """

    name: str
    description: str
    engine_names: tuple[str, ...]
    peak_ops_per_s: dict[DType, float]  # per engine; I32 work runs at the f32 rate
    dram_bandwidth: float  # bytes/s
    sram_bandwidth: float  # bytes/s
    dram_capacity: int  # bytes in the device's DRAM pool
    sram_capacity: int  # bytes of on-chip SRAM (0: none)
    launch_overhead_s: float  # fixed cost of every job

    @property
    def engines(self) -> int:
        """How many engines the board has."""
        return len(self.engine_names)

    def peak(self, dtype: DType) -> float:
        """The per-engine peak rate (ops/s) for work in ``dtype``."""
        return self.peak_ops_per_s.get(dtype, self.peak_ops_per_s[DType.F32])


def _rates(int8_total: float, engines: int, f16_div: float, f32_div: float) -> dict[DType, float]:
    per = int8_total / engines
    return {
        DType.I8: per,
        DType.F16: per / f16_div,
        DType.F32: per / f32_div,
        DType.I32: per / f32_div,
    }


RK3588 = BoardProfile(
    name="rk3588",
    description="RK3588-class: 3 NPU cores, 6 TOPS int8 total, LPDDR4x/5, small on-chip SRAM",
    engine_names=("core0", "core1", "core2"),
    # 6 TOPS int8 over 3 cores (Rockchip); f16 at 1/4 and f32 at 1/16 of int8: assumed.
    peak_ops_per_s=_rates(6e12, 3, 4.0, 16.0),
    dram_bandwidth=34e9,  # 64-bit LPDDR4x-4266 / LPDDR5, theoretical
    sram_bandwidth=200e9,  # assumed
    dram_capacity=4 * GIB,  # one rknpu IOMMU domain is ~4 GiB
    sram_capacity=956 * KIB,  # system SRAM available to the NPU: assumed ~1 MiB
    launch_overhead_s=50e-6,  # assumed (register-command fetch + IRQ round trip)
)

LUNAR_LAKE = BoardProfile(
    name="lunar-lake",
    description="Intel NPU 4 (Lunar Lake): 6 neural compute engines, 48 TOPS int8",
    engine_names=tuple(f"nce{i}" for i in range(6)),
    # 48 TOPS int8 over 6 NCEs (Intel); f16 at 1/2 of int8 (assumed); f32 via SHAVE at 1/32.
    peak_ops_per_s=_rates(48e12, 6, 2.0, 32.0),
    dram_bandwidth=136e9,  # on-package LPDDR5X-8533, 128-bit, theoretical
    sram_bandwidth=1e12,  # scratchpad: assumed
    dram_capacity=8 * GIB,  # assumed share of the 16/32 GB on-package memory
    sram_capacity=8 * MIB,  # the 8 MB side cache the NPU can use (Intel)
    launch_overhead_s=20e-6,  # assumed (firmware doorbell + JSM job)
)

STRIX_POINT = BoardProfile(
    name="strix-point",
    description="AMD XDNA 2 (Strix Point): 8 columns of 4 AIE-ML tiles, 50 TOPS int8",
    engine_names=tuple(f"col{i}" for i in range(8)),
    # 50 TOPS int8 over 8 columns (AMD); block-fp16 at 1/2 (assumed); f32 at 1/32 (assumed).
    peak_ops_per_s=_rates(50e12, 8, 2.0, 32.0),
    dram_bandwidth=120e9,  # LPDDR5X-7500, 128-bit, theoretical
    sram_bandwidth=800e9,  # memory tiles: assumed
    dram_capacity=8 * GIB,  # assumed
    sram_capacity=4 * MIB,  # L2 memory tiles: 4096 KB on Strix (amdxdna docs)
    launch_overhead_s=30e-6,  # assumed (ERT command submission)
)

PROFILES: dict[str, BoardProfile] = {p.name: p for p in (RK3588, LUNAR_LAKE, STRIX_POINT)}
"""Every built-in profile by name."""


def slowed(profile: BoardProfile, factor: float) -> BoardProfile:
    """The same board ``factor`` times slower: every modelled duration is ``factor`` times longer.

    Peak rates and bandwidths are divided by ``factor`` and the launch overhead multiplied by
    it, so the cost model's ratios (SRAM against DRAM, int8 against f32) are unchanged. On real
    time this is how the simulated NPU stands in for a board running a larger model than the
    host can compute in time: the tiny test model's jobs keep the schedule they would have on a
    model ``factor`` times bigger, while the host only computes the tiny one. Capacities are
    not scaled. ``factor`` 1 returns ``profile`` itself.

    Raises:
        InvalidArgument: ``factor`` is not a finite number above 0.
    """
    if not (math.isfinite(factor) and factor > 0):
        raise InvalidArgument(f"a board slowdown must be a finite number above 0, got {factor!r}")
    if factor == 1:
        return profile
    return replace(
        profile,
        description=f"{profile.description}, slowed down x{factor:g}",
        peak_ops_per_s={d: r / factor for d, r in profile.peak_ops_per_s.items()},
        dram_bandwidth=profile.dram_bandwidth / factor,
        sram_bandwidth=profile.sram_bandwidth / factor,
        launch_overhead_s=profile.launch_overhead_s * factor,
    )


def get_profile(profile: BoardProfile | str) -> BoardProfile:
    """Resolve a profile name (or pass a profile through).

    Raises:
        InvalidArgument: no built-in profile has that name.
    """
    if isinstance(profile, BoardProfile):
        return profile
    try:
        return PROFILES[profile]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise InvalidArgument(f"unknown board profile {profile!r} (known: {known})") from None


def capabilities_of(
    profile: BoardProfile, pools: Iterable[TierPool], *, can_export: bool
) -> Capabilities:
    """What a simulated ``profile`` board with memory ``pools`` offers the daemon: its engines
    and tiers, one native priority, no syncobjs, hardware contexts or preemption; it can abort a
    job, model a job's duration, and (``can_export``: process mode) export buffers."""
    return Capabilities(
        driver="sim",
        driver_version=(1, 0, 0),
        description=f"{profile.description} (simulated)",
        board=profile.name,
        engines=tuple(EngineInfo(i, n) for i, n in enumerate(profile.engine_names)),
        tiers=tuple(TierInfo(pool.tier, pool.capacity, pool.bandwidth) for pool in pools),
        native_priorities=1,
        has_syncobj=False,
        has_hw_contexts=False,
        max_hw_contexts=0,
        has_preemption=False,
        can_abort=True,
        can_export=can_export,
        simulated=True,
        launch_overhead_s=profile.launch_overhead_s,
        max_bindings=MAX_BINDINGS,
        models_jobs=True,
    )
