"""A client that sets up work on npud, reports its ids and waits to be killed (SIGKILL test).

Run as ``python -m tests.daemon.victim SOCKET``; prints one JSON line and sleeps.
"""

from __future__ import annotations

import json
import sys
import time

import npud.client
from npud.client import JobSpec, SchedulingClass
from npud.isa import Program


def main() -> None:
    npu = npud.client.connect(sys.argv[1])
    ctx = npu.create_context(label="victim")
    q = npu.create_queue(ctx, SchedulingClass.LATENCY)
    buf = npu.create_buffer(ctx, 4096)
    npu.write_buffer(ctx, buf, b"\1" * 4096)
    burn = Program().burn(0.3).encode()
    jobs = npu.submit_many(ctx, [JobSpec(q, burn, timeout_s=5.0, kind="victim")] * 3)
    print(json.dumps({"context": ctx.context_id, "jobs": [j.job_id for j in jobs]}), flush=True)
    time.sleep(120)


if __name__ == "__main__":
    main()
