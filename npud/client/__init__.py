"""npud.client: the Python client library (sync and asyncio) over the generated stubs.

What an application imports to use npud; no raw stubs needed::

    import npud.client
    with npud.client.connect() as npu:              # sync
        ...
    async with npud.client.aio.connect() as npu:    # asyncio (import npud.client.aio)
        ...

Results are frozen dataclasses and enums (:mod:`npud.client.types`); failures raise the
:mod:`npud.errors` classes the daemon raised (``QueueFull``, ``NotFound``, ...). See docs/api.md.
"""

from npud.client.client import Client, SubmitStream, connect
from npud.client.events import ContextEvent, DeviceEvent, Event
from npud.client.identity import Identity
from npud.client.stats import ClassStats, DeviceStats, ResidencyStats, Stats, TierTraffic
from npud.client.types import (
    Access,
    Bind,
    Buffer,
    CommandRef,
    Context,
    Device,
    Distribution,
    Engine,
    Job,
    JobError,
    JobResult,
    JobSpec,
    Owner,
    Queue,
    Quotas,
    Readback,
    TierMemory,
)
from npud.vocab import (
    BufferUsage,
    DeviceHealth,
    JobState,
    MemoryTier,
    Persistence,
    SchedulingClass,
    TierPreference,
)

__all__ = [
    "Access",
    "Bind",
    "Buffer",
    "BufferUsage",
    "ClassStats",
    "Client",
    "CommandRef",
    "Context",
    "ContextEvent",
    "Device",
    "DeviceEvent",
    "DeviceHealth",
    "DeviceStats",
    "Distribution",
    "Engine",
    "Event",
    "Identity",
    "Job",
    "JobError",
    "JobResult",
    "JobSpec",
    "JobState",
    "MemoryTier",
    "Owner",
    "Persistence",
    "Queue",
    "Quotas",
    "Readback",
    "ResidencyStats",
    "SchedulingClass",
    "Stats",
    "SubmitStream",
    "TierMemory",
    "TierPreference",
    "TierTraffic",
    "connect",
]
