"""Waits on a running gateway's ``/health`` for the gateway's end-to-end tests.

The gateway and the npud it talks to are started by npud's launchers
(:mod:`npud.testing.gateway`, :mod:`npud.testing.daemon`); what is here waits for a state the
gateway reports (healthy, the batcher's counters), each with a deadline, never by sleeping.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx

from npud.testing.gateway import GatewayProcess

Counters = dict[str, int]


def wait_healthy(gateway: GatewayProcess, timeout_s: float = 60.0) -> None:
    """Poll ``/health`` until it answers 200; AssertionError with the log after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while httpx.get(gateway.url + "/health", timeout=30).status_code != 200:
        if time.monotonic() > deadline:
            raise AssertionError(f"the gateway was not healthy in {timeout_s} s:\n{gateway.log()}")
        time.sleep(0.05)


def wait_batcher(
    gateway: GatewayProcess, holds: Callable[[Counters], bool], timeout_s: float = 60.0
) -> None:
    """Poll the batcher's counters in ``/health`` until ``holds`` (a readiness wait, not a
    timing assertion); AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not holds(httpx.get(gateway.url + "/health", timeout=30).json()["batcher"]):
        if time.monotonic() > deadline:
            raise AssertionError(f"the batcher did not get there in {timeout_s} s")
        time.sleep(0.01)


async def until_batcher(
    client: httpx.AsyncClient, holds: Callable[[Counters], bool], timeout_s: float = 60.0
) -> None:
    """The asyncio form of :func:`wait_batcher` on ``client`` (based at the gateway's URL);
    TimeoutError after ``timeout_s``."""
    async with asyncio.timeout(timeout_s):
        while not holds((await client.get("/health")).json()["batcher"]):
            await asyncio.sleep(0.01)
