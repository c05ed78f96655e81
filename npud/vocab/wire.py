"""The vocabulary on the wire: one typed converter per enum, proto enum <-> Python enum.

Every npud.v1 enum starts with an ``*_UNSPECIFIED`` zero (proto3's default for a field nobody
set) followed by one number per member of the matching :mod:`npud.vocab` enum, named
``PREFIX_MEMBER``. A :class:`WireEnum` holds that pairing as two total tables, built once at
import and checked both ways, so a member added on one side only fails the import instead of a
request. The daemon's request handlers and the client library both convert through the
converters below; what an UNSPECIFIED or unknown number *means* (a default, an error naming the
field) is the caller's decision, because it differs per field.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Generic, TypeVar

from npud.v1 import types_pb2
from npud.vocab import (
    BufferUsage,
    DeviceHealth,
    JobState,
    MemoryTier,
    Persistence,
    SchedulingClass,
    TierPreference,
)

if TYPE_CHECKING:
    from google.protobuf.internal.enum_type_wrapper import _EnumTypeWrapper

__all__ = [
    "CLASS",
    "HEALTH",
    "PERSISTENCE",
    "PREFERENCE",
    "STATE",
    "TIER",
    "USAGE",
    "UnknownWireValue",
    "WireEnum",
]

E = TypeVar("E", bound=enum.Enum)
W = TypeVar("W", bound=int)


class UnknownWireValue(ValueError):
    """A number that names no member of the proto enum (a newer peer, or a corrupt message)."""


@dataclass(frozen=True, slots=True)
class WireEnum(Generic[E, W]):
    """A bijection between a Python enum's members and its proto enum's non-zero numbers.

    Attributes:
        name: the proto enum's name, for messages ("SchedulingClass").
        unspecified: the proto enum's zero.
    """

    name: str
    unspecified: W
    _to_wire: Mapping[E, W]
    _from_wire: Mapping[int, E]

    @classmethod
    def pair(cls, python: type[E], wire: _EnumTypeWrapper[W], prefix: str) -> WireEnum[E, W]:
        """Pair ``python``'s members with ``wire``'s numbers by name (``PREFIX_MEMBER``).

        Raises:
            ValueError: a member has no wire number, or a non-zero number has no member.
        """
        return cls.explicit(
            wire, {member: wire.Value(prefix + member.name) for member in python}, prefix
        )

    @classmethod
    def explicit(
        cls, wire: _EnumTypeWrapper[W], table: Mapping[E, W], prefix: str
    ) -> WireEnum[E, W]:
        """Pair members and numbers as ``table`` says (for enums whose names differ).

        Raises:
            ValueError: ``table`` is not a bijection onto ``wire``'s non-zero numbers.
        """
        name = wire.DESCRIPTOR.name
        unspecified = wire.Value(prefix + "UNSPECIFIED")
        numbers = {n for n in wire.values() if n != unspecified}
        backwards: dict[int, E] = {number: member for member, number in table.items()}
        if len(backwards) != len(table) or set(backwards) != numbers:
            raise ValueError(f"{name}: the table does not pair every wire number with one member")
        return cls(name, unspecified, dict(table), backwards)

    def to_wire(self, value: E | None) -> W:
        """The wire number of ``value`` (the UNSPECIFIED zero for None)."""
        if value is None:
            return self.unspecified
        return self._to_wire[value]

    def from_wire(self, value: int) -> E | None:
        """The member a wire number names; None for UNSPECIFIED.

        Raises:
            UnknownWireValue: a number the proto enum does not have.
        """
        if value == self.unspecified:
            return None
        try:
            return self._from_wire[value]
        except KeyError:
            raise UnknownWireValue(f"{value} is not a valid {self.name}") from None

    def from_wire_or(self, value: int, default: E) -> E:
        """The member a wire number names; ``default`` for UNSPECIFIED.

        Raises:
            UnknownWireValue: a number the proto enum does not have.
        """
        member = self.from_wire(value)
        return default if member is None else member

    def members(self) -> tuple[E, ...]:
        """Every member, in wire-number order."""
        return tuple(self._from_wire[n] for n in sorted(self._from_wire))


CLASS: WireEnum[SchedulingClass, types_pb2.SchedulingClass.ValueType] = WireEnum.pair(
    SchedulingClass, types_pb2.SchedulingClass, "SCHEDULING_CLASS_"
)
STATE: WireEnum[JobState, types_pb2.JobState.ValueType] = WireEnum.pair(
    JobState, types_pb2.JobState, "JOB_STATE_"
)
TIER: WireEnum[MemoryTier, types_pb2.MemoryTier.ValueType] = WireEnum.pair(
    MemoryTier, types_pb2.MemoryTier, "MEMORY_TIER_"
)
PREFERENCE: WireEnum[TierPreference, types_pb2.TierPreference.ValueType] = WireEnum.pair(
    TierPreference, types_pb2.TierPreference, "TIER_PREFERENCE_"
)
USAGE: WireEnum[BufferUsage, types_pb2.BufferUsage.ValueType] = WireEnum.pair(
    BufferUsage, types_pb2.BufferUsage, "BUFFER_USAGE_"
)
PERSISTENCE: WireEnum[Persistence, types_pb2.Persistence.ValueType] = WireEnum.pair(
    Persistence, types_pb2.Persistence, "PERSISTENCE_"
)
HEALTH: WireEnum[DeviceHealth, types_pb2.DeviceHealth.ValueType] = WireEnum.pair(
    DeviceHealth, types_pb2.DeviceHealth, "DEVICE_HEALTH_"
)
