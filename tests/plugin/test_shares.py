"""The share table: ids, health, and preferred allocations packed onto few devices."""

from __future__ import annotations

import pytest

from npud.plugin.shares import ShareTable, device_of, share_id


def test_ids_health_and_versions() -> None:
    """N shares per device carry the device's health; only real changes bump the version."""
    table = ShareTable(3)
    assert table.set_health("sim0", True)
    assert not table.set_health("sim0", True)
    table.set_health("accel1", False)
    assert [(s.id, s.health) for s in table.shares()] == [
        ("sim0-share-0", "Healthy"),
        ("sim0-share-1", "Healthy"),
        ("sim0-share-2", "Healthy"),
        ("accel1-share-0", "Unhealthy"),
        ("accel1-share-1", "Unhealthy"),
        ("accel1-share-2", "Unhealthy"),
    ]
    assert table.version == 2
    assert device_of(share_id("my-npu-share-x", 7)) == "my-npu-share-x"
    assert table.is_share("sim0-share-2")
    assert not table.is_share("sim0-share-3")
    assert not table.is_share("gpu0-share-0")
    assert table.statistics().unhealthy == 3
    with pytest.raises(ValueError, match="at least 1"):
        ShareTable(0)


def test_preferred_packs_onto_the_fullest_healthy_device_after_the_required() -> None:
    """Required shares come first and pull their device forward; otherwise the device with
    the most free healthy shares fills first; unhealthy devices are never preferred."""
    table = ShareTable(4)
    for d in ("a", "b", "c"):
        table.set_health(d, True)
    table.set_health("c", False)
    free = ["a-share-0", "b-share-0", "b-share-1", "b-share-2", "c-share-0", "c-share-1"]
    assert table.preferred(free, [], 2) == ["b-share-0", "b-share-1"]
    assert table.preferred(free, ["a-share-3"], 2) == ["a-share-3", "a-share-0"]
    assert table.preferred(free, [], 5) == ["b-share-0", "b-share-1", "b-share-2", "a-share-0"]
