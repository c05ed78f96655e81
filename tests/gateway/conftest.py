"""Fixtures of the gateway tests: the tiny model, its reference, npud and the gateway."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from npud.llm.tiny import make_tiny
from npud.testing.daemon import DaemonProcess
from npud.testing.gateway import GatewayProcess, start_gateway
from tests.cli.harness import start_daemon
from tests.llm.reference import ReferenceLlama

MODEL = "tiny"


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny demo model on disk."""
    return make_tiny(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="module")
def reference(tiny_dir: Path) -> ReferenceLlama:
    """The independent numpy reference of the tiny model."""
    return ReferenceLlama(tiny_dir)


@pytest.fixture(scope="module")
def npud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """npud on a simulated NPU, on a private socket."""
    daemon = start_daemon(tmp_path_factory.mktemp("npud"))
    try:
        yield daemon
    finally:
        daemon.stop()


@pytest.fixture(scope="module")
def gateway(
    npud: DaemonProcess, tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """``npud-llm serve`` of the tiny model (context 128) against ``npud``."""
    gw = start_gateway(
        npud.socket,
        tmp_path_factory.mktemp("gateway"),
        "--model",
        str(tiny_dir),
        "--served-model-name",
        MODEL,
        "--max-seq",
        "128",
    )
    try:
        yield gw
    finally:
        gw.stop()
