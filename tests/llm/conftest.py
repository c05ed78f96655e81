"""Fixtures of the LLM tests: the tiny model written once per session, its reference, and a
daemon per test module."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from npud.llm.model import Model, load_model
from npud.llm.tiny import make_tiny
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
    """A daemon serving a simulated NPU on a private socket; yields the socket path."""
    tmp = tmp_path_factory.mktemp("npud")
    socket = tmp / "npud.sock"
    log = (tmp / "npud.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "npud.daemon.main", "--socket", str(socket), "--device", "sim"],
        # the real model's steps ask for 120 s watchdogs: this operator raises the ceilings
        env=dict(
            os.environ,
            NPUD_STATE_DIR=str(tmp / "state"),
            NPUD_LIMITS__LATENCY_TIMEOUT_MAX_S="120",
            NPUD_LIMITS__THROUGHPUT_TIMEOUT_MAX_S="120",
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not socket.exists():
            assert proc.poll() is None, (tmp / "npud.log").read_text()
            assert time.monotonic() < deadline, "npud did not bind its socket in 30 s"
            time.sleep(0.05)
        yield socket
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()
