"""Fixtures of the LLM tests: the tiny model written once per session, its reference, and a
daemon per test module."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from npud.llm.model import Model, load_model
from npud.llm.tiny import make_tiny
from npud.testing.daemon import spawn_npud
from tests.llm.reference import ReferenceLlama


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny demo model on disk (config.json + model.safetensors); do not modify it."""
    return make_tiny(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_model(tiny_dir: Path) -> Model:
    """The tiny model loaded by npud.llm."""
    return load_model(tiny_dir)


@pytest.fixture(scope="session")
def reference(tiny_dir: Path) -> ReferenceLlama:
    """The independent numpy reference of the tiny model."""
    return ReferenceLlama(tiny_dir)


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A daemon serving a simulated NPU on a private socket; yields the socket path once the
    daemon has said READY=1 (its gRPC socket exists before its identity socket does, so the
    socket file alone is not readiness: on a slow CPU a client came in between)."""
    # the environment is kept (an operator's NPUD_* settings, e.g. a slow board's watchdog
    # scale, reach this daemon); the real model's steps ask for 120 s watchdogs, so this
    # operator raises the ceilings
    env = dict(
        os.environ,
        NPUD_LIMITS__LATENCY_TIMEOUT_MAX_S="120",
        NPUD_LIMITS__THROUGHPUT_TIMEOUT_MAX_S="120",
    )
    # A tiny model's step is tens of milliseconds of host CPU, but the tests run beside other
    # test workers' daemons on a shared machine, where one step passed the 250 ms latency
    # watchdog: here the class watchdogs are hang guards, four times the default unless the
    # environment sets its own scale. The watchdog's own test gives its step a timeout.
    env.setdefault("NPUD_SCHEDULER__WATCHDOG_SCALE", "4")
    proc = spawn_npud(tmp_path_factory.mktemp("npud"), env)
    try:
        # generous: the daemon's start is seconds on a host, a minute under emulation
        proc.wait_ready(timeout=300)
        yield proc.socket
    finally:
        proc.stop(timeout=60)
