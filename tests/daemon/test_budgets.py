"""Residency budgets an operator sets in npud.toml: what npud lets itself hold per tier."""

from __future__ import annotations

from pathlib import Path

import pytest

import npud.client
from npud.client import MemoryTier as ClientTier
from npud.config import Settings, load_settings
from npud.daemon.budgets import residency_budgets
from npud.errors import ConfigError, ResourceExhausted
from npud.testing.daemon import start_daemon
from npud.vocab import MemoryTier
from tests import ROOT

MIB = 1 << 20


def test_budgets_come_from_the_residency_section() -> None:
    """``NPUD_RESIDENCY__DRAM_BUDGET_BYTES`` and ``..._SRAM_...`` become per-tier budgets;
    unset tiers are left to the device's capacity."""
    settings = load_settings(
        None,
        env={"NPUD_RESIDENCY__DRAM_BUDGET_BYTES": str(64 * MIB), "NPUD_DEVICE": "sim"},
    )
    assert residency_budgets(settings) == {MemoryTier.DRAM: 64 * MIB}
    assert residency_budgets(Settings()) == {}
    both = load_settings(
        None,
        env={
            "NPUD_RESIDENCY__DRAM_BUDGET_BYTES": "4096",
            "NPUD_RESIDENCY__SRAM_BUDGET_BYTES": "0",
        },
    )
    assert residency_budgets(both) == {MemoryTier.DRAM: 4096, MemoryTier.SRAM: 0}


@pytest.mark.parametrize("value", ["-1", "lots"])
def test_a_bad_budget_is_refused_naming_the_knob(value: str) -> None:
    """A negative or non-numeric budget is a ConfigError naming residency.<knob>."""
    with pytest.raises(ConfigError, match="dram_budget_bytes"):
        load_settings(None, env={"NPUD_RESIDENCY__DRAM_BUDGET_BYTES": value})


def test_example_file_lists_every_residency_knob() -> None:
    """Every [residency] field is in npud.toml.example."""
    text = (ROOT / "systemd" / "npud.toml.example").read_text()
    for name in type(Settings().residency).model_fields:
        assert name in text, f"residency.{name} missing from npud.toml.example"


@pytest.mark.slow
def test_the_daemon_holds_to_the_budget_and_reports_it(tmp_path: Path) -> None:
    """A daemon with a 64 MiB DRAM budget reports it beside the capacity, refuses a buffer
    larger than the budget with RESOURCE_EXHAUSTED naming it, and caps an SRAM budget above
    the tier's capacity to the capacity."""
    d = start_daemon(
        tmp_path / "d",
        env={
            "NPUD_RESIDENCY__DRAM_BUDGET_BYTES": str(64 * MIB),
            "NPUD_RESIDENCY__SRAM_BUDGET_BYTES": str(1 << 40),
        },
    )
    try:
        with npud.client.connect(d.socket) as npu:
            [dev] = npu.stats().devices
            tiers = {t.tier: t for t in dev.memory}
            assert tiers[ClientTier.DRAM].budget_bytes == 64 * MIB
            assert tiers[ClientTier.DRAM].capacity_bytes > 64 * MIB
            sram = tiers[ClientTier.SRAM]
            assert sram.budget_bytes == sram.capacity_bytes
            ctx = npu.create_context(label="budget")
            with pytest.raises(ResourceExhausted) as info:
                npu.create_buffer(ctx, 65 * MIB)
            assert "budget" in str(info.value)
            npu.create_buffer(ctx, 32 * MIB)
    finally:
        assert d.stop() == 0
