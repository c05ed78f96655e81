"""What the ``[residency]`` settings give each device's residency manager.

A budget is what npud lets itself hold in a memory tier of one device (default: the whole
tier). Core takes budgets per tier; the settings name them in bytes per tier kind, the same for
every device the daemon serves. A budget larger than a device's tier is capped to the tier by
the residency manager.
"""

from __future__ import annotations

from npud.config import Settings
from npud.vocab import MemoryTier


def residency_budgets(settings: Settings) -> dict[MemoryTier, int]:
    """The per-tier budgets the settings set (tiers they leave unset are absent)."""
    r = settings.residency
    budgets: dict[MemoryTier, int] = {}
    if r.dram_budget_bytes is not None:
        budgets[MemoryTier.DRAM] = r.dram_budget_bytes
    if r.sram_budget_bytes is not None:
        budgets[MemoryTier.SRAM] = r.sram_budget_bytes
    return budgets


__all__ = ["residency_budgets"]
