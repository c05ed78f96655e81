"""Fixtures of the reliability suite: one shared daemon, a root client on it, leak baselines."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import npud.client
from npud.testing.daemon import DaemonProcess
from tests.reliability.harness import Admin, own_daemon, write_report
from tests.reliability.leaks import Baseline, baseline


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Write the measured figures where $NPUD_RELIABILITY_REPORT says (if it does)."""
    write_report()


@pytest.fixture(scope="session")
def shared() -> Iterator[DaemonProcess]:
    """One daemon (sim, fault injection on, reachable by every uid) for most tests."""
    # The identity and quota tests hold engines with 30 s THROUGHPUT BURN jobs: a slice
    # that admits them (admission models each job and refuses one longer than the slice).
    with own_daemon("npud-rel-", scheduler__time_slice_ms="60000") as daemon:
        yield daemon


@pytest.fixture(scope="session")
def root(shared: DaemonProcess) -> Iterator[npud.client.Client]:
    """A root (admin) client of the shared daemon."""
    with npud.client.connect(shared.socket) as client:
        yield client


@pytest.fixture(scope="session")
def admin(root: npud.client.Client) -> Iterator[Admin]:
    """AdminService with the root client's token."""
    a = Admin(root)
    yield a
    a.close()


@pytest.fixture(scope="session")
def base(shared: DaemonProcess, root: npud.client.Client) -> Baseline:
    """The shared daemon's resources once warmed up (the leak checks compare against it)."""
    return baseline(shared, root)
