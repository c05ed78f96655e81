"""The C allocator's setting for a daemon that runs for months: large blocks go back to the
system when they are freed.

npud receives messages of up to 64 MiB (a WriteBuffer chunk, a request with a long field) and
frees them when the rpc is answered. glibc's malloc serves a block of at least its *mmap
threshold* with a mapping of its own, unmapped on free; but its default threshold is dynamic:
each time such a block is freed, the threshold rises to that block's size (up to 32 MiB). After
one 8 MiB request, every later 8 MiB block comes from the heap instead, and a freed heap block
stays resident wherever a smaller live block sits above it: repeated large requests left the
daemon tens of MiB larger, round after round.

:func:`return_large_blocks` fixes the threshold (which also turns the dynamic adjustment off),
so blocks of 1 MiB and more are always mapped and returned to the system when freed. Smaller
blocks are unaffected. Off glibc (musl, another libc) nothing is changed; an administrator's own
``MALLOC_MMAP_THRESHOLD_`` in the environment is left to rule.
"""

from __future__ import annotations

import ctypes
import os
from collections.abc import Mapping
from typing import Final

MMAP_THRESHOLD_BYTES: Final = 1 << 20
"""Blocks this large or larger are mapped on their own and unmapped when freed."""

M_MMAP_THRESHOLD: Final = -3
"""glibc's mallopt() parameter number for the mmap threshold (malloc.h)."""

ENV_OVERRIDE: Final = "MALLOC_MMAP_THRESHOLD_"
"""glibc's own environment setting for the threshold; when present it is left alone."""


def return_large_blocks(
    threshold: int = MMAP_THRESHOLD_BYTES, environ: Mapping[str, str] | None = None
) -> bool:
    """Set glibc's mmap threshold to ``threshold`` bytes in this process.

    Returns whether it was set: False off glibc, or when ``environ`` (default ``os.environ``)
    already sets :data:`ENV_OVERRIDE`. Raises nothing.
    """
    env = os.environ if environ is None else environ
    if ENV_OVERRIDE in env:
        return False
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - present in glibc only
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, threshold))
