"""How the daemon backend turns a failed step into the npud error class npud named."""

from __future__ import annotations

import pytest

from npud.client import JobError, JobResult
from npud.errors import JobFailed, JobTimedOut, QueueFull, TimeSliceExceeded
from npud.llm.compiler import Step, StepKind
from npud.llm.daemon import step_error

STEP = Step(StepKind.PREFILL, 16, 16, b"", (), None, "prefill/16")


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("TimeSliceExceeded", TimeSliceExceeded),
        ("QueueFull", QueueFull),
        ("JobTimedOut", JobTimedOut),
        ("JobFailed", JobFailed),
        ("SomethingNew", JobFailed),  # an unknown name from a newer daemon
        ("Path", JobFailed),  # a name that exists but is no npud error
    ],
)
def test_named_error_classes_are_raised(kind: str, expected: type[Exception]) -> None:
    """The class npud names is raised (JobFailed when unknown), with the step label and text."""
    result = JobResult(job=None, readbacks=(), error=JobError(kind, 9, "why it failed"))
    error = step_error(STEP, result)
    assert type(error) is expected
    assert str(error) == f"prefill[16:32]: {kind}: why it failed"


def test_missing_error_is_a_job_failure() -> None:
    """A result with neither job nor error still fails, naming the step."""
    error = step_error(STEP, JobResult(job=None, readbacks=(), error=None))
    assert isinstance(error, JobFailed)
    assert "prefill[16:32]" in str(error)
