"""npuctl's inventory asks the daemon once per listing or lookup, not once per context."""

from __future__ import annotations

from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import pytest

from npud.cli.exit_codes import CliError, ExitCode
from npud.cli.inventory import Filters, Inventory
from npud.v1 import buffer_pb2, context_pb2, job_pb2

CONTEXTS = [
    context_pb2.Context(context_id="ctx-a", device="sim0"),
    context_pb2.Context(context_id="ctx-b", device="sim1"),
]
JOBS = [
    job_pb2.Job(job_id="job-1", context_id="ctx-a"),
    job_pb2.Job(job_id="job-2", context_id="ctx-b"),
]


class FakeConnection:
    """Answers the rpcs the inventory makes and records each request by rpc name."""

    def __init__(self, *, admin: bool) -> None:
        self.admin = admin
        self.calls: list[tuple[str, Any]] = []
        rpc = self._rpc
        self.client = SimpleNamespace(
            job_stub=SimpleNamespace(
                ListJobs=rpc("ListJobs", self._list_jobs),
                ListQueues=rpc("ListQueues", lambda r: job_pb2.ListQueuesResponse()),
                GetJob=rpc("GetJob", self._get_job),
                CancelJob=rpc("CancelJob", self._cancel_job),
            ),
            buffer_stub=SimpleNamespace(
                ListBuffers=rpc("ListBuffers", lambda r: buffer_pb2.ListBuffersResponse())
            ),
            context_stub=SimpleNamespace(
                ListContexts=rpc(
                    "ListContexts", lambda r: context_pb2.ListContextsResponse(contexts=CONTEXTS)
                ),
                GetContext=rpc("GetContext", self._get_context),
            ),
        )

    def _rpc(self, name: str, answer: Callable[[Any], Any]) -> Callable[[Any], Any]:
        def call(request: Any) -> Any:
            self.calls.append((name, request))
            return answer(request)

        return call

    def call(self, method: Callable[[Any], Any], request: Any) -> Any:
        return method(request)

    def _list_jobs(self, req: job_pb2.ListJobsRequest) -> job_pb2.ListJobsResponse:
        jobs = [j for j in JOBS if not req.context_id or j.context_id == req.context_id]
        return job_pb2.ListJobsResponse(jobs=jobs)

    def _find(self, job_id: str) -> job_pb2.Job:
        for job in JOBS:
            if job.job_id == job_id:
                return job
        raise CliError(f"no job {job_id}", ExitCode.NOT_FOUND)

    def _get_job(self, req: job_pb2.GetJobRequest) -> job_pb2.GetJobResponse:
        return job_pb2.GetJobResponse(job=self._find(req.job_id))

    def _cancel_job(self, req: job_pb2.CancelJobRequest) -> job_pb2.CancelJobResponse:
        return job_pb2.CancelJobResponse(job=self._find(req.job_id))

    def _get_context(self, req: context_pb2.GetContextRequest) -> context_pb2.GetContextResponse:
        ctx = next(c for c in CONTEXTS if c.context_id == req.context_id)
        return context_pb2.GetContextResponse(context=ctx)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]


def _inventory(*, admin: bool = False) -> tuple[Inventory, FakeConnection]:
    conn = FakeConnection(admin=admin)
    return Inventory(conn), conn  # type: ignore[arg-type]


@pytest.mark.parametrize("admin", [False, True])
def test_listing_every_context_is_one_rpc_with_an_empty_context_id(admin: bool) -> None:
    """jobs/queues/buffers list: one rpc each, context_id "" and all = the caller's admin."""
    inv, conn = _inventory(admin=admin)
    assert [j.job_id for j in inv.jobs()] == ["job-1", "job-2"]
    inv.queues()
    inv.buffers()
    assert conn.names() == ["ListJobs", "ListQueues", "ListBuffers"]
    for _, req in conn.calls:
        assert req.context_id == ""
        assert req.all is admin


def test_a_device_filter_adds_one_list_contexts_and_keeps_that_devices_jobs() -> None:
    """--device: one ListJobs plus one ListContexts to learn the device's contexts."""
    inv, conn = _inventory()
    assert [j.job_id for j in inv.jobs(Filters(devices=("sim1",)))] == ["job-2"]
    assert sorted(conn.names()) == ["ListContexts", "ListJobs"]


def test_named_contexts_are_asked_one_by_one_without_all() -> None:
    """--context keeps its meaning: each named context is checked and listed on its own."""
    inv, conn = _inventory(admin=True)
    assert [j.job_id for j in inv.jobs(Filters(contexts=("ctx-b",)))] == ["job-2"]
    assert conn.names() == ["GetContext", "ListJobs"]
    assert conn.calls[1][1].context_id == "ctx-b"
    assert conn.calls[1][1].all is False


def test_show_and_cancel_find_a_job_with_one_rpc() -> None:
    """jobs show/cancel ID: one GetJob / one CancelJob with no context id; unknown ids get
    npuctl's own NOT_FOUND message."""
    inv, conn = _inventory()
    assert inv.find_job("job-2").context_id == "ctx-b"
    assert inv.cancel_job("job-1").job_id == "job-1"
    assert conn.names() == ["GetJob", "CancelJob"]
    assert [req.context_id for _, req in conn.calls] == ["", ""]
    for lookup in (inv.find_job, inv.cancel_job):
        with pytest.raises(CliError, match="no job 'job-9' in any context you can see") as info:
            lookup("job-9")
        assert info.value.code is ExitCode.NOT_FOUND
