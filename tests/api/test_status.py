"""The one table from npud errors to gRPC status codes."""

from __future__ import annotations

import inspect

import grpc
import pytest

from npud import errors
from npud.api import status
from npud.client.errors import error_class


def _error_classes() -> list[type[errors.NpudError]]:
    return [
        cls
        for _, cls in inspect.getmembers(errors, inspect.isclass)
        if issubclass(cls, errors.NpudError) and cls.__module__ == errors.__name__
    ]


def test_table_names_every_error_class() -> None:
    """Every class in npud.errors has its own entry: a new error needs a decision."""
    missing = [cls.__name__ for cls in _error_classes() if cls not in status.STATUS_OF]
    assert not missing, f"add these to npud.api.status.STATUS_OF: {missing}"


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
        (errors.NotFound, grpc.StatusCode.NOT_FOUND),
        (errors.QuotaExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.QueueFull, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.OutOfDeviceMemory, grpc.StatusCode.RESOURCE_EXHAUSTED),
        (errors.DeadlineInfeasible, grpc.StatusCode.FAILED_PRECONDITION),
        (errors.TimeSliceExceeded, grpc.StatusCode.FAILED_PRECONDITION),
        (errors.Unsupported, grpc.StatusCode.FAILED_PRECONDITION),
        (errors.JobTimedOut, grpc.StatusCode.DEADLINE_EXCEEDED),
        (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
        (errors.DeviceLost, grpc.StatusCode.UNAVAILABLE),
        (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
        (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
        (errors.Cancelled, grpc.StatusCode.CANCELLED),
        (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    ],
)
def test_each_error_class_maps_to_its_documented_code(
    error: type[errors.NpudError], code: grpc.StatusCode
) -> None:
    """The codes the design names for each error class."""
    assert status.status_of(error("x")) is code


def test_subclass_outside_table_uses_nearest_base() -> None:
    """An error subclass defined elsewhere maps through its nearest listed base."""

    class VeryFull(errors.QueueFull):
        pass

    assert status.status_of(VeryFull("x")) is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert status.kind_of(VeryFull("x")) == "QueueFull"


def test_non_npud_error_is_internal() -> None:
    """A plain exception is a bug: INTERNAL."""
    assert status.status_of(ValueError("x")) is grpc.StatusCode.INTERNAL


def test_client_reverses_every_entry() -> None:
    """The client raises the very class named in the trailer, and the code's base otherwise."""
    for cls, code in status.STATUS_OF.items():
        assert error_class(cls.__name__, code) is cls
        fallback = error_class("", code)
        assert status.STATUS_OF.get(fallback, code) is code or fallback is errors.NpudError


def test_message_is_kept_verbatim() -> None:
    """The daemon does not reword core's messages."""
    exc = errors.QueueFull("queue q-1 is full: 256 of 256 jobs")
    assert status.message_of(exc) == "queue q-1 is full: 256 of 256 jobs"
    assert status.message_of(errors.NotFound()) == "NotFound"
