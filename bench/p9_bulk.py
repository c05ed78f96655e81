"""P9 bulk: a cold 100 MB model upload through a file descriptor against gRPC bytes.

One daemon (simulated NPU, process mode, its state directory on, as installed). Each round
uploads the same 100 MB of weights twice under fresh free-form keys, so both are cold (no
registration to attach to): once as gRPC bytes (``descriptors=False``: create, stream
``WriteBuffer`` in 1 MiB chunks, seal) and once through the descriptor socket (the client
writes the bytes into a memfd, seals it against writes and hands it over; the device maps
those pages). The order flips every round so that the machine's other load falls on both.
Timed from the call to the sealed buffer's reply, in the client.

"No copy in the daemon" is shown with the daemon's own figures around each upload: its
``uploaded_bytes`` counter (bytes the daemon wrote into buffers), its private memory
(``RssAnon`` from /proc: a copy of the data would live there) and its CPU seconds. Between
uploads the run waits until the state directory names the key, so the backing copy the
descriptor path writes behind its reply does not overlap the next measurement.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench.daemon import BenchDaemon, running_daemon
from bench.results import BenchResult, Metric

GOAL_SPEEDUP = 5.0
MB = 1 << 20


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _recorded(daemon: BenchDaemon, key: str, timeout_s: float = 60.0) -> None:
    """Wait until the daemon's state directory names ``key`` (its backing copy is written)."""
    deadline = time.monotonic() + timeout_s
    for manifest in daemon.socket.parent.glob("state/*/registrations.json"):
        while time.monotonic() < deadline:
            try:
                names = [r["key"] for r in json.loads(manifest.read_text())["registrations"]]
            except (OSError, ValueError, KeyError):
                names = []
            if any(name == key or name.endswith("/" + key) for name in names):
                return  # free-form keys are stored in their user's namespace, "~<uid>/<key>"
            time.sleep(0.05)
    raise RuntimeError(f"the daemon did not record {key!r} within {timeout_s} s")


def _upload(daemon: BenchDaemon, data: bytes, key: str, *, descriptors: bool) -> dict[str, Any]:
    import npud.client

    pid = daemon.process.proc.pid
    with npud.client.connect(daemon.socket, descriptors=descriptors) as npu:
        ctx = npu.create_context(label="bench/p9")
        up0 = npu.stats().devices[0].residency.uploaded_bytes
        anon0, cpu0 = _status_kib(pid, "RssAnon"), _cpu_s(pid)
        t0 = time.perf_counter()
        buf = npu.upload(ctx, data, key=key)
        seconds = time.perf_counter() - t0
        anon1, cpu1 = _status_kib(pid, "RssAnon"), _cpu_s(pid)
        if not buf.sealed or buf.size != len(data):
            raise RuntimeError(f"upload of {key} came back {buf}")
        head = npu.read_buffer(ctx, buf, size=4096)
        if head != data[:4096]:
            raise RuntimeError(f"{key} reads back other bytes than were uploaded")
        copied = npu.stats().devices[0].residency.uploaded_bytes - up0
        _recorded(daemon, key)
        cpu2 = _cpu_s(pid)
        npu.destroy_context(ctx)
    daemon.check()
    return {
        "seconds": seconds,
        "copied_bytes": copied,
        "anon_delta_mb": (anon1 - anon0) / 1024,
        "cpu_s": cpu1 - cpu0,
        "cpu_with_backing_s": cpu2 - cpu0,
    }


def run(quick: bool) -> BenchResult:
    """Measure P9 (see the module docstring).

    Raises:
        DaemonDied: the daemon exited. RuntimeError: an upload came back wrong.
    """
    size = (8 if quick else 100) * MB
    rounds = 1 if quick else 3
    data = os.urandom(size)
    legs: dict[str, list[dict[str, Any]]] = {"grpc": [], "fd": []}
    with running_daemon("npud") as daemon:
        _upload(daemon, os.urandom(MB), "warm-up@1", descriptors=False)  # first-use costs
        _upload(daemon, os.urandom(MB), "warm-up@2", descriptors=True)
        for r in range(rounds):
            order = ("grpc", "fd") if r % 2 == 0 else ("fd", "grpc")
            for leg in order:
                legs[leg].append(
                    _upload(daemon, data, f"bench-model-{leg}@{r}", descriptors=leg == "fd")
                )
    med = {leg: statistics.median(x["seconds"] for x in runs) for leg, runs in legs.items()}
    speedup = med["grpc"] / med["fd"]
    result = BenchResult("P9", "Bulk: a cold model upload by descriptor vs gRPC bytes")
    mb = size // MB
    for metric in (
        Metric(
            f"cold {mb} MB upload, descriptor",
            med["fd"] * 1e3,
            "ms",
            med["grpc"] * 1e3,
            "gRPC bytes",
            f">= {GOAL_SPEEDUP:g}x faster",
            speedup >= GOAL_SPEEDUP,
        ),
        Metric(
            "bytes the daemon copied, descriptor",
            max(x["copied_bytes"] for x in legs["fd"]) / MB,
            "MB",
            min(x["copied_bytes"] for x in legs["grpc"]) / MB,
            "gRPC bytes",
            "0",
            max(x["copied_bytes"] for x in legs["fd"]) == 0,
        ),
        Metric(
            "daemon private memory growth, descriptor",
            max(x["anon_delta_mb"] for x in legs["fd"]),
            "MB",
            max(x["anon_delta_mb"] for x in legs["grpc"]),
            "gRPC bytes",
        ),
        Metric(
            "daemon CPU per upload, descriptor",
            statistics.median(x["cpu_s"] for x in legs["fd"]) * 1e3,
            "ms",
            statistics.median(x["cpu_s"] for x in legs["grpc"]) * 1e3,
            "gRPC bytes",
        ),
        Metric(
            "daemon CPU per upload with the backing copy, descriptor",
            statistics.median(x["cpu_with_backing_s"] for x in legs["fd"]) * 1e3,
            "ms",
            statistics.median(x["cpu_with_backing_s"] for x in legs["grpc"]) * 1e3,
            "gRPC bytes",
        ),
    ):
        result.add(metric)
    result.samples = {
        "upload_s_grpc": [x["seconds"] for x in legs["grpc"]],
        "upload_s_fd": [x["seconds"] for x in legs["fd"]],
    }
    result.notes.append(
        "the descriptor path writes the state directory's backing copy (sha256 + file) on a "
        "worker thread after its reply (the memfd is sealed, so the bytes cannot change); the "
        "gRPC path writes it before replying. 'with the backing copy' counts the daemon's CPU "
        "until the key is recorded, for both."
    )
    result.notes.append(
        f"{mb} MB, {rounds} round(s), order flipped per round; descriptor {speedup:.1f}x faster "
        f"(median {med['fd'] * 1e3:.0f} ms vs {med['grpc'] * 1e3:.0f} ms); per upload "
        f"(grpc, fd): {json.dumps(legs)}"
    )
    return result
