"""/metrics scraped by a real Prometheus: the series move with the work done."""

from __future__ import annotations

import json
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import npud.client
from npud.client import Access, Bind, JobSpec, JobState, SchedulingClass
from npud.isa import Program, T
from npud.testing.daemon import DaemonProcess, start_daemon
from tests.tools import tool

pytestmark = pytest.mark.slow

N = 64
JOBS = 23


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        assert isinstance(port, int)
        return port


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, int]]:
    port = _free_port()
    d = start_daemon(
        tmp_path_factory.mktemp("npud-metrics"),
        env={"NPUD_METRICS__LISTEN": f"127.0.0.1:{port}"},
    )
    yield d, port
    assert d.stop() == 0


def _get(url: str, timeout: float = 10.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        body: bytes = resp.read()
        return body


class Prometheus:
    """A Prometheus server scraping one target every 250 ms, and its query API."""

    def __init__(self, tmp: Path, target: str) -> None:
        binary = tool("prometheus", "prometheus")
        self.port = _free_port()
        config = tmp / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 250ms\n  scrape_timeout: 250ms\n"
            "scrape_configs:\n  - job_name: npud\n    static_configs:\n"
            f"      - targets: ['{target}']\n"
        )
        self.log = (tmp / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def query(self, promql: str) -> float | None:
        """The one value of an instant query (None: no series yet)."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": promql}
        )
        try:
            reply = json.loads(_get(url))
        except OSError:
            return None
        assert reply["status"] == "success", reply
        result = reply["data"]["result"]
        if not result:
            return None
        assert len(result) == 1, result
        return float(result[0]["value"][1])

    def wait_for(
        self, promql: str, want: float, timeout: float = 120.0, *, exact: bool = True
    ) -> float:
        """Poll until the query answers ``want`` (at least ``want`` unless ``exact``)."""
        deadline = time.monotonic() + timeout
        value = None
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "prometheus exited"
            value = self.query(promql)
            if value is not None and (value == want or (not exact and value >= want)):
                return value
            time.sleep(0.2)
        raise AssertionError(f"{promql} is {value}, not {want}, after {timeout} s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _run_jobs(sock: Path, n: int) -> None:
    """``n`` ADD jobs on a THROUGHPUT queue, each checked against numpy."""
    program = Program().add(out=T(2, 0, (N,)), a=T(0, 0, (N,)), b=T(1, 0, (N,))).encode()
    with npud.client.connect(sock) as npu:
        ctx = npu.create_context(label="metrics")
        q = npu.create_queue(ctx, SchedulingClass.THROUGHPUT)
        a = np.arange(N, dtype=np.float32)
        b = np.full(N, 2.0, dtype=np.float32)
        bufs = []
        for data in (a, b, np.zeros(N, dtype=np.float32)):
            buf = npu.create_buffer(ctx, N * 4)
            npu.write_buffer(ctx, buf, data.tobytes())
            bufs.append(buf)
        spec = JobSpec(
            queue=q,
            command=program,
            bindings=(Bind(bufs[0]), Bind(bufs[1]), Bind(bufs[2], Access.WRITE)),
            kind="add",
        )
        for _ in range(n):
            done = npu.wait(ctx, npu.submit(ctx, spec))
            assert done.state is JobState.COMPLETED, done.error
        got = np.frombuffer(npu.read_buffer(ctx, bufs[2]), dtype=np.float32)
        np.testing.assert_array_equal(got, a + b)
        npu.destroy_context(ctx)


def test_promtool_finds_no_problem(daemon: tuple[DaemonProcess, int]) -> None:
    """`promtool check metrics` accepts the exposition as it is (names, units, help, types)."""
    promtool = tool("promtool", "prometheus")
    body = _get(f"http://127.0.0.1:{daemon[1]}/metrics")
    assert b"npud_jobs_finished_total" in body
    check = subprocess.run(
        [promtool, "check", "metrics"], input=body, capture_output=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    assert check.stdout.strip() == b""
    assert check.stderr.strip() == b""


def test_prometheus_sees_completed_jobs_rise_by_exactly_the_number_run(
    daemon: tuple[DaemonProcess, int], tmp_path: Path
) -> None:
    """A real Prometheus scraping npud reports completed jobs, submitted jobs and the run-time
    histogram's count rising by exactly the number of jobs run, and the device up."""
    d, port = daemon
    prom = Prometheus(tmp_path, f"127.0.0.1:{port}")
    completed = 'sum(npud_jobs_finished_total{state="completed"})'
    submitted = "sum(npud_jobs_submitted_total)"
    runs = 'sum(npud_job_run_seconds_count{class="throughput"})'
    try:
        prom.wait_for('up{job="npud"}', 1.0)
        before = {q: prom.query(q) for q in (completed, submitted, runs)}
        assert None not in before.values(), before
        _run_jobs(d.socket, JOBS)
        for q in (completed, submitted, runs):
            start = before[q]
            assert start is not None
            prom.wait_for(q, start + JOBS)
        prom.wait_for('npud_device_up{device="sim0"}', 1.0)
        busy = prom.query('sum(npud_engine_busy_seconds_total{device="sim0"})')
        assert busy is not None
        assert busy > 0.0
        # Nothing else moved the counter: a later successful scrape still says the same (a
        # scrape that timed out on a loaded machine leaves no sample, hence wait_for).
        scrapes = prom.query('count_over_time(up{job="npud"}[1h])')
        assert scrapes is not None
        prom.wait_for('count_over_time(up{job="npud"}[1h])', scrapes + 2, exact=False)
        start = before[completed]
        assert start is not None
        assert prom.wait_for(completed, start + JOBS) == start + JOBS
    finally:
        prom.stop()
