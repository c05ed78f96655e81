"""The metrics collector over core's snapshots, the /metrics server, and [metrics] settings."""

from __future__ import annotations

import asyncio

import pytest
from prometheus_client.parser import text_string_to_metric_families

from npud.api.submit_socket import SubmitSocketStatistics
from npud.config import load_settings
from npud.daemon.metrics import MetricsServer, Sources, registry_for
from npud.errors import ConfigError
from npud.vocab import SchedulingClass
from tests.core.harness import make_bed


def test_collector_reads_the_snapshots_and_costs_nothing_per_job() -> None:
    """Jobs finished on the bed appear as counters, histograms and gauges with npud names;
    collecting twice gives the same numbers (reading changes nothing)."""
    bed = make_bed()
    ctx = bed.context()
    q = bed.queue(ctx, SchedulingClass.LATENCY)
    bed.burn(ctx, q, 0.001, n=7)
    bed.run()
    registry, collector = registry_for(Sources(bed.core))

    def value(name: str, **labels: str) -> float | None:
        return registry.get_sample_value(name, labels)

    dev = bed.device.name
    assert value("npud_jobs_finished_total", device=dev, state="completed") == 7
    assert value("npud_jobs_finished_total", device=dev, state="failed") == 0
    assert value("npud_jobs_submitted_total", device=dev) == 7
    assert value("npud_job_run_seconds_count", device=dev, **{"class": "latency"}) == 7
    assert value("npud_job_wait_seconds_bucket", device=dev, le="+Inf", **{"class": "latency"})
    assert value("npud_device_up", device=dev) == 1
    assert value("npud_contexts", device=dev) == 1
    assert value("npud_memory_capacity_bytes", device=dev, tier="dram") > 0  # type: ignore[operator]
    assert value("npud_queue_depth", device=dev, state="ready", **{"class": "latency"}) == 0
    assert value("npud_job_run_seconds_count", device=dev, **{"class": "latency"}) == 7
    assert collector.scrapes >= 2
    bed.device.lose("unplugged")
    bed.run()
    assert value("npud_device_up", device=dev) == 0


def test_the_submit_sockets_counters_are_exported() -> None:
    """The submit socket's snapshot becomes its connection gauge and its request, refusal and
    broken-stream counters."""
    bed = make_bed()
    snapshot = SubmitSocketStatistics(connections=2, requests=10, responses=9, refused=3, broken=1)
    registry, _ = registry_for(Sources(bed.core, submits=lambda: snapshot))

    def value(name: str) -> float | None:
        return registry.get_sample_value(name, {})

    assert value("npud_submit_socket_connections") == 2
    assert value("npud_submit_socket_requests_total") == 10
    assert value("npud_submit_socket_refused_total") == 3
    assert value("npud_submit_socket_broken_total") == 1


def test_every_name_follows_the_conventions() -> None:
    """Every family starts with npud_; counters end _total; byte and second families carry
    their unit; no label holds an id."""
    bed = make_bed()
    registry, _ = registry_for(Sources(bed.core))
    from prometheus_client.exposition import generate_latest

    families = list(text_string_to_metric_families(generate_latest(registry).decode()))
    assert families
    for family in families:
        assert family.name.startswith("npud_"), family.name
        for sample in family.samples:
            if family.type == "counter":
                assert sample.name.endswith(("_total", "_created")), sample.name
            assert not {"context", "job", "uid", "token"} & set(sample.labels)


def test_server_answers_metrics_and_refuses_the_rest() -> None:
    """GET /metrics is 200 in the text format; POST is 405; another path 404."""
    bed = make_bed()
    registry, _ = registry_for(Sources(bed.core))

    async def ask(port: int, request: bytes) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        reply = await reader.read()
        writer.close()
        await writer.wait_closed()
        return reply

    async def main() -> list[bytes]:
        server = MetricsServer(registry, "127.0.0.1", 0)
        await server.start()
        try:
            replies = [
                await ask(server.port, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
                await ask(server.port, b"POST /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
                await ask(server.port, b"GET /secrets HTTP/1.1\r\nHost: x\r\n\r\n"),
            ]
            assert server.statistics().scrapes == 1
            assert server.statistics().refused == 2
            return replies
        finally:
            await server.stop()

    ok, post, other = asyncio.run(main())
    assert ok.startswith(b"HTTP/1.1 200 OK")
    assert b"text/plain; version=0.0.4" in ok
    assert b"npud_build_info" in ok
    assert post.startswith(b"HTTP/1.1 405")
    assert other.startswith(b"HTTP/1.1 404")


def test_metrics_are_off_by_default_and_the_address_is_checked() -> None:
    """No [metrics] listen means no endpoint; a bad address is refused at load, naming it."""
    assert load_settings(env={"NPUD_CONFIG": "/dev/null"}).metrics.listen is None
    good = load_settings(env={"NPUD_CONFIG": "/dev/null", "NPUD_METRICS__LISTEN": "[::1]:9464"})
    assert good.metrics.listen == "[::1]:9464"
    for bad in ("9464", "localhost:0", "localhost:99999", "::1:9464", "host:port"):
        with pytest.raises(ConfigError, match=r"metrics\.listen"):
            load_settings(env={"NPUD_CONFIG": "/dev/null", "NPUD_METRICS__LISTEN": bad})


def test_the_grafana_dashboard_queries_only_exported_series() -> None:
    """Every npud_ series contrib/grafana/npud.json queries is one the collector exports."""
    import re

    from prometheus_client.exposition import generate_latest

    from npud.api.sessions import SessionStatistics
    from npud.api.tenants import TenantStatistics
    from tests import ROOT

    bed = make_bed()
    registry, _ = registry_for(
        Sources(
            bed.core,
            sessions=lambda: SessionStatistics(0, 0, 0, 0),
            tenants=lambda: TenantStatistics(0, 0, 0, 0, 0),
        )
    )
    exported = {
        s.name
        for f in text_string_to_metric_families(generate_latest(registry).decode())
        for s in f.samples
    }
    dashboard = (ROOT / "contrib" / "grafana" / "npud.json").read_text()
    queried = set(re.findall(r"npud_[a-z_]+", dashboard)) - {"npud_"}
    assert queried
    assert queried <= exported, queried - exported


def test_the_renderer_writes_what_prometheus_client_writes() -> None:
    """The daemon's text renderer gives generate_latest's bytes exactly for a bed that ran
    jobs, twice (the second time from its label cache); Go-style floats match
    prometheus_client's."""
    from prometheus_client.exposition import generate_latest
    from prometheus_client.utils import floatToGoString

    from npud.daemon.metrics import Renderer, go_float

    bed = make_bed()
    ctx = bed.context()
    q = bed.queue(ctx, SchedulingClass.THROUGHPUT)
    bed.burn(ctx, q, 0.003, n=4)
    bed.run()
    registry, _ = registry_for(Sources(bed.core))
    renderer = Renderer()
    assert renderer.render(registry.collect()) == generate_latest(registry)
    assert renderer.render(registry.collect()) == generate_latest(registry)  # cached labels
    for v in (0.0, 1.0, 999_999.5, 1e6, 12_345_678.0, 1e22, 2.5e-9, float("inf"), -3.0):
        assert go_float(v) == floatToGoString(v)
