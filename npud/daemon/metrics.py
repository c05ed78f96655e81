"""Prometheus metrics: ``/metrics`` in the text format, read from the statistics snapshots.

The daemon already keeps every number an operator graphs, as the frozen ``statistics()``
snapshots ``npuctl`` shows. :class:`NpudCollector` turns those snapshots into Prometheus metric
families when a scrape asks, and only then: nothing is counted per job for metrics, and no
counter exists twice (the histograms of job wait and run time are core's own fixed-bucket
counts, :class:`~npud.core.distribution.BucketCounts`, kept beside its percentiles).

Names follow Prometheus' conventions: the ``npud_`` prefix, base units (``_seconds``,
``_bytes``, ratios 0..1), ``_total`` on counters, labels for device, engine, scheduling class,
memory tier and job state and never for ids (contexts, jobs, users would make series without
bound).

The families are written in the classic text format (0.0.4) by :func:`render`, which produces
exactly what prometheus_client's ``generate_latest`` writes for them (a test compares the two
byte for byte) at a fraction of its cost: ``generate_latest`` validates and escapes every label
name and value of every sample on every scrape, which made a scrape cost several milliseconds of
the daemon's loop; :func:`render` formats each distinct label set once and reuses it.

The endpoint is a small HTTP/1.1 server on the daemon's own asyncio loop (:class:`MetricsServer`)
rather than prometheus_client's threaded one: the collector reads core's state, which belongs
to the loop's thread, so a scrape must run there. It answers ``GET /metrics`` (and ``/`` with a
pointer), refuses anything else, and is off unless ``[metrics] listen`` names an address.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Final

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector, CollectorRegistry

from npud import __version__
from npud.api.identity import TokenStatistics
from npud.api.sessions import SessionStatistics
from npud.api.submit_socket import SubmitSocketStatistics
from npud.api.tenants import TenantStatistics
from npud.core.distribution import Buckets
from npud.core.service import Core, CoreStatistics
from npud.vocab import TERMINAL_STATES, DeviceHealth

FINAL_STATES: Final = tuple(sorted(str(s) for s in TERMINAL_STATES))
"""The job states ``npud_jobs_finished_total`` always has a series for."""

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
"""The classic text format, which ``generate_latest`` writes and every Prometheus reads."""

MAX_REQUEST_BYTES: Final = 8192
"""Longest request head read from a scraper."""


@dataclass(frozen=True, slots=True)
class Sources:
    """Where the collector reads: core, and the API layer's session, token and tenant tables
    and the submit socket (each a callable returning that table's frozen snapshot)."""

    core: Core
    sessions: Callable[[], SessionStatistics] | None = None
    tokens: Callable[[], TokenStatistics] | None = None
    tenants: Callable[[], TenantStatistics] | None = None
    submits: Callable[[], SubmitSocketStatistics] | None = None


def _le(bound: float) -> str:
    return "+Inf" if bound == float("inf") else repr(bound)


def _histogram(
    name: str, doc: str, labels: list[str], series: list[tuple[list[str], Buckets]]
) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, doc, labels=labels)
    for values, b in series:
        family.add_metric(
            values, buckets=[(_le(bound), n) for bound, n in b.cumulative()], sum_value=b.sum_s
        )
    return family


class NpudCollector(Collector):
    """Every npud metric, built from one set of snapshots per scrape (see the module
    docstring). Must be collected on the daemon's event loop thread."""

    def __init__(self, sources: Sources) -> None:
        self._sources = sources
        self.scrapes = 0

    def collect(self) -> Iterator[Metric]:
        """The metric families of one scrape."""
        self.scrapes += 1
        src = self._sources
        stats = src.core.statistics()
        info = GaugeMetricFamily("npud_build_info", "npud's version (always 1)", labels=["version"])
        info.add_metric([__version__], 1)
        yield info
        yield from self._devices(stats)
        yield from self._jobs(stats)
        yield from self._memory(stats)
        contexts = GaugeMetricFamily("npud_contexts", "Open execution contexts", labels=["device"])
        for d in stats.devices:
            contexts.add_metric([d.name], d.contexts)
        yield contexts
        if src.sessions is not None:
            s = src.sessions()
            sessions = GaugeMetricFamily(
                "npud_sessions", "Client sessions by state", labels=["state"]
            )
            sessions.add_metric(["open"], s.open)
            sessions.add_metric(["expiring"], s.expiring)
            yield sessions
            yield CounterMetricFamily(
                "npud_sessions_expired", "Sessions whose client went away", value=s.expired
            )
        if src.tokens is not None:
            t = src.tokens()
            yield CounterMetricFamily(
                "npud_identity_refusals",
                "Calls refused for a missing or unknown session token",
                value=t.refused,
            )
        if src.tenants is not None:
            n = src.tenants()
            yield GaugeMetricFamily("npud_tenants", "Tenants (allocations)", value=n.tenants)
        if src.submits is not None:
            u = src.submits()
            yield GaugeMetricFamily(
                "npud_submit_socket_connections",
                "Open connections to the submit socket",
                value=u.connections,
            )
            yield CounterMetricFamily(
                "npud_submit_socket_requests",
                "Jobs requested over the submit socket",
                value=u.requests,
            )
            yield CounterMetricFamily(
                "npud_submit_socket_refused",
                "Submit socket connections refused (a bad handshake, too many connections)",
                value=u.refused,
            )
            yield CounterMetricFamily(
                "npud_submit_socket_broken",
                "Submit socket streams ended for a frame that could not be served",
                value=u.broken,
            )

    def _devices(self, stats: CoreStatistics) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "npud_device_up", "1 while the device serves, 0 once it is lost", labels=["device"]
        )
        simulated = GaugeMetricFamily(
            "npud_device_simulated", "1 for the simulated NPU", labels=["device"]
        )
        busy = GaugeMetricFamily(
            "npud_engine_busy_ratio",
            "Fraction of the recent window the engine ran a job (0..1)",
            labels=["device", "engine"],
        )
        busy_s = CounterMetricFamily(
            "npud_engine_busy_seconds",
            "Device time of the jobs finished on the engine",
            labels=["device", "engine"],
        )
        resets = CounterMetricFamily(
            "npud_watchdog_resets", "Engines reset by the job watchdog", labels=["device"]
        )
        for d in stats.devices:
            lost = d.scheduler.health is DeviceHealth.LOST or d.device.health is DeviceHealth.LOST
            up.add_metric([d.name], 0 if lost else 1)
            simulated.add_metric([d.name], 1 if d.capabilities.simulated else 0)
            for e in d.scheduler.engines:
                busy.add_metric([d.name, str(e.index)], e.recent_utilisation)
                busy_s.add_metric([d.name, str(e.index)], e.busy_s)
            resets.add_metric([d.name], d.scheduler.watchdog_resets)
        yield from (up, simulated, busy, busy_s, resets)

    def _jobs(self, stats: CoreStatistics) -> Iterator[Metric]:
        depth = GaugeMetricFamily(
            "npud_queue_depth",
            "Jobs waiting, by class: for dependencies (queued) or for an engine (ready)",
            labels=["device", "class", "state"],
        )
        running = GaugeMetricFamily(
            "npud_jobs_running", "Jobs on an engine now", labels=["device", "class"]
        )
        submitted = CounterMetricFamily("npud_jobs_submitted", "Jobs admitted", labels=["device"])
        finished = CounterMetricFamily(
            "npud_jobs_finished", "Jobs that ended, by final state", labels=["device", "state"]
        )
        rejected = CounterMetricFamily(
            "npud_jobs_rejected", "Submissions refused by admission control", labels=["device"]
        )
        misses = CounterMetricFamily(
            "npud_deadline_misses", "Jobs completed after their deadline", labels=["device"]
        )
        waits: list[tuple[list[str], Buckets]] = []
        runs: list[tuple[list[str], Buckets]] = []
        for d in stats.devices:
            sched = d.scheduler
            for c in sched.classes:
                cls = str(c.sched_class)
                depth.add_metric([d.name, cls, "queued"], c.queued)
                depth.add_metric([d.name, cls, "ready"], c.ready)
                running.add_metric([d.name, cls], c.running)
                waits.append(([d.name, cls], c.queue_wait_buckets))
                runs.append(([d.name, cls], c.run_buckets))
            submitted.add_metric([d.name], sched.submitted)
            # Every final state, 0 included, so rate() and increase() have a series to start
            # from before the first job of that state ends.
            ended = dict.fromkeys(FINAL_STATES, 0) | sched.ended
            for state, n in sorted(ended.items()):
                finished.add_metric([d.name, state], n)
            rejected.add_metric([d.name], sched.rejected_at_admission)
            misses.add_metric([d.name], sched.deadline_misses)
        yield from (depth, running, submitted, finished, rejected, misses)
        yield _histogram(
            "npud_job_wait_seconds",
            "Time from ready to running, per finished job",
            ["device", "class"],
            waits,
        )
        yield _histogram(
            "npud_job_run_seconds", "Time on an engine, per finished job", ["device", "class"], runs
        )

    def _memory(self, stats: CoreStatistics) -> Iterator[Metric]:
        used = GaugeMetricFamily(
            "npud_memory_used_bytes", "Bytes in use by tier", labels=["device", "tier"]
        )
        capacity = GaugeMetricFamily(
            "npud_memory_capacity_bytes", "Bytes the device has by tier", labels=["device", "tier"]
        )
        budget = GaugeMetricFamily(
            "npud_memory_budget_bytes",
            "Bytes npud lets itself use by tier",
            labels=["device", "tier"],
        )
        buffers = GaugeMetricFamily("npud_buffers", "Live buffers", labels=["device"])
        evictions = CounterMetricFamily(
            "npud_evictions", "Buffers evicted from a device tier", labels=["device"]
        )
        spills = CounterMetricFamily(
            "npud_spills", "Evictions that copied contents to host memory", labels=["device"]
        )
        uploaded = CounterMetricFamily(
            "npud_uploaded_bytes", "Bytes written by clients, by tier", labels=["device", "tier"]
        )
        attaches = CounterMetricFamily(
            "npud_buffer_attaches",
            "Persistent buffers attached by key (uploading nothing)",
            labels=["device"],
        )
        attached = GaugeMetricFamily(
            "npud_persistent_buffers", "Persistent buffers registered", labels=["device"]
        )
        for d in stats.devices:
            r = d.residency
            for t in r.tiers:
                used.add_metric([d.name, str(t.tier)], t.used_bytes)
                capacity.add_metric([d.name, str(t.tier)], t.capacity_bytes)
                budget.add_metric([d.name, str(t.tier)], t.budget_bytes)
            buffers.add_metric([d.name], r.buffers)
            evictions.add_metric([d.name], r.evictions)
            spills.add_metric([d.name], r.spills)
            for tier, n in sorted(r.uploaded_bytes.items()):
                uploaded.add_metric([d.name, str(tier)], n)
            attaches.add_metric([d.name], r.attaches)
            attached.add_metric([d.name], r.persistent)
        yield from (
            used,
            capacity,
            budget,
            buffers,
            evictions,
            spills,
            uploaded,
            attaches,
            attached,
        )


def go_float(value: float) -> str:
    """A sample value as Prometheus' text format spells it (Go's float formatting: ``+Inf``,
    ``NaN``, and exponent notation from 1e7 up, where Python would still write digits)."""
    v = float(value)
    if -1e6 < v < 1e6:  # the common case: counts and small durations, as repr writes them
        return repr(v)
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if math.isnan(v):
        return "NaN"
    text = repr(v)
    dot = text.find(".")
    if v > 0 and dot > 6:  # 12345678.0 -> 1.2345678e+07
        digits = (text[:dot] + text[dot + 1 :]).rstrip("0")
        mantissa = (digits[0] + "." + digits[1:]).rstrip(".")
        return f"{mantissa}e+{dot - 1:02d}"
    return text


def _escape_help(doc: str) -> str:
    return doc.replace("\\", r"\\").replace("\n", r"\n")


def _escape_value(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class Renderer:
    """The text format of metric families, with each label set formatted once.

    Label sets are few and repeat on every scrape (devices x classes x states ...), so their
    formatted ``{a="x",b="y"}`` text is kept, at most ``limit`` of them (then the cache starts
    over, so a source of endless new label values cannot grow it without bound).
    """

    def __init__(self, limit: int = 4096) -> None:
        self._labels: dict[tuple[tuple[str, str], ...], str] = {}
        self._limit = limit

    def _labelstr(self, labels: dict[str, str]) -> str:
        if not labels:
            return ""
        key = tuple(sorted(labels.items()))
        text = self._labels.get(key)
        if text is None:
            if len(self._labels) >= self._limit:
                self._labels.clear()
            inner = ",".join(f'{k}="{_escape_value(v)}"' for k, v in key)
            text = self._labels[key] = "{" + inner + "}"
        return text

    def render(self, families: Iterable[Metric]) -> bytes:
        """Families (counters, gauges, histograms with legacy names, no timestamps) as
        ``generate_latest`` writes them."""
        out: list[str] = []
        for family in families:
            name = family.name + "_total" if family.type == "counter" else family.name
            out.append(f"# HELP {name} {_escape_help(family.documentation)}\n")
            out.append(f"# TYPE {name} {family.type}\n")
            for sample in family.samples:
                labels = self._labelstr(sample.labels)
                out.append(f"{sample.name}{labels} {go_float(sample.value)}\n")
        return "".join(out).encode()


def registry_for(sources: Sources) -> tuple[CollectorRegistry, NpudCollector]:
    """A registry holding only npud's collector (no process or platform collectors: they
    would read /proc on every scrape and say nothing about the NPU)."""
    registry = CollectorRegistry(auto_describe=False)
    collector = NpudCollector(sources)
    registry.register(collector)
    return registry, collector


@dataclass(frozen=True, slots=True)
class MetricsStatistics:
    """Scrapes served and requests refused."""

    scrapes: int
    refused: int


class MetricsServer:
    """``GET /metrics`` over HTTP/1.1 on the event loop (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._registry = registry
        self._renderer = Renderer()
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._scrapes = 0
        self._refused = 0

    @property
    def port(self) -> int:
        """The bound port (the real one when 0 was asked for)."""
        if self._server is None or not self._server.sockets:
            return self._port
        port = self._server.sockets[0].getsockname()[1]
        assert isinstance(port, int)
        return port

    async def start(self) -> None:
        """Bind and listen.

        Raises:
            OSError: the address cannot be bound (in use, not local, not permitted).
        """
        self._server = await asyncio.start_server(self._handle, self._host, self._port)

    async def _respond(
        self, writer: asyncio.StreamWriter, status: str, body: bytes, content_type: str
    ) -> None:
        head = (
            f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        writer.write(head.encode() + body)
        await writer.drain()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10.0)
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
                self._refused += 1
                return
            if len(head) > MAX_REQUEST_BYTES:
                self._refused += 1
                await self._respond(
                    writer, "431 Request Header Fields Too Large", b"", "text/plain"
                )
                return
            parts = head.split(b"\r\n", 1)[0].decode("latin-1").split()
            method, target = (parts[0], parts[1]) if len(parts) >= 2 else ("", "")
            path = target.split("?", 1)[0]
            if method not in ("GET", "HEAD"):
                self._refused += 1
                await self._respond(writer, "405 Method Not Allowed", b"GET only\n", "text/plain")
            elif path == "/metrics":
                self._scrapes += 1
                body = self._renderer.render(self._registry.collect())
                await self._respond(
                    writer, "200 OK", b"" if method == "HEAD" else body, CONTENT_TYPE
                )
            elif path == "/":
                await self._respond(writer, "200 OK", b"npud: see /metrics\n", "text/plain")
            else:
                self._refused += 1
                await self._respond(writer, "404 Not Found", b"see /metrics\n", "text/plain")
        except OSError:
            pass  # the scraper went away
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def stop(self) -> None:
        """Stop listening (idempotent)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    def statistics(self) -> MetricsStatistics:
        """A snapshot of the server's counters."""
        return MetricsStatistics(scrapes=self._scrapes, refused=self._refused)
