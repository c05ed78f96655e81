"""The daemon's allocator setting: large blocks are mapped on their own and returned when freed."""

from __future__ import annotations

import platform
import subprocess
import sys

import pytest

from npud.daemon.allocator import ENV_OVERRIDE, return_large_blocks
from tests import ROOT

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")

_PROBE = """
import ctypes, sys
from npud.daemon.allocator import MMAP_THRESHOLD_BYTES, return_large_blocks

class MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd",
        "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL(None)
libc.mallinfo2.restype = MallInfo2
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = [ctypes.c_size_t]
libc.free.argtypes = [ctypes.c_void_p]
if sys.argv[1] == "set":
    assert return_large_blocks(environ={})
libc.free(libc.malloc(4 * MMAP_THRESHOLD_BYTES))
before = libc.mallinfo2().hblkhd
block = libc.malloc(2 * MMAP_THRESHOLD_BYTES)
print(libc.mallinfo2().hblkhd - before)
libc.free(block)
"""


def _mapped_by_a_2mib_block_after_a_4mib_one(mode: str) -> int:
    """In a fresh interpreter (its heap has no free 2 MiB to reuse): bytes malloc mapped for a
    2 MiB block allocated after a 4 MiB one was freed."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, mode],
        cwd=ROOT,
        env={"PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return int(out.stdout)


@glibc
def test_a_block_above_the_threshold_is_mapped_even_after_a_larger_one_was_freed() -> None:
    """With the threshold set, a 2 MiB block allocated after a 4 MiB one was freed is served by
    a mapping of its own, returned to the system on free; glibc's default raises its threshold
    to 4 MiB on that free and serves the 2 MiB block from the heap, where freed memory stays."""
    assert _mapped_by_a_2mib_block_after_a_4mib_one("set") >= 2 << 20
    assert _mapped_by_a_2mib_block_after_a_4mib_one("default") == 0


def test_an_administrators_own_threshold_is_left_alone() -> None:
    """MALLOC_MMAP_THRESHOLD_ in the environment: nothing is set."""
    assert return_large_blocks(environ={ENV_OVERRIDE: "65536"}) is False
