"""npud's vocabulary: the enums the daemon, its clients and the wire all speak.

Each word is defined here once, and every layer imports it from here: core schedules by
:class:`SchedulingClass`, the residency manager places by :class:`MemoryTier`, the client
library hands a user the same :class:`JobState` members the scheduler set. The values are the
lower-case names the CLI, the config file, the metrics' labels and ``npuctl -o json`` print.

This module is a leaf: it imports nothing of npud, so the lowest layer (devices) may use it and
the highest (the client) sees the same types. How each enum travels on the wire (the npud.v1
proto enums, with their ``*_UNSPECIFIED`` zero) is :mod:`npud.vocab.wire`'s business.
"""

from __future__ import annotations

import enum
from typing import Final

__all__ = [
    "TERMINAL_STATES",
    "TOKEN_KEY",
    "BufferUsage",
    "DeviceHealth",
    "JobState",
    "MemoryTier",
    "Persistence",
    "SchedulingClass",
    "TierPreference",
]


class SchedulingClass(enum.StrEnum):
    """How a queue's jobs compete for an engine."""

    LATENCY = "latency"  # decode steps, interactive work: first, earliest deadline first
    THROUGHPUT = "throughput"  # prefill chunks, batches: fair share between contexts
    BACKGROUND = "background"  # anything that may wait: runs when nothing else is ready


class JobState(enum.StrEnum):
    """Where a job is in its life: QUEUED -> READY -> RUNNING, then exactly one terminal state."""

    QUEUED = "queued"
    READY = "ready"
    RUNNING = "running"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"
    REJECTED = "rejected"

    @property
    def terminal(self) -> bool:
        """Whether the job has ended (it never leaves a terminal state)."""
        return self in TERMINAL_STATES


TERMINAL_STATES: Final = frozenset(
    {
        JobState.COMPLETED,
        JobState.FAILED,
        JobState.CANCELLED,
        JobState.TIMED_OUT,
        JobState.REJECTED,
    }
)
"""The states a job ends in."""


class MemoryTier(enum.StrEnum):
    """Where device memory lives. HOST is system memory the device cannot compute on directly."""

    SRAM = "sram"
    DRAM = "dram"
    HOST = "host"


class TierPreference(enum.StrEnum):
    """Where a client would like a buffer placed."""

    ANY = "any"
    SRAM = "sram"
    DRAM = "dram"


class BufferUsage(enum.StrEnum):
    """What a buffer holds; decides what eviction does with its contents."""

    WEIGHTS = "weights"  # read-mostly; may be dropped and reloaded from its backing copy
    STATE = "state"  # e.g. a KV cache; spilled to host memory and restored bit-exact
    SCRATCH = "scratch"  # contents need not survive eviction
    COMMAND = "command"  # a command stream


class Persistence(enum.StrEnum):
    """How long a buffer lives: with its context (EPHEMERAL), or keyed and shared (PERSISTENT)."""

    EPHEMERAL = "ephemeral"
    PERSISTENT = "persistent"


class DeviceHealth(enum.StrEnum):
    """A device's overall state."""

    OK = "ok"
    RESETTING = "resetting"
    LOST = "lost"


TOKEN_KEY: Final = "npud-token"  # noqa: S105 - a metadata key, not a secret
"""The call metadata key that carries a client's session token (from the identity handshake)."""
