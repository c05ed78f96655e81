"""P4 residency: a second process attaching a 100 MB model that is already resident.

Two separate client processes talk to one real daemon (simulated NPU, process mode):

1. the **uploader** creates a PERSISTENT buffer under a key and writes 100 MB into it (the cold
   path every process pays when each opens the NPU itself), then exits; its context closes and
   the buffer stays in npud's warm pool;
2. the **attacher**, a fresh process, opens the buffer by key (``OpenPersistentBuffer``) and
   checks a few slices of it against the bytes the uploader wrote.

Timed: the cold upload (create + write) and the attach (the open call alone, and with the
context creation before it). Bytes uploaded are counted by each client; as the daemon's own
evidence the device's DRAM use is read before and after the attach (an attach that copied or
re-uploaded the model would allocate).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import uuid
from typing import Any

from bench.daemon import ROOT, running_daemon
from bench.results import BenchResult, Metric

GOAL_RATIO = 100.0
_MB = 1_000_000


def _content(size: int) -> bytes:
    """Deterministic, incompressible-looking model bytes (so nothing can cheat by pattern)."""
    block = hashlib.sha256(b"npud-bench-model").digest() * 2048  # 64 KiB
    reps = -(-size // len(block))
    data = bytearray(block * reps)[:size]
    data[::4096] = bytes((i * 7) % 251 for i in range(len(data[::4096])))
    return bytes(data)


def _dram_used(npu: Any) -> int:
    mem = npu.stats().devices[0].memory
    return sum(m.used_bytes for m in mem if m.tier is not None and m.tier.value == "dram")


def _upload(socket: str, key: str, size: int) -> dict[str, Any]:
    """The uploader process: the cold path."""
    import npud.client
    from npud.client import BufferUsage, Persistence

    data = _content(size)
    with npud.client.connect(socket) as npu:
        ctx = npu.create_context(label="bench/p4-upload")
        t0 = time.perf_counter()
        buf = npu.create_buffer(
            ctx, size, usage=BufferUsage.WEIGHTS, persistence=Persistence.PERSISTENT, key=key
        )
        npu.write_buffer(ctx, buf, data)
        cold_s = time.perf_counter() - t0
        npu.destroy_context(ctx)
    return {"cold_s": cold_s, "uploaded_bytes": size}


def _attach(socket: str, key: str, size: int) -> dict[str, Any]:
    """The attacher process: open the resident model by key, upload nothing, check contents."""
    import npud.client

    data = _content(size)
    with npud.client.connect(socket) as npu:
        used_before = _dram_used(npu)
        t0 = time.perf_counter()
        ctx = npu.create_context(label="bench/p4-attach")
        t1 = time.perf_counter()
        buf = npu.open_persistent(ctx, key)
        t2 = time.perf_counter()
        used_after = _dram_used(npu)
        ok = buf.size >= size and all(
            npu.read_buffer(ctx, buf, offset=off, size=4096) == data[off : off + 4096]
            for off in (0, size // 2, size - 4096)
        )
        npu.destroy_context(ctx)
    return {
        "attach_s": t2 - t1,
        "attach_with_context_s": t2 - t0,
        "uploaded_bytes": 0,
        "dram_delta": used_after - used_before,
        "contents_ok": ok,
    }


_MAIN = (
    "import json, sys; import bench.p4_residency as m; "
    "print(json.dumps(getattr(m, sys.argv[1])(sys.argv[2], sys.argv[3], int(sys.argv[4]))))"
)


def _in_process(what: str, socket: str, key: str, size: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", _MAIN, what, socket, key, str(size)],
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"the {what} process failed:\n{out.stderr[-2000:]}")
    got: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return got


def run(quick: bool) -> BenchResult:
    """Measure P4 (see the module docstring).

    Raises:
        DaemonDied: the daemon exited. RuntimeError: a client process failed or read wrong bytes.
    """
    size = 8 * _MB if quick else 100 * _MB
    result = BenchResult("P4", "residency: attach a resident model vs a cold upload")
    result.params = {"model_bytes": size}
    key = f"bench-model-{uuid.uuid4().hex[:12]}@1"
    with running_daemon("npud") as daemon:
        cold = _in_process("_upload", str(daemon.socket), key, size)
        daemon.check()
        warm = _in_process("_attach", str(daemon.socket), key, size)
    if not warm["contents_ok"]:
        raise RuntimeError("the attached model's bytes differ from the uploaded ones")
    result.add(
        Metric(
            "attach time",
            warm["attach_s"] * 1e3,
            "ms",
            cold["cold_s"] * 1e3,
            "cold upload",
            f">= {GOAL_RATIO:.0f}x faster",
            warm["attach_s"] * GOAL_RATIO <= cold["cold_s"],
        )
    )
    result.add(
        Metric(
            "attach incl. new context",
            warm["attach_with_context_s"] * 1e3,
            "ms",
            cold["cold_s"] * 1e3,
            "cold upload",
        )
    )
    result.add(
        Metric(
            "bytes uploaded on attach",
            warm["uploaded_bytes"] / _MB,
            "MB",
            cold["uploaded_bytes"] / _MB,
            "cold upload",
            "0 bytes",
            warm["uploaded_bytes"] == 0,
        )
    )
    result.add(
        Metric(
            "device DRAM allocated by attach",
            warm["dram_delta"] / _MB,
            "MB",
            goal="0 bytes",
            met=warm["dram_delta"] == 0,
        )
    )
    result.params["cold_upload_MB_per_s"] = size / _MB / cold["cold_s"]
    result.notes.append(
        f"Through the daemon, two separate client processes: the uploader writes a "
        f"{size / _MB:.0f} MB PERSISTENT buffer and exits (the model stays in the warm pool); "
        "the attacher opens it by key and verifies three 4 KiB slices. Cold upload ran at "
        f"{result.params['cold_upload_MB_per_s']:.0f} MB/s over the Unix socket."
    )
    return result
