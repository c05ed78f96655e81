"""OpenAI's error JSON, and the HTTP status of every way a request can fail.

OpenAI answers every failure with ``{"error": {"message", "type", "param", "code"}}`` and a
status its clients act on (the ``openai`` package raises ``BadRequestError`` for 400,
``NotFoundError`` for 404, ``RateLimitError`` for 429 and retries it, ``InternalServerError``
for 5xx). npud's errors map as follows:

========================================================  ======  ========================
npud error                                                status  meaning for the client
========================================================  ======  ========================
InvalidArgument                                           400     fix the request
QueueFull, QuotaExceeded, ResourceExhausted,              429     npud's admission or quotas
DeadlineInfeasible, TimeSliceExceeded                             refused: retry later
Unavailable, DeviceLost                                   503     npud is down (or the NPU)
JobTimedOut, JobFailed, anything else                     500     the job failed
========================================================  ======  ========================
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.responses import JSONResponse

from npud.errors import (
    DeadlineInfeasible,
    InvalidArgument,
    NpudError,
    ResourceExhausted,
    TimeSliceExceeded,
    Unavailable,
)


@dataclass(frozen=True, slots=True)
class Failure:
    """One error answer: HTTP status and OpenAI's error fields."""

    status: int
    message: str
    type: str
    param: str | None = None
    code: str | None = None

    def body(self) -> dict[str, object]:
        """OpenAI's error object."""
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }

    def response(self) -> JSONResponse:
        """The JSON response with its status."""
        return JSONResponse(self.body(), status_code=self.status)


def bad_request(message: str, param: str | None = None) -> Failure:
    """HTTP 400."""
    return Failure(400, message, "invalid_request_error", param, "invalid_request")


def unknown_model(name: str, served: str) -> Failure:
    """HTTP 404 for a model the gateway does not serve."""
    return Failure(
        404,
        f"the model {name!r} does not exist here; this gateway serves {served!r}",
        "invalid_request_error",
        "model",
        "model_not_found",
    )


def too_large(limit: int) -> Failure:
    """HTTP 413 for a body over the limit."""
    return Failure(
        413,
        f"the request body exceeds {limit} bytes",
        "invalid_request_error",
        None,
        "request_too_large",
    )


def unauthorised() -> Failure:
    """HTTP 401 for a missing or wrong API key."""
    return Failure(
        401, "a valid API key is required", "invalid_request_error", None, "invalid_api_key"
    )


def from_npud(exc: NpudError) -> Failure:
    """The answer for an npud error (see the module's table)."""
    message = str(exc) or type(exc).__name__
    if isinstance(exc, InvalidArgument):
        return bad_request(message)
    if isinstance(exc, ResourceExhausted | DeadlineInfeasible | TimeSliceExceeded):
        return Failure(429, message, "rate_limit_error", None, type(exc).__name__)
    if isinstance(exc, Unavailable):
        return Failure(503, message, "service_unavailable", None, type(exc).__name__)
    return Failure(500, message, "server_error", None, type(exc).__name__)
