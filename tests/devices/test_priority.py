"""Class -> native priority: the maps, and what actually reaches each fake kernel."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npud.devices import priority
from npud.devices.base import Binding, BufferUse, Submission
from npud.errors import InvalidArgument
from npud.vocab import MemoryTier
from tests.devices.accel_harness import make


def test_ivpu_levels_are_the_job_priorities_most_urgent_first() -> None:
    """ivpu levels 0..3 are REALTIME, FOCUS, NORMAL, IDLE; only level 0 asks for TURBO."""
    assert priority.IVPU.values == (4, 3, 2, 1)
    assert [priority.IVPU.turbo(level) for level in range(4)] == [True, False, False, False]


def test_amdxdna_levels_are_qos_priorities_most_urgent_first() -> None:
    """amdxdna levels 0..3 are the QoS REALTIME, HIGH, NORMAL, LOW values."""
    assert priority.AMDXDNA.values == (0x100, 0x180, 0x200, 0x280)


@pytest.mark.parametrize("driver", ["rocket", "ethosu", "qaic", "etnaviv", "rknpu"])
def test_drivers_without_priority_have_one_level(driver: str) -> None:
    """rocket, ethosu, qaic, etnaviv and rknpu offer one level: ordering happens in npud
    (rknpu's submit has a priority field, but its job queues never read it)."""
    assert priority.MAPS[driver].levels == 1
    assert priority.level_for_class(priority.LATENCY, 1) == 0
    assert priority.level_for_class(priority.BACKGROUND, 1) == 0


def test_class_mapping_on_four_levels() -> None:
    """LATENCY -> REALTIME, THROUGHPUT -> NORMAL, BACKGROUND -> IDLE on ivpu."""
    levels = priority.IVPU.levels
    picked = {c: priority.IVPU.value(priority.level_for_class(c, levels)) for c in priority.CLASSES}
    assert picked == {
        priority.LATENCY: priority.IVPU_JOB_PRIORITY_REALTIME,
        priority.THROUGHPUT: priority.IVPU_JOB_PRIORITY_NORMAL,
        priority.BACKGROUND: priority.IVPU_JOB_PRIORITY_IDLE,
    }
    assert priority.level_for_class(priority.LATENCY, levels, within_class=1) == 1


def test_bad_inputs_are_refused() -> None:
    """Unknown classes, no levels and out-of-range levels are invalid arguments."""
    with pytest.raises(InvalidArgument):
        priority.level_for_class("urgent", 4)
    with pytest.raises(InvalidArgument):
        priority.level_for_class(priority.LATENCY, 0)
    with pytest.raises(InvalidArgument):
        priority.IVPU.value(4)


@settings(max_examples=50, deadline=None)
@given(levels=st.integers(1, 8))
def test_class_order_is_monotonic(levels: int) -> None:
    """Whatever the level count, LATENCY <= THROUGHPUT <= BACKGROUND and all are in range."""
    got = [priority.level_for_class(c, levels) for c in priority.CLASSES]
    assert got == sorted(got)
    assert all(0 <= g < levels for g in got)


def _submit_each_level(driver: str) -> object:
    async def scenario() -> object:
        fake, build = make(driver)
        device = build(name=f"{driver}0")
        device.open()
        out = device.create_buffer(4096, MemoryTier.DRAM)
        for level in range(device.capabilities.native_priorities):
            done: list[str] = []
            sub = Submission(
                out.handle, 0, 64, (Binding(out.handle, BufferUse.WRITE),), 0, priority=level
            )
            device.submit(sub, lambda c, done=done: done.append(c.status))
            async with asyncio.timeout(30):
                while not done:
                    await asyncio.sleep(0.001)
            assert done == ["ok"]
        if driver == "ivpu":
            state: object = {"cmdqs": dict(fake.files[0].state["cmdqs"])}
        else:
            state = dict(fake.hwctxs)  # type: ignore[attr-defined]
        device.close()
        return state

    return asyncio.run(scenario())


def test_ivpu_queues_carry_the_native_priority_and_turbo() -> None:
    """Each level gets its own ivpu command queue with its priority; TURBO only on level 0."""
    state = _submit_each_level("ivpu")
    queues = sorted(state["cmdqs"].values(), key=lambda q: -q["priority"])  # type: ignore[index]
    assert [(q["priority"], q["flags"]) for q in queues] == [(4, 1), (3, 0), (2, 0), (1, 0)]


def test_amdxdna_contexts_carry_the_qos_priority() -> None:
    """Each level runs on a hardware context created with that level's qos_info.priority."""
    hwctxs = _submit_each_level("amdxdna")
    assert sorted(c["qos"]["priority"] for c in hwctxs.values()) == [  # type: ignore[attr-defined]
        0x100,
        0x180,
        0x200,
        0x280,
    ]


def test_every_driver_has_an_adapter_and_a_priority_map() -> None:
    """Each accel driver name resolves to its adapter, whose map matches the driver."""
    from npud.devices.accel_adapters import adapter_for

    for module, name in [
        ("rocket", "rocket"),
        ("intel_vpu", "ivpu"),
        ("amdxdna", "amdxdna"),
        ("ethosu", "ethosu"),
        ("qaic", "qaic"),
        ("etnaviv", "etnaviv"),
        ("rknpu", "rknpu"),
    ]:
        cls = adapter_for(module)
        assert cls is not None
        assert name in cls.__module__
        assert priority.MAPS[name].driver == name
    assert adapter_for("vc4") is None
