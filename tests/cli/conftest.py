"""Fixtures for npuctl's tests: a daemon with the known workload, and a second one to mutate."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from npud.testing.daemon import DaemonProcess
from tests.cli.harness import Workload, run_workload, start_daemon


@dataclass
class Live:
    """A daemon and the workload running on it."""

    daemon: DaemonProcess
    workload: Workload

    @property
    def socket(self) -> Path:
        """The daemon's gRPC socket."""
        return self.daemon.socket


@contextlib.contextmanager
def _live(tmp: Path) -> Iterator[Live]:
    """A daemon on ``tmp`` with the known workload; the workload closes before the daemon stops."""
    daemon = start_daemon(tmp)
    try:
        workload = run_workload(daemon.socket)
        try:
            yield Live(daemon, workload)
        finally:
            workload.close()
    finally:
        daemon.stop()


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A read-only daemon + workload shared by the listing, JSON and golden tests."""
    with _live(tmp_path_factory.mktemp("npud-live")) as running:
        yield running


@pytest.fixture(scope="module")
def busy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """A daemon + workload that tests may change (cancel jobs, add work for ``top``)."""
    with _live(tmp_path_factory.mktemp("npud-busy")) as running:
        yield running
