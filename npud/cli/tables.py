"""Rich tables for each npud object, built from the wire messages themselves.

One builder per noun (devices, contexts, queues, jobs, buffers) plus the pieces of the summary
and of ``top`` (engine utilisation, memory per tier, per-class queue depth and latency). They
read proto messages, not client dataclasses, so a table and ``-o json`` always show the same
object. :func:`detail` renders any message as a field/value list for ``show``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC
from typing import Any, Final

from google.protobuf.message import Message
from rich import box
from rich.table import Table

from npud.cli.units import duration, enum_name, percent, size, usage
from npud.v1 import (
    buffer_pb2,
    context_pb2,
    device_pb2,
    job_pb2,
    stats_pb2,
    types_pb2,
)

_BOX: Final = box.SIMPLE_HEAD
_BAR_WIDTH: Final = 10


def _table(title: str | None, *columns: str, right: Iterable[str] = ()) -> Table:
    table = Table(
        title=title,
        box=_BOX,
        title_justify="left",
        pad_edge=False,
        show_edge=False,
        collapse_padding=True,
    )
    right_set = set(right)
    for col in columns:
        table.add_column(col, justify="right" if col in right_set else "left", no_wrap=True)
    return table


def bar(fraction: float) -> str:
    """A fixed-width utilisation bar: ``"███░░░░░░░"`` for 0.3."""
    fraction = min(max(fraction, 0.0), 1.0)
    filled = round(fraction * _BAR_WIDTH)
    return "█" * filled + "░" * (_BAR_WIDTH - filled)


def _sched(value: int) -> str:
    return enum_name(types_pb2.SchedulingClass.DESCRIPTOR, value)


def _tier(tiers: Sequence[device_pb2.TierMemory], tier: int) -> device_pb2.TierMemory | None:
    return next((t for t in tiers if t.tier == tier), None)


def _tier_usage(tiers: Sequence[device_pb2.TierMemory], tier: int) -> str:
    found = _tier(tiers, tier)
    return "none" if found is None else usage(found.used_bytes, found.capacity_bytes)


def _owner(owner: context_pb2.Owner) -> str:
    who = owner.name or f"uid {owner.uid}"
    return f"{who} ({owner.pid})" if owner.pid else who


_DEVICE_COLUMNS: Final = (
    "NAME",
    "DRIVER",
    "BOARD",
    "KIND",
    "HEALTH",
    "ENGINES",
    "UTILISATION",
    "SRAM",
    "DRAM",
    "NODE",
)
_FIGURES: Final = ("UTILISATION", "SRAM", "DRAM")


def _device_table(title: str | None, items: Sequence[device_pb2.Device], *, figures: bool) -> Table:
    """One row per device: its identity, and with ``figures`` its utilisation and memory."""
    columns = [c for c in _DEVICE_COLUMNS if figures or c not in _FIGURES]
    table = _table(title, *columns, right=("ENGINES",))
    for d in items:
        cells = {
            "NAME": d.name,
            "DRIVER": f"{d.driver} {d.driver_version}",
            "BOARD": d.board or "-",
            "KIND": "simulated" if d.simulated else "real",
            "HEALTH": enum_name(types_pb2.DeviceHealth.DESCRIPTOR, d.health),
            "ENGINES": str(len(d.engines)),
            "UTILISATION": " ".join(percent(e.utilisation) for e in d.engines) or "-",
            "SRAM": _tier_usage(d.tiers, types_pb2.MEMORY_TIER_SRAM),
            "DRAM": _tier_usage(d.tiers, types_pb2.MEMORY_TIER_DRAM),
            "NODE": d.node or "-",
        }
        table.add_row(*(cells[col] for col in columns))
    return table


def devices(items: Sequence[device_pb2.Device]) -> Table:
    """``npuctl devices list``: one row per device, utilisation per engine, memory per tier."""
    return _device_table(None, items, figures=True)


def contexts(items: Sequence[context_pb2.Context], *, compact: bool = False) -> Table:
    """``npuctl contexts list``: who holds what on which device.

    ``compact`` (the summary) leaves out weight and age so the table fits ~110 columns.
    """
    columns = ["ID", "DEVICE", "OWNER", "LABEL", "CLASS", "WEIGHT", "QUEUES", "QUEUED"]
    columns += ["RUNNING", "BUFFERS", "MEMORY", "AGE"]
    if compact:
        columns = [c for c in columns if c not in ("WEIGHT", "AGE")]
    table = _table(
        None,
        *columns,
        right=("WEIGHT", "QUEUES", "QUEUED", "RUNNING", "BUFFERS", "MEMORY", "AGE"),
    )
    for c in items:
        cells = {
            "ID": c.context_id,
            "DEVICE": c.device,
            "OWNER": _owner(c.owner),
            "LABEL": c.label or "-",
            "CLASS": _sched(c.default_class),
            "WEIGHT": f"{c.weight:g}",
            "QUEUES": str(c.queues),
            "QUEUED": str(c.queued_jobs),
            "RUNNING": str(c.running_jobs),
            "BUFFERS": str(c.buffers),
            "MEMORY": size(c.memory_bytes),
            "AGE": duration(c.age_s),
        }
        table.add_row(*(cells[col] for col in columns))
    return table


def hardware(items: Sequence[device_pb2.Device]) -> Table:
    """The summary's device identity: driver, board, kind, health, node (no figures)."""
    return _device_table("Hardware", items, figures=False)


def queues(items: Sequence[job_pb2.Queue]) -> Table:
    """``npuctl queues list``: each queue's class, priority and depth against its limit."""
    table = _table(
        None,
        "ID",
        "CONTEXT",
        "CLASS",
        "PRIORITY",
        "DEPTH",
        "LIMIT",
        "ORDER",
        "LABEL",
        right=("PRIORITY", "DEPTH", "LIMIT"),
    )
    for q in items:
        table.add_row(
            q.queue_id,
            q.context_id,
            _sched(q.scheduling_class),
            str(q.priority),
            str(q.depth),
            str(q.depth_limit),
            "in-order" if q.in_order else "any",
            q.label or "-",
        )
    return table


def jobs(items: Sequence[job_pb2.Job]) -> Table:
    """``npuctl jobs list``: state, queue wait and run time of each job."""
    table = _table(
        None,
        "ID",
        "CONTEXT",
        "QUEUE",
        "CLASS",
        "KIND",
        "STATE",
        "ENGINE",
        "WAIT",
        "RUN",
        "MODELLED",
        "AGE",
        "ERROR",
        right=("ENGINE", "WAIT", "RUN", "MODELLED", "AGE"),
    )
    for j in items:
        table.add_row(*job_row(j))
    return table


def job_row(j: job_pb2.Job) -> tuple[str, ...]:
    """The cells of one job row (shared by ``jobs list`` and ``top``)."""
    return (
        j.job_id,
        j.context_id,
        j.queue_id,
        _sched(j.scheduling_class),
        j.kind or "-",
        enum_name(types_pb2.JobState.DESCRIPTOR, j.state),
        str(j.engine) if j.engine >= 0 else "-",
        duration(j.queue_wait_s),
        duration(j.run_s),
        duration(j.modelled_s),
        duration(j.age_s),
        j.error.kind if j.HasField("error") and j.error.kind else "-",
    )


def live_jobs(items: Sequence[job_pb2.Job]) -> Table:
    """The narrower jobs table of ``top``: no queue id or modelled time, so ids fit; the
    context is named by its label where it has one."""
    table = _table(
        None,
        "ID",
        "CONTEXT",
        "CLASS",
        "KIND",
        "STATE",
        "ENG",
        "WAIT",
        "RUN",
        "AGE",
        "ERROR",
        right=("ENG", "WAIT", "RUN", "AGE"),
    )
    for j in items:
        row = job_row(j)
        table.add_row(row[0], context_name(j), *row[3:9], row[10], row[11])
    return table


def context_name(j: job_pb2.Job) -> str:
    """How ``top`` names a job's context: its label ("chat-alice"), else its id."""
    return j.context_label or j.context_id


def buffers(items: Sequence[buffer_pb2.Buffer]) -> Table:
    """``npuctl buffers list``: size, usage, persistence and where each buffer is resident."""
    table = _table(
        None,
        "ID",
        "CONTEXT",
        "SIZE",
        "USAGE",
        "PERSISTENCE",
        "KEY",
        "RESIDENT",
        "PINS",
        "USERS",
        "VALID",
        right=("SIZE", "PINS", "USERS"),
    )
    for b in items:
        table.add_row(
            b.buffer_id,
            b.context_id,
            size(b.size),
            enum_name(types_pb2.BufferUsage.DESCRIPTOR, b.usage),
            enum_name(types_pb2.Persistence.DESCRIPTOR, b.persistence),
            b.key or "-",
            enum_name(types_pb2.MemoryTier.DESCRIPTOR, b.resident_tier),
            str(b.pins),
            str(b.users),
            "yes" if b.valid else "no",
        )
    return table


def device_overview(items: Sequence[stats_pb2.DeviceStats]) -> Table:
    """The summary's device lines: kind, health, policy, and how busy each device is."""
    table = _table(
        "Devices",
        "DEVICE",
        "KIND",
        "HEALTH",
        "POLICY",
        "CONTEXTS",
        "QUEUES",
        "SUBMITTED",
        "RESETS",
        right=("CONTEXTS", "QUEUES", "SUBMITTED", "RESETS"),
    )
    for d in items:
        table.add_row(
            d.device,
            "simulated" if d.simulated else "real",
            enum_name(types_pb2.DeviceHealth.DESCRIPTOR, d.health),
            d.policy,
            str(d.contexts),
            str(d.queues),
            str(d.submitted),
            str(d.device_resets),
        )
    return table


def engines(items: Sequence[stats_pb2.DeviceStats]) -> Table:
    """Utilisation of every engine of every device over the daemon's recent window."""
    table = _table("Engines", "DEVICE", "ENGINE", "BUSY", "UTIL", right=("UTIL",))
    for d in items:
        for e in d.engines:
            table.add_row(
                d.device, f"{e.index} {e.name}", bar(e.utilisation), percent(e.utilisation)
            )
    return table


def memory(items: Sequence[stats_pb2.DeviceStats]) -> Table:
    """Memory per tier of every device, on-chip SRAM included (capacity 0: none)."""
    table = _table(
        "Memory",
        "DEVICE",
        "TIER",
        "USED",
        "CAPACITY",
        "USE",
        "BANDWIDTH",
        right=("USED", "CAPACITY", "USE", "BANDWIDTH"),
    )
    for d in items:
        for t in d.memory:
            table.add_row(
                d.device,
                enum_name(types_pb2.MemoryTier.DESCRIPTOR, t.tier),
                size(t.used_bytes),
                size(t.capacity_bytes) if t.capacity_bytes else "none",
                percent(t.used_bytes / t.capacity_bytes) if t.capacity_bytes else "-",
                f"{t.bandwidth_bytes_per_s / 1e9:.1f} GB/s" if t.bandwidth_bytes_per_s else "-",
            )
    return table


def classes(items: Sequence[stats_pb2.DeviceStats]) -> Table:
    """Queue depth per class and recent wait/run percentiles: why was a decode step slow?"""
    table = _table(
        "Scheduling classes (recent window)",
        "DEVICE",
        "CLASS",
        "QUEUED",
        "RUNNING",
        "SAMPLES",
        "WAIT p50",
        "WAIT p99",
        "RUN p50",
        "RUN p99",
        "SHARE",
        right=(
            "QUEUED",
            "RUNNING",
            "SAMPLES",
            "WAIT p50",
            "WAIT p99",
            "RUN p50",
            "RUN p99",
            "SHARE",
        ),
    )
    for d in items:
        for c in d.classes:
            table.add_row(
                d.device,
                _sched(c.scheduling_class),
                str(c.queued),
                str(c.running),
                str(c.run.count),
                duration(c.wait.p50_s),
                duration(c.wait.p99_s),
                duration(c.run.p50_s),
                duration(c.run.p99_s),
                percent(c.share),
            )
    return table


def job_states(items: Sequence[stats_pb2.DeviceStats]) -> Table:
    """Jobs per state since the daemon started, and the residency counters, per device
    (UPLOADED: bytes clients wrote; ATTACHES: persistent buffers opened by key instead)."""
    table = _table(
        "Jobs and residency (since start)",
        "DEVICE",
        "JOBS BY STATE",
        "BUFFERS",
        "PERSISTENT",
        "WARM",
        "EVICTIONS",
        "UPLOADED",
        "ATTACHES",
        right=("BUFFERS", "PERSISTENT", "WARM", "EVICTIONS", "UPLOADED", "ATTACHES"),
    )
    for d in items:
        states = ", ".join(
            f"{enum_name(types_pb2.JobState.DESCRIPTOR, s.state)} {s.count}"
            for s in d.states
            if s.count
        )
        r = d.residency
        table.add_row(
            d.device,
            states or "-",
            str(r.buffers),
            str(r.persistent_buffers),
            str(r.warm_buffers),
            str(r.evictions),
            size(r.uploaded_bytes),
            str(r.attaches),
        )
    return table


# ---- show: any message as field / value -----------------------------------------------------


def detail(message: Message) -> Table:
    """Every field of ``message`` (nested ones dotted, repeated ones indexed), set or not."""
    table = Table(box=_BOX, show_header=False, pad_edge=False, show_edge=False)
    table.add_column("FIELD", style="bold", no_wrap=True)
    table.add_column("VALUE")
    for name, value in _flatten(message, ""):
        table.add_row(name, value)
    return table


_TIMESTAMP = "google.protobuf.Timestamp"  # shown as one ISO 8601 time, not seconds + nanos


def _flatten(message: Message, prefix: str) -> Iterable[tuple[str, str]]:
    for field in message.DESCRIPTOR.fields:
        name = prefix + field.name
        value: Any = getattr(message, field.name)
        if field.message_type is not None and field.message_type.full_name == _TIMESTAMP:
            if message.HasField(field.name):
                yield name, value.ToDatetime(tzinfo=UTC).isoformat(timespec="microseconds")
        elif field.message_type is not None:
            if _is_repeated(field):
                for i, item in enumerate(value):
                    yield from _flatten(item, f"{name}[{i}].")
            elif message.HasField(field.name):  # an unset sub-message is not shown
                yield from _flatten(value, name + ".")
        elif _is_repeated(field):
            yield name, ", ".join(_scalar(field, v) for v in value) or "-"
        elif field.containing_oneof is None or message.HasField(field.name):
            yield name, _scalar(field, value)


def _is_repeated(field: Any) -> bool:
    return bool(field.is_repeated)


def _scalar(field: Any, value: Any) -> str:
    if field.enum_type is not None:
        return (
            field.enum_type.values_by_number[value].name
            if value in field.enum_type.values_by_number
            else str(value)
        )
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    if isinstance(value, float):
        if field.name in ("utilisation", "share"):
            return percent(value)
        if field.name.endswith("_s") and not field.name.endswith("_per_s"):
            return f"{value:.6g} s ({duration(value)})" if value > 0 else "0"
        return f"{value:.6g}"
    if isinstance(value, int) and field.name.endswith("_bytes") and value:
        return f"{value} ({size(value)})"
    return str(value) if value != "" else "-"


__all__ = [
    "bar",
    "buffers",
    "classes",
    "contexts",
    "detail",
    "device_overview",
    "devices",
    "engines",
    "hardware",
    "job_row",
    "job_states",
    "jobs",
    "live_jobs",
    "memory",
    "queues",
]
