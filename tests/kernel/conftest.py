"""Fixtures for tests that run inside the QEMU guest (scripts/kernel-tests.sh) against vgem.

Outside the guest these tests skip: they need a real kernel with vgem, which CI provides only
through scripts/run-in-kernel.sh (it sets NPUD_IN_KERNEL=1). Inside the guest nothing skips: a
missing /dev/dri/card0 there is a failure.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from npud.abi.drmfile import DrmFile

IN_KERNEL = os.environ.get("NPUD_IN_KERNEL") == "1"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if IN_KERNEL:
        return
    skip = pytest.mark.skip(reason="needs the vgem kernel: run scripts/kernel-tests.sh")
    for item in items:
        if item.get_closest_marker("kernel") is not None:
            item.add_marker(skip)


def _vgem_node(prefix: str) -> str:
    for entry in sorted(Path("/sys/class/drm").iterdir()):
        if entry.name.startswith(prefix) and "-" not in entry.name:
            return f"/dev/dri/{entry.name}"
    raise AssertionError(f"no /dev/dri/{prefix}* node: is vgem loaded?")


@pytest.fixture
def card() -> Iterator[DrmFile]:
    """vgem's primary node (dumb buffers are allowed only here)."""
    with DrmFile.open(_vgem_node("card")) as drm_file:
        yield drm_file


@pytest.fixture
def render() -> Iterator[DrmFile]:
    """vgem's render node."""
    with DrmFile.open(_vgem_node("renderD")) as drm_file:
        yield drm_file
