"""The one table from npud errors to gRPC status codes, and how an error leaves a servicer.

Every npud error class maps to exactly one :class:`grpc.StatusCode` through :data:`STATUS_OF`;
a test checks that the table names every class in :mod:`npud.errors`, so a new error class
cannot ship without a decision about its code. The error's class name travels in the trailing
metadata key ``npud-error`` so the client library can raise the same class again (the status
code alone cannot tell ``QueueFull`` from ``QuotaExceeded``).

Messages are the errors' own: core writes them for a person (what was wrong, the limit, the
current value); this module does not reword them.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final

import grpc

from npud import errors
from npud.core.limits import clip

_log = logging.getLogger(__name__)

ERROR_KIND_KEY: Final = "npud-error"
"""Trailing metadata key carrying the npud.errors class name of a failed rpc."""

STATUS_OF: Final[dict[type[errors.NpudError], grpc.StatusCode]] = {
    errors.NpudError: grpc.StatusCode.INTERNAL,
    errors.InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    errors.ConfigError: grpc.StatusCode.INVALID_ARGUMENT,
    errors.NotFound: grpc.StatusCode.NOT_FOUND,
    errors.AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    errors.ResourceExhausted: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.QuotaExceeded: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.QueueFull: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.OutOfDeviceMemory: grpc.StatusCode.RESOURCE_EXHAUSTED,
    errors.FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    errors.DeadlineInfeasible: grpc.StatusCode.FAILED_PRECONDITION,
    errors.TimeSliceExceeded: grpc.StatusCode.FAILED_PRECONDITION,
    errors.Unsupported: grpc.StatusCode.FAILED_PRECONDITION,
    errors.PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
    errors.Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    errors.Unavailable: grpc.StatusCode.UNAVAILABLE,
    errors.DeviceLost: grpc.StatusCode.UNAVAILABLE,
    # The kernel refused something npud does not classify: a bug or a driver surprise.
    errors.DeviceError: grpc.StatusCode.INTERNAL,
    # A job's own failure reported as an rpc outcome (e.g. a stream entry): not retryable as is.
    errors.JobFailed: grpc.StatusCode.ABORTED,
    errors.JobTimedOut: grpc.StatusCode.DEADLINE_EXCEEDED,
    errors.Cancelled: grpc.StatusCode.CANCELLED,
}


def status_of(error: BaseException) -> grpc.StatusCode:
    """The status code for ``error``: its class's entry, else its nearest listed base.

    Anything that is not an npud error is a bug and maps to INTERNAL.
    """
    for cls in type(error).__mro__:
        code = STATUS_OF.get(cls)
        if code is not None:
            return code
    return grpc.StatusCode.INTERNAL


def kind_of(error: BaseException) -> str:
    """The npud.errors class name that travels with the status (``"NpudError"`` if unknown)."""
    for cls in type(error).__mro__:
        if cls in STATUS_OF:
            return cls.__name__
    return "NpudError"


MAX_MESSAGE_CHARS: Final = 1024
"""The longest status message sent: a message echoing a 1 MiB id would overflow gRPC's 16 KiB
trailer, and the client would see "Stream removed" instead of the error."""


def message_of(error: BaseException) -> str:
    """The message for the person at the other end (the class name when the error has none),
    clipped to :data:`MAX_MESSAGE_CHARS`."""
    text = str(error)
    return clip(text, MAX_MESSAGE_CHARS) if text else type(error).__name__


def code_number(code: grpc.StatusCode) -> int:
    """The numeric value of a status code (google.rpc.Code numbering)."""
    value = code.value[0]
    assert isinstance(value, int)
    return value


def trailing_metadata_of(error: BaseException) -> tuple[tuple[str, str], ...]:
    """The trailing metadata that carries ``error``'s class name to the client."""
    return ((ERROR_KIND_KEY, kind_of(error)),)


# Why an rpc fails by setting its status instead of context.abort()
# grpc.aio's context.abort() raises an AbortError that the call's own state keeps. That error's
# traceback holds the frames it left, and those hold the servicer context, which holds the
# call's state: a reference cycle, so reference counting never frees the request, the error it
# chained and every frame's locals. They waited for the cyclic collector's next full pass, which
# a daemon with tens of thousands of long-lived objects makes rarely: a user repeating refused
# 8 MiB requests grew the daemon by 400 MiB in 32 requests. Setting the status and returning
# leaves no such cycle, and grpc sends the same status, message and trailing metadata.


def set_error(context: grpc.aio.ServicerContext[Any, Any], error: BaseException) -> None:
    """Make ``error``'s status code, message and class name the rpc's final status.

    The caller then returns (a unary handler's response is discarded) or ends its response
    stream, and grpc sends that status.
    """
    context.set_code(status_of(error))
    context.set_details(message_of(error))
    context.set_trailing_metadata(trailing_metadata_of(error))


def _shutting_down(servicer: Any) -> bool:
    """Whether the daemon behind ``servicer`` (its ``_state``) is draining for shutdown."""
    return bool(getattr(getattr(servicer, "_state", None), "shutting_down", False))


def _fail(context: Any, rpc: str, exc: Exception, *, shutting_down: bool = False) -> None:
    """Set an rpc's status for an exception its servicer let escape (called from an
    ``except``; the caller then returns).

    grpc.aio's own abort passes through; an npud error becomes its status through the table;
    anything else is a bug, logged with its traceback and ended INTERNAL saying so. While the
    daemon drains for shutdown, NOT_FOUND becomes UNAVAILABLE: the context was closed by the
    shutdown, not by the caller, and "no context" would send a client looking for its own bug.
    """
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    if not isinstance(exc, errors.NpudError):
        _log.exception("rpc %s failed unexpectedly", rpc)
        exc = errors.NpudError(f"internal error in {rpc}: {exc!r}")
    elif shutting_down and isinstance(exc, errors.NotFound):
        exc = errors.Unavailable(f"npud is shutting down and closed every context: {exc}")
    set_error(context, exc)


Handler = Callable[[Any, Any, Any], Awaitable[Any]]
StreamHandler = Callable[[Any, Any, Any], AsyncIterator[Any]]


def unary(fn: Handler) -> Handler:
    """Decorate a unary servicer method: npud errors become statuses through the table.

    Anything else is a bug: it is logged with its traceback and the rpc ends INTERNAL with a
    message that says so (never a silent UNKNOWN).
    """

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Any) -> Any:
        try:
            return await fn(self, request, context)
        except Exception as exc:
            _fail(context, fn.__name__, exc, shutting_down=_shutting_down(self))
            return None

    return wrapper


def streaming(fn: StreamHandler) -> StreamHandler:
    """Decorate a server-streaming servicer method (an async generator) like :func:`unary`."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
        try:
            async for item in fn(self, request, context):
                yield item
        except Exception as exc:
            _fail(context, fn.__name__, exc, shutting_down=_shutting_down(self))

    return wrapper
