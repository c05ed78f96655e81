"""npud's rknpu declarations against facts recorded from Rockchip's vendor header.

Debian's linux-libc-dev has no ``rknpu_ioctl.h`` (it lives only in Rockchip's BSP kernel trees),
so the compiled probe of ``test_conformance`` cannot run for it. Instead the header's facts are
written down here, by hand, from this source:

    repository  rockchip-linux/kernel
    path        drivers/rknpu/include/rknpu_ioctl.h
    commit      b7fe50d1349c14f1e759e5b3e32cd9e7ccda8605

cross-read against orangepi-xunlong/linux-orangepi (same path, commit
4bc1659cec2b803989bd4d63e21a562a25838502), an older 0.9.x copy whose layouts are identical (its
``rknpu_mem_create`` names the last u32 ``reserved`` where the newer one has ``core_mask``).
Layouts are those of the 64-bit ABIs npud runs on (x86_64, arm64; generic ``_IOC`` encoding):
every u64 there is 8-aligned, and ``struct rknpu_task`` is ``__packed``.

The declarations are checked with the conformance module's own judge (``compare``), so the
version-drift rule is the same as for the headers Debian ships.
"""

from __future__ import annotations

import pytest

from npud.abi import conformance, rknpu
from npud.abi.ioc import Direction, decode

# struct -> (sizeof, alignof, [(field, offset, size, signed or None for arrays)])
_U, _S, _A = 0, 1, None
STRUCTS: dict[str, tuple[int, int, list[tuple[str, int, int, int | None]]]] = {
    "struct rknpu_action": (8, 4, [("flags", 0, 4, _U), ("value", 4, 4, _U)]),
    "struct rknpu_mem_create": (
        48,
        8,
        [
            ("handle", 0, 4, _U),
            ("flags", 4, 4, _U),
            ("size", 8, 8, _U),
            ("obj_addr", 16, 8, _U),
            ("dma_addr", 24, 8, _U),
            ("sram_size", 32, 8, _U),
            ("iommu_domain_id", 40, 4, _S),
            ("core_mask", 44, 4, _U),
        ],
    ),
    "struct rknpu_mem_map": (
        16,
        8,
        [("handle", 0, 4, _U), ("reserved", 4, 4, _U), ("offset", 8, 8, _U)],
    ),
    "struct rknpu_mem_destroy": (
        16,
        8,
        [("handle", 0, 4, _U), ("reserved", 4, 4, _U), ("obj_addr", 8, 8, _U)],
    ),
    "struct rknpu_mem_sync": (
        32,
        8,
        [
            ("flags", 0, 4, _U),
            ("reserved", 4, 4, _U),
            ("obj_addr", 8, 8, _U),
            ("offset", 16, 8, _U),
            ("size", 24, 8, _U),
        ],
    ),
    "struct rknpu_task": (
        40,
        1,  # __packed
        [
            ("flags", 0, 4, _U),
            ("op_idx", 4, 4, _U),
            ("enable_mask", 8, 4, _U),
            ("int_mask", 12, 4, _U),
            ("int_clear", 16, 4, _U),
            ("int_status", 20, 4, _U),
            ("regcfg_amount", 24, 4, _U),
            ("regcfg_offset", 28, 4, _U),
            ("regcmd_addr", 32, 8, _U),
        ],
    ),
    "struct rknpu_subcore_task": (8, 4, [("task_start", 0, 4, _U), ("task_number", 4, 4, _U)]),
    "struct rknpu_submit": (
        104,
        8,
        [
            ("flags", 0, 4, _U),
            ("timeout", 4, 4, _U),
            ("task_start", 8, 4, _U),
            ("task_number", 12, 4, _U),
            ("task_counter", 16, 4, _U),
            ("priority", 20, 4, _S),
            ("task_obj_addr", 24, 8, _U),
            ("iommu_domain_id", 32, 4, _U),
            ("reserved", 36, 4, _U),
            ("task_base_addr", 40, 8, _U),
            ("hw_elapse_time", 48, 8, _S),
            ("core_mask", 56, 4, _U),
            ("fence_fd", 60, 4, _S),
            ("subcore_task", 64, 40, _A),  # struct rknpu_subcore_task[5]
        ],
    ),
}

# DRM_IOWR(DRM_COMMAND_BASE + n, struct ...): dir 3, type 'd' (0x64), nr 0x40 + n, size.
IOCTLS = {
    "DRM_IOCTL_RKNPU_ACTION": 0xC0086440,
    "DRM_IOCTL_RKNPU_SUBMIT": 0xC0686441,
    "DRM_IOCTL_RKNPU_MEM_CREATE": 0xC0306442,
    "DRM_IOCTL_RKNPU_MEM_MAP": 0xC0106443,
    "DRM_IOCTL_RKNPU_MEM_DESTROY": 0xC0106444,
    "DRM_IOCTL_RKNPU_MEM_SYNC": 0xC0206445,
}

CONSTANTS = {
    "RKNPU_ACTION": 0x00,
    "RKNPU_SUBMIT": 0x01,
    "RKNPU_MEM_CREATE": 0x02,
    "RKNPU_MEM_MAP": 0x03,
    "RKNPU_MEM_DESTROY": 0x04,
    "RKNPU_MEM_SYNC": 0x05,
    "RKNPU_MEM_NON_CONTIGUOUS": 1 << 0,
    "RKNPU_MEM_CACHEABLE": 1 << 1,
    "RKNPU_MEM_WRITE_COMBINE": 1 << 2,
    "RKNPU_MEM_KERNEL_MAPPING": 1 << 3,
    "RKNPU_MEM_IOMMU": 1 << 4,
    "RKNPU_MEM_ZEROING": 1 << 5,
    "RKNPU_MEM_SECURE": 1 << 6,
    "RKNPU_MEM_DMA32": 1 << 7,
    "RKNPU_MEM_TRY_ALLOC_SRAM": 1 << 8,
    "RKNPU_MEM_TRY_ALLOC_NBUF": 1 << 9,
    "RKNPU_MEM_SYNC_TO_DEVICE": 1 << 0,
    "RKNPU_MEM_SYNC_FROM_DEVICE": 1 << 1,
    "RKNPU_JOB_PC": 1 << 0,
    "RKNPU_JOB_NONBLOCK": 1 << 1,
    "RKNPU_JOB_PINGPONG": 1 << 2,
    "RKNPU_JOB_FENCE_IN": 1 << 3,
    "RKNPU_JOB_FENCE_OUT": 1 << 4,
    "RKNPU_GET_HW_VERSION": 0,
    "RKNPU_GET_DRV_VERSION": 1,
    "RKNPU_GET_FREQ": 2,
    "RKNPU_GET_VOLT": 4,
    "RKNPU_ACT_RESET": 6,
    "RKNPU_GET_IOMMU_EN": 18,
    "RKNPU_SET_PROC_NICE": 19,
    "RKNPU_POWER_ON": 20,
    "RKNPU_POWER_OFF": 21,
    "RKNPU_GET_TOTAL_SRAM_SIZE": 22,
    "RKNPU_GET_FREE_SRAM_SIZE": 23,
    "RKNPU_PC_DATA_EXTRA_AMOUNT": 4,
}


def recorded_facts() -> dict[str, int]:
    """The recorded header facts under the conformance module's keys."""
    facts: dict[str, int] = {}
    for ctype, (size, align, fields) in STRUCTS.items():
        facts[f"sizeof {ctype}"] = size
        facts[f"alignof {ctype}"] = align
        for name, offset, fsize, signed in fields:
            facts[f"offsetof {ctype}.{name}"] = offset
            facts[f"sizeof {ctype}.{name}"] = fsize
            if signed is not None:
                facts[f"signed {ctype}.{name}"] = signed
    facts.update({f"ioctl {k}": v for k, v in IOCTLS.items()})
    facts.update({f"const {k}": v for k, v in CONSTANTS.items()})
    return facts


def _structs_of_ioctls() -> dict[str, str | None]:
    return {f"ioctl {s.name}": s.struct for s in rknpu.HEADER.ioctls.values()}


def test_declarations_match_the_recorded_header(capsys: pytest.CaptureFixture[str]) -> None:
    """Every rknpu struct, field, ioctl and constant npud declares equals the recorded fact,
    and every recorded fact is declared (0 mismatches, nothing left unchecked)."""
    facts = conformance.declared_facts([rknpu.HEADER])
    recorded = recorded_facts()
    report = conformance.compare(
        facts,
        recorded,
        kernel_version="rockchip-linux/kernel@b7fe50d1",
        ioctl_structs=_structs_of_ioctls(),
    )
    with capsys.disabled():
        print("\n" + report.summary())
    assert report.ok, report.summary()
    assert not report.extensions
    assert {f.key for f in facts} == set(recorded)
    assert report.checked == len(recorded) > 150


def test_ioctls_are_drm_readwrite_at_the_command_base() -> None:
    """Each ioctl decodes to _IOWR('d', 0x40 + RKNPU_*, sizeof struct), as the header says."""
    for spec in rknpu.HEADER.ioctls.values():
        decoded = decode(spec.request)
        assert decoded.direction is Direction.READWRITE
        assert decoded.type_ == ord("d")
        assert spec.struct is not None
        assert decoded.size == STRUCTS[spec.struct][0]
        cmd = spec.name.removeprefix("DRM_IOCTL_")
        assert decoded.nr == 0x40 + CONSTANTS[cmd]


@pytest.mark.parametrize(
    ("key", "delta", "reason"),
    [
        ("offsetof struct rknpu_submit.core_mask", 4, "moved"),
        ("sizeof struct rknpu_task", -4, "struct size"),
        ("signed struct rknpu_submit.fence_fd", -1, "signedness"),
        ("const RKNPU_ACT_RESET", 1, "constant"),
    ],
)
def test_a_wrong_record_is_caught(key: str, delta: int, reason: str) -> None:
    """The comparison is live: a record that differs from the declaration fails it."""
    recorded = recorded_facts()
    recorded[key] += delta
    report = conformance.compare(
        conformance.declared_facts([rknpu.HEADER]), recorded, ioctl_structs=_structs_of_ioctls()
    )
    assert any(f.key == key and reason in f.reason for f in report.mismatches)


def test_driver_version_code_decodes() -> None:
    """RKNPU_GET_DRV_VERSION's code major*10000 + minor*100 + patch decodes (0.9.8 = 908)."""
    assert rknpu.drv_version(908) == (0, 9, 8)
    assert rknpu.drv_version(10203) == (1, 2, 3)
