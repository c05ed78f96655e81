"""gRPC statuses back into npud errors, so applications catch the same classes the daemon raised.

The daemon sends the npud.errors class name in the trailing metadata key ``npud-error``; the
client raises that class (``QueueFull``, ``DeadlineInfeasible``, ...). When the name is missing
or unknown (an older daemon, a status produced by grpc itself such as a dead socket) the status
code picks the nearest base class. Every error carries the daemon's message unchanged.
"""

from __future__ import annotations

from typing import Final

import grpc

from npud import errors

ERROR_KIND_KEY: Final = "npud-error"

_BY_CODE: Final[dict[grpc.StatusCode, type[errors.NpudError]]] = {
    grpc.StatusCode.INVALID_ARGUMENT: errors.InvalidArgument,
    grpc.StatusCode.OUT_OF_RANGE: errors.InvalidArgument,
    grpc.StatusCode.NOT_FOUND: errors.NotFound,
    grpc.StatusCode.ALREADY_EXISTS: errors.AlreadyExists,
    grpc.StatusCode.RESOURCE_EXHAUSTED: errors.ResourceExhausted,
    grpc.StatusCode.FAILED_PRECONDITION: errors.FailedPrecondition,
    grpc.StatusCode.PERMISSION_DENIED: errors.PermissionDenied,
    grpc.StatusCode.UNAUTHENTICATED: errors.Unauthenticated,
    grpc.StatusCode.UNAVAILABLE: errors.Unavailable,
    grpc.StatusCode.DEADLINE_EXCEEDED: errors.JobTimedOut,
    grpc.StatusCode.CANCELLED: errors.Cancelled,
    grpc.StatusCode.ABORTED: errors.JobFailed,
}


def error_class(kind: str, code: grpc.StatusCode | None) -> type[errors.NpudError]:
    """The npud error class named ``kind``, else the class for ``code``, else NpudError."""
    cls = getattr(errors, kind, None) if kind else None
    if isinstance(cls, type) and issubclass(cls, errors.NpudError):
        return cls
    if code is not None and code in _BY_CODE:
        return _BY_CODE[code]
    return errors.NpudError


def _kind(trailing: object) -> str:
    for key, value in trailing or ():  # type: ignore[attr-defined]
        if key == ERROR_KIND_KEY:
            return value if isinstance(value, str) else bytes(value).decode()
    return ""


def from_rpc_error(exc: grpc.RpcError) -> errors.NpudError:
    """The npud error for a failed rpc (sync or asyncio), with the daemon's message."""
    code: grpc.StatusCode | None = None
    details = ""
    trailing: object = ()
    if isinstance(exc, (grpc.Call, grpc.aio.AioRpcError)):
        code = exc.code()
        details = exc.details() or ""
        trailing = exc.trailing_metadata()
    cls = error_class(_kind(trailing), code)
    if not details and code is not None:
        details = f"rpc failed with {code.name}"
    if code is grpc.StatusCode.UNAVAILABLE and "npud-error" not in str(trailing):
        details = f"{details} (is npud running, and may you open its socket?)"
    return cls(details)
