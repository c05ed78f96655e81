"""``npuctl`` with no arguments: one screen that says what the NPUs are doing, like nvidia-smi.

The summary is one ``GetStats`` (daemon, engines, memory tiers, per-class depth and latency,
job counts), one ``ListDevices`` (driver and board) and one ``ListContexts`` (who holds what):
three rpcs whatever the number of jobs. Its JSON is ``{"stats": GetStatsResponse, "devices":
[Device], "contexts": [Context]}``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rich.console import Group, RenderableType
from rich.text import Text

from npud.cli import tables
from npud.cli.inventory import Filters, Inventory
from npud.cli.output import to_dict
from npud.cli.units import duration
from npud.v1 import context_pb2, device_pb2, stats_pb2


@dataclass(frozen=True, slots=True)
class Summary:
    """Everything the summary shows, as the wire messages it came from."""

    stats: stats_pb2.GetStatsResponse
    devices: tuple[device_pb2.Device, ...]
    contexts: tuple[context_pb2.Context, ...]

    def to_json(self) -> dict[str, Any]:
        """The JSON document of ``npuctl -o json``."""
        return {
            "stats": to_dict(self.stats),
            "devices": [to_dict(d) for d in self.devices],
            "contexts": [to_dict(c) for c in self.contexts],
        }


def gather(inventory: Inventory, f: Filters) -> Summary:
    """Fetch the summary's three snapshots.

    Raises:
        CliError: a failed rpc.
    """
    stats = inventory.stats(f.devices[0] if len(f.devices) == 1 else "")
    if f.devices:
        kept = [d for d in stats.devices if d.device in f.devices]
        del stats.devices[:]
        stats.devices.extend(kept)
    return Summary(
        stats=stats,
        devices=tuple(inventory.devices(f)),
        contexts=tuple(inventory.contexts(f)),
    )


def headline(stats: stats_pb2.GetStatsResponse) -> Text:
    """``npud 0.2.0 | up 3.2 min | 2 sessions | <status>``."""
    d = stats.daemon
    parts = [
        f"npud {d.version}",
        f"up {duration(d.uptime_s)}",
        f"{d.sessions} session{'s' if d.sessions != 1 else ''}",
        d.status,
    ]
    if d.shutting_down:
        parts.append("SHUTTING DOWN")
    return Text(" | ".join(parts), style="bold")


def render(summary: Summary) -> RenderableType:
    """The summary screen."""
    stats = summary.stats.devices
    parts: list[RenderableType] = [
        headline(summary.stats),
        Text(""),
        tables.hardware(summary.devices),
        tables.device_overview(stats),
        tables.engines(stats),
        tables.memory(stats),
        tables.classes(stats),
        tables.job_states(stats),
    ]
    ctx_table = tables.contexts(summary.contexts, compact=True)
    ctx_table.title = f"Contexts: {len(summary.contexts)}"
    ctx_table.title_justify = "left"
    parts.append(ctx_table)
    return Group(*parts)


__all__ = ["Summary", "gather", "headline", "render"]
