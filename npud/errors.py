"""The error vocabulary of npud.

npud has a small, closed set of errors. Every layer raises these (the ABI layer raises
``OSError`` and the device adapters translate errnos through one table in
:mod:`npud.devices.errno_map`); the API layer maps each class to exactly one gRPC status code
through one table in ``npud.api.status``. A message is written for a person: what was wrong,
the limit, and the current value, so that the operator can act on it without reading code.

This module is a leaf: it imports nothing from npud.
"""

from __future__ import annotations


class NpudError(Exception):
    """Base of every error npud raises on purpose.

    An error translated from a failed ioctl (:mod:`npud.devices.errno_map`) keeps the kernel's
    ``errno`` and the ioctl's name in ``ioctl``; other errors leave them at 0 and "".
    """

    errno: int = 0
    ioctl: str = ""


class InvalidArgument(NpudError):
    """A request is malformed: a bad size, an unknown enum value, a malformed command stream."""


class NotFound(NpudError):
    """An id (context, queue, job, buffer, device, persistent key) does not exist for this caller.

    Ids of other owners are reported as not found, so that their existence does not leak.
    """


class AlreadyExists(NpudError):
    """An object with this name or key exists already and the request asked for a new one."""


class ResourceExhausted(NpudError):
    """A limit was hit: a quota, a queue depth, device memory."""


class QuotaExceeded(ResourceExhausted):
    """A per-context or per-user quota would be exceeded (memory bytes, queued jobs, queues)."""


class QueueFull(ResourceExhausted):
    """A queue is at its depth limit."""


class OutOfDeviceMemory(ResourceExhausted):
    """A memory tier of a device cannot hold the allocation, even after eviction (ENOMEM)."""


class FailedPrecondition(NpudError):
    """The request is well formed but the object is not in a state that allows it."""


class DeadlineInfeasible(FailedPrecondition):
    """A job's deadline cannot be met given the measured durations of its kind."""


class TimeSliceExceeded(FailedPrecondition):
    """A throughput job's estimated duration exceeds the time slice: the client should chunk it."""


class Unsupported(FailedPrecondition):
    """The device or driver does not offer this operation (e.g. dma-buf export on the sim)."""


class PermissionDenied(NpudError):
    """The caller may not act on this object or change this policy."""


class Unauthenticated(NpudError):
    """The caller presented no valid session token."""


class Unavailable(NpudError):
    """The service or a device is not available right now; retrying later may work."""


class DeviceLost(Unavailable):
    """The device went away (unplugged, driver unbound, device process died)."""


class DeviceError(NpudError):
    """The kernel refused an ioctl in a way npud does not classify further.

    Carries the errno and the ioctl's name so that the log line says which call failed.
    """

    def __init__(self, message: str, *, errno: int = 0, ioctl: str = "") -> None:
        super().__init__(message)
        self.errno = errno
        self.ioctl = ioctl


class JobFailed(NpudError):
    """A job finished with an error reported by the device (the reason travels on the job)."""


class JobTimedOut(NpudError):
    """A job ran past its timeout; the watchdog ended it and reset the engine."""


class Cancelled(NpudError):
    """The job or operation was cancelled (by its owner, by context close, or by shutdown)."""


class ConfigError(NpudError):
    """The configuration is invalid; the message names the field and the reason."""
