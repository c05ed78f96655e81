"""The vocabulary on the wire: every converter pairs each member with exactly one proto number."""

from __future__ import annotations

from typing import get_type_hints

import pytest

import npud.client
from npud.core.job import JobInfo
from npud.core.policy import CLASS_ORDER
from npud.devices.base import TierInfo
from npud.v1 import types_pb2
from npud.vocab import (
    TERMINAL_STATES,
    BufferUsage,
    DeviceHealth,
    JobState,
    MemoryTier,
    Persistence,
    SchedulingClass,
    TierPreference,
)
from npud.vocab.wire import (
    CLASS,
    HEALTH,
    PERSISTENCE,
    PREFERENCE,
    STATE,
    TIER,
    USAGE,
    UnknownWireValue,
    WireEnum,
)

# (converter, Python enum, proto enum, the proto names' prefix), written out independently of
# how the converters were built
PAIRS = [
    (CLASS, SchedulingClass, types_pb2.SchedulingClass, "SCHEDULING_CLASS_"),
    (STATE, JobState, types_pb2.JobState, "JOB_STATE_"),
    (TIER, MemoryTier, types_pb2.MemoryTier, "MEMORY_TIER_"),
    (PREFERENCE, TierPreference, types_pb2.TierPreference, "TIER_PREFERENCE_"),
    (USAGE, BufferUsage, types_pb2.BufferUsage, "BUFFER_USAGE_"),
    (PERSISTENCE, Persistence, types_pb2.Persistence, "PERSISTENCE_"),
    (HEALTH, DeviceHealth, types_pb2.DeviceHealth, "DEVICE_HEALTH_"),
]
IDS = [p[1].__name__ for p in PAIRS]


@pytest.mark.parametrize(("conv", "python", "proto", "prefix"), PAIRS, ids=IDS)
def test_each_member_travels_as_the_proto_number_of_its_name(conv, python, proto, prefix) -> None:
    """to_wire gives the number the .proto names PREFIX_MEMBER; from_wire gives the member back."""
    for member in python:
        number = proto.Value(prefix + member.name)
        assert conv.to_wire(member) == number
        assert conv.from_wire(number) is member
        assert conv.from_wire_or(number, next(iter(python))) is member


@pytest.mark.parametrize(("conv", "python", "proto", "prefix"), PAIRS, ids=IDS)
def test_every_proto_number_names_one_member(conv, python, proto, prefix) -> None:
    """Each non-zero number of the proto enum decodes to a distinct member: nothing is dropped."""
    numbers = [n for n in proto.values() if n != 0]
    decoded = [conv.from_wire(n) for n in numbers]
    assert sorted(decoded, key=lambda m: m.name) == sorted(python, key=lambda m: m.name)
    assert list(conv.members()) == decoded
    assert conv.name == proto.DESCRIPTOR.name


@pytest.mark.parametrize(("conv", "python", "proto", "prefix"), PAIRS, ids=IDS)
def test_unspecified_is_none_and_an_unknown_number_is_refused(conv, python, proto, prefix) -> None:
    """Zero (nobody set the field) is None or the caller's default; a number the proto lacks
    raises UnknownWireValue naming the enum."""
    assert conv.to_wire(None) == proto.Value(prefix + "UNSPECIFIED") == 0
    assert conv.from_wire(0) is None
    default = list(python)[-1]
    assert conv.from_wire_or(0, default) is default
    unknown = max(proto.values()) + 1
    with pytest.raises(UnknownWireValue, match=f"{unknown} is not a valid {proto.DESCRIPTOR.name}"):
        conv.from_wire(unknown)
    with pytest.raises(ValueError, match="not a valid"):
        conv.from_wire_or(-1, default)


def test_a_table_that_misses_a_number_fails_when_it_is_built() -> None:
    """A pairing that leaves a proto number without a member (or two members on one number)
    is refused when the converter is made, not when a request carries the number."""
    partial = {
        MemoryTier.SRAM: types_pb2.MEMORY_TIER_SRAM,
        MemoryTier.DRAM: types_pb2.MEMORY_TIER_DRAM,
    }
    with pytest.raises(ValueError, match="MemoryTier"):
        WireEnum.explicit(types_pb2.MemoryTier, partial, "MEMORY_TIER_")
    doubled = {**partial, MemoryTier.HOST: types_pb2.MEMORY_TIER_DRAM}
    with pytest.raises(ValueError, match="MemoryTier"):
        WireEnum.explicit(types_pb2.MemoryTier, doubled, "MEMORY_TIER_")


def test_an_enum_member_without_a_proto_number_fails_when_paired() -> None:
    """Pairing by name refuses an enum with a member the proto does not have."""
    with pytest.raises(ValueError, match="HOST"):
        WireEnum.pair(MemoryTier, types_pb2.TierPreference, "TIER_PREFERENCE_")


def test_the_client_and_core_hand_around_the_same_members() -> None:
    """npud.client re-exports the vocabulary itself: a member from the client library is the
    member core's snapshots and the device contract carry, not an equal copy."""
    assert npud.client.SchedulingClass is SchedulingClass
    assert npud.client.JobState is JobState
    assert npud.client.MemoryTier is MemoryTier
    assert npud.client.TierPreference is TierPreference
    assert npud.client.BufferUsage is BufferUsage
    assert npud.client.Persistence is Persistence
    assert npud.client.DeviceHealth is DeviceHealth
    assert get_type_hints(JobInfo)["state"] is JobState
    assert get_type_hints(JobInfo)["sched_class"] is SchedulingClass
    assert get_type_hints(TierInfo)["tier"] is MemoryTier
    assert set(CLASS_ORDER) == set(SchedulingClass)


def test_terminal_states_are_exactly_the_ends_of_a_job() -> None:
    """A job ends in COMPLETED, FAILED, CANCELLED, TIMED_OUT or REJECTED; the rest are live."""
    ends = {"completed", "failed", "cancelled", "timed_out", "rejected"}
    assert {str(s) for s in TERMINAL_STATES} == ends
    for state in JobState:
        assert state.terminal is (str(state) in ends)
