"""Human units for npuctl's tables: bytes, durations, fractions, and proto enum names.

Tables are for people and are not a stable interface (``-o json`` is). Each formatter returns a
string of a bounded, mostly fixed width, so that columns do not jump about between refreshes of
``-l`` and ``top``; "-" stands for "no figure yet" (an empty window, a job not yet run).
"""

from __future__ import annotations

from typing import Final

from google.protobuf.descriptor import EnumDescriptor

_BINARY_UNITS: Final = ("B", "KiB", "MiB", "GiB", "TiB")


def size(n: int) -> str:
    """``n`` bytes in binary units: ``"512 B"``, ``"4.0 KiB"``, ``"4.0 GiB"``."""
    value = float(n)
    for unit in _BINARY_UNITS:
        if value < 1024 or unit == _BINARY_UNITS[-1]:
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")  # pragma: no cover


def duration(seconds: float) -> str:
    """A duration in the unit that keeps three significant figures; "-" for zero."""
    if seconds <= 0:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds < 1.0:
        return f"{seconds * 1e3:.2f} ms"
    if seconds < 120.0:
        return f"{seconds:.2f} s"
    if seconds < 7200.0:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def percent(fraction: float) -> str:
    """A 0..1 fraction as a percentage with one decimal: ``"15.4%"``."""
    return f"{fraction * 100:.1f}%"


def usage(used: int, capacity: int) -> str:
    """``"4.0 KiB / 956.0 KiB (0.4%)"``; "none" for a tier the device lacks (capacity 0)."""
    if capacity == 0:
        return "none"
    return f"{size(used)} / {size(capacity)} ({percent(used / capacity)})"


def enum_name(enum: EnumDescriptor, value: int) -> str:
    """A proto enum value without its type prefix, lower case: ``"latency"``, ``"timed_out"``.

    ``enum`` is the enum's descriptor (``types_pb2.JobState.DESCRIPTOR``). Values this build
    does not know (a newer daemon) print as their number; UNSPECIFIED as "-".
    """
    found = enum.values_by_number.get(value)
    if found is None:
        return str(value)
    name = found.name
    prefix = _prefix(enum)
    short = name.removeprefix(prefix).lower()
    return "-" if short == "unspecified" else short


def enum_value(enum: EnumDescriptor, short: str) -> int:
    """The proto value of a short, case-insensitive name (``"latency"``).

    Raises:
        ValueError: no value of ``enum`` has that name.
    """
    full = _prefix(enum) + short.upper().replace("-", "_")
    found = enum.values_by_name.get(full)
    if found is None:
        raise ValueError(f"{enum.name} has no value {short!r}")
    return int(found.number)


def enum_choices(enum: EnumDescriptor) -> list[str]:
    """Every short name of ``enum`` but UNSPECIFIED, for ``--help`` and validation."""
    prefix = _prefix(enum)
    return [
        v.name.removeprefix(prefix).lower()
        for v in enum.values
        if not v.name.endswith("_UNSPECIFIED")
    ]


def _prefix(enum: EnumDescriptor) -> str:
    # buf style: every value starts with the enum's name in UPPER_SNAKE, e.g. JOB_STATE_.
    names = [v.name for v in enum.values]
    unspecified = next((n for n in names if n.endswith("_UNSPECIFIED")), None)
    return unspecified.removesuffix("UNSPECIFIED") if unspecified else ""


__all__ = ["duration", "enum_choices", "enum_name", "enum_value", "percent", "size", "usage"]
