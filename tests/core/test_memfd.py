"""What npud locks on a buffer's memfd before a client gets it, and checks on one it gets."""

from __future__ import annotations

import errno
import fcntl
import mmap
import os

import pytest

from npud.core.memfd import F_SEAL_FUTURE_WRITE, hand_out, require_upload_seals, seals
from npud.errors import InvalidArgument, Unsupported

SIZE = 2 * mmap.PAGESIZE


def _memfd(data: bytes = b"weights!") -> int:
    fd = os.memfd_create("t", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    os.ftruncate(fd, SIZE)
    os.pwrite(fd, data, 0)
    return fd


def test_a_writable_descriptor_can_be_written_but_never_resized() -> None:
    """A writable hand-out keeps writes (through write(2) and a shared mapping, seen by the
    daemon's own mapping) and refuses truncating or growing the file (EPERM)."""
    fd = _memfd()
    ours = mmap.mmap(fd, SIZE)  # the daemon's mapping, made before
    out = hand_out(os.dup(fd), writable=True)
    try:
        os.pwrite(out, b"client", 0)
        with mmap.mmap(out, SIZE) as theirs:
            theirs[6:8] = b"!!"
        assert ours[:8] == b"client!!"
        for size in (0, SIZE * 2):
            with pytest.raises(OSError) as err:
                os.ftruncate(out, size)
            assert err.value.errno == errno.EPERM
    finally:
        ours.close()
        os.close(out)
        os.close(fd)


def test_a_read_only_descriptor_cannot_be_written_however_it_is_reopened() -> None:
    """A read-only hand-out fails a shared writable mapping (EACCES) and write(2) (EBADF);
    re-opened read-write through /proc it still cannot be written or mapped writable (EPERM,
    F_SEAL_FUTURE_WRITE), while the daemon's earlier writable mapping keeps working."""
    fd = _memfd()
    ours = mmap.mmap(fd, SIZE)
    out = hand_out(os.dup(fd), writable=False)
    try:
        assert (seals(out) or 0) & F_SEAL_FUTURE_WRITE
        with pytest.raises(OSError) as err:
            mmap.mmap(out, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        assert err.value.errno == errno.EACCES
        with pytest.raises(OSError) as err:
            os.pwrite(out, b"x", 0)
        assert err.value.errno == errno.EBADF
        again = os.open(f"/proc/self/fd/{out}", os.O_RDWR)
        try:
            with pytest.raises(OSError) as err:
                os.pwrite(again, b"x", 0)
            assert err.value.errno == errno.EPERM
            with pytest.raises(OSError) as err:
                mmap.mmap(again, SIZE, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
            assert err.value.errno == errno.EPERM
        finally:
            os.close(again)
        with mmap.mmap(out, SIZE, access=mmap.ACCESS_READ) as theirs:
            assert theirs[:8] == b"weights!"
        ours[:1] = b"W"  # npud's own mapping, made before the seal, still writes
    finally:
        ours.close()
        os.close(out)
        os.close(fd)


def test_a_descriptor_that_cannot_be_sealed_is_not_handed_out_read_only() -> None:
    """A file that carries no seals (as a dma-buf) goes out only writable; read-only is
    Unsupported and the descriptor is closed, not leaked."""
    r, w = os.pipe()
    os.close(w)
    with pytest.raises(Unsupported, match="read-only"):
        hand_out(r, writable=False)
    with pytest.raises(OSError):
        os.fstat(r)


def test_an_upload_must_be_sealed_against_writes_and_resizing() -> None:
    """require_upload_seals names each missing seal, refuses a file that is not a memfd and
    accepts a memfd with F_SEAL_WRITE, F_SEAL_SHRINK and F_SEAL_GROW."""
    fd = _memfd()
    try:
        with pytest.raises(InvalidArgument, match="F_SEAL_WRITE, F_SEAL_SHRINK, F_SEAL_GROW"):
            require_upload_seals(fd)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SHRINK)
        with pytest.raises(InvalidArgument, match="lacks F_SEAL_GROW"):
            require_upload_seals(fd)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_GROW)
        require_upload_seals(fd)
    finally:
        os.close(fd)
    r, w = os.pipe()
    try:
        with pytest.raises(InvalidArgument, match="not one"):
            require_upload_seals(r)
    finally:
        os.close(r)
        os.close(w)
