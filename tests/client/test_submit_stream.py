"""The sync client's submit stream hands each result to the wait for its own tag.

A fake stub stands in for the daemon so the order results arrive in is exactly the one under
test: a refused job is answered at once, before the jobs submitted ahead of it finish.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from npud.client.client import SubmitStream
from npud.client.types import Job, JobError, JobResult, job_result_from_wire
from npud.errors import Unavailable
from npud.v1 import job_pb2, types_pb2


class _Stub:
    """``SubmitStream`` answers with ``responses`` in order, then ends the stream."""

    def __init__(self, responses: list[job_pb2.SubmitStreamResponse]) -> None:
        self.responses = responses
        self.read = 0

    def SubmitStream(self, requests: Iterator[Any], metadata: Any) -> Iterator[Any]:
        del requests, metadata

        def answer() -> Iterator[job_pb2.SubmitStreamResponse]:
            for msg in self.responses:
                self.read += 1
                yield msg

        return answer()


def _refused(tag: int) -> job_pb2.SubmitStreamResponse:
    err = types_pb2.ErrorInfo(code=9, kind="TimeSliceExceeded", message=f"job {tag} too long")
    return job_pb2.SubmitStreamResponse(tag=tag, error=err)


def _completed(tag: int) -> job_pb2.SubmitStreamResponse:
    msg = job_pb2.SubmitStreamResponse(tag=tag)
    msg.job.job_id = f"job-{tag}"
    msg.job.state = types_pb2.JOB_STATE_COMPLETED
    return msg


def test_a_result_behind_earlier_answers_is_read_off_the_stream() -> None:
    """Tags 2 and 3 refused at once, tag 1 completing after them: result(1) reads on past the
    two set-aside answers (it used to cycle through them forever) and each tag gets its own."""
    stub = _Stub([_refused(2), _refused(3), _completed(1)])
    stream = SubmitStream(stub, "ctx-1", ())  # type: ignore[arg-type]
    got: dict[int, Any] = {}

    def wait_all() -> None:
        for tag in (1, 2, 3):
            got[tag] = stream.result(tag)

    waiter = threading.Thread(target=wait_all, daemon=True)
    waiter.start()
    waiter.join(30)  # a liveness guard, not a timing measurement
    assert not waiter.is_alive(), "result(1) never returned"
    assert got[1].job is not None
    assert got[1].job.job_id == "job-1"
    assert got[1].error is None
    for tag in (2, 3):
        assert got[tag].error is not None
        assert got[tag].error.kind == "TimeSliceExceeded"
        assert got[tag].error.message == f"job {tag} too long"
    assert stub.read == 3


def test_next_result_still_gives_set_aside_answers_first() -> None:
    """next_result returns what result() set aside before reading the stream again."""
    stub = _Stub([_refused(2), _completed(1), _completed(3)])
    stream = SubmitStream(stub, "ctx-1", ())  # type: ignore[arg-type]
    assert stream.result(1).job is not None
    tag, res = stream.next_result()
    assert (tag, res.error is not None) == (2, True)
    assert stub.read == 2
    tag, res = stream.next_result()
    assert tag == 3
    with pytest.raises(Unavailable, match="submit stream ended"):
        stream.next_result()


def test_a_result_off_the_stream_is_a_job_result_converted_when_read() -> None:
    """A response becomes a JobResult dataclass: ``ok`` is read from the wire, the job snapshot
    is converted on first access (and equals the eager conversion), and ``asdict``, ``replace``
    and equality with an eagerly built result behave as for any JobResult."""
    msg = job_pb2.SubmitStreamResponse(tag=3)
    msg.job.job_id = "job-1"
    msg.job.state = types_pb2.JOB_STATE_COMPLETED
    msg.job.transitions.add(state=types_pb2.JOB_STATE_QUEUED).time.seconds = 1_700_000_000
    msg.readbacks.add(buffer_id="buf-1", offset=0, data=b"\x07\x00")
    result = job_result_from_wire(msg)
    eager = JobResult(Job.from_wire(msg.job), (b"\x07\x00",), None)
    assert isinstance(result, JobResult)
    assert result.ok
    assert result.job == eager.job
    assert result == eager
    assert eager == result
    assert dataclasses.asdict(result) == dataclasses.asdict(eager)
    assert dataclasses.replace(result, readbacks=()).readbacks == ()
    assert repr(result) == repr(eager)
    refused = job_pb2.SubmitStreamResponse(tag=4)
    refused.error.kind = "NotFound"
    refused.error.code = 5
    not_ok = job_result_from_wire(refused)
    assert not not_ok.ok
    assert not_ok.job is None
    assert not_ok.error == JobError("NotFound", 5, "")
