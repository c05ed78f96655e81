"""The daemon's allocator setting: large blocks are mapped on their own and returned when freed."""

from __future__ import annotations

import ctypes
import platform

import pytest

from npud.daemon.allocator import ENV_OVERRIDE, MMAP_THRESHOLD_BYTES, return_large_blocks

glibc = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _mapped_bytes(libc: ctypes.CDLL) -> int:
    """Bytes this process holds in blocks malloc mapped on their own (mallinfo2's hblkhd)."""
    libc.mallinfo2.restype = _MallInfo2
    info: _MallInfo2 = libc.mallinfo2()
    return int(info.hblkhd)


@glibc
def test_a_block_above_the_threshold_is_mapped_even_after_a_larger_one_was_freed() -> None:
    """With the threshold set, a 2 MiB block freed after a 4 MiB one is still served by a
    mapping of its own (glibc's default would have raised the threshold to 4 MiB and served it
    from the heap, where freed memory stays resident)."""
    assert return_large_blocks(environ={})
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.malloc.argtypes = [ctypes.c_size_t]
    libc.free.argtypes = [ctypes.c_void_p]
    libc.free(libc.malloc(4 * MMAP_THRESHOLD_BYTES))
    before = _mapped_bytes(libc)
    block = libc.malloc(2 * MMAP_THRESHOLD_BYTES)
    try:
        assert _mapped_bytes(libc) - before >= 2 * MMAP_THRESHOLD_BYTES
    finally:
        libc.free(block)
    assert _mapped_bytes(libc) == before


def test_an_administrators_own_threshold_is_left_alone() -> None:
    """MALLOC_MMAP_THRESHOLD_ in the environment: nothing is set."""
    assert return_large_blocks(environ={ENV_OVERRIDE: "65536"}) is False
