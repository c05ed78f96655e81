"""The ioctl choke point: in-place updates, retries, and errors that name the call."""

from __future__ import annotations

import errno
import fcntl
import os
import pickle
import termios
from collections.abc import Iterator
from typing import Any

import pytest

from npud.abi import drm
from npud.abi.ioctl import IoctlError, ioctl, statistics


@pytest.fixture
def pipe() -> Iterator[tuple[int, int]]:
    r, w = os.pipe()
    yield r, w
    os.close(r)
    os.close(w)


def test_the_kernel_writes_back_into_the_struct(pipe: tuple[int, int]) -> None:
    """A real ioctl (FIONREAD on a pipe) updates the cffi struct in place."""
    r, w = pipe
    os.write(w, b"x" * 37)
    arg = drm.ffi.new("struct drm_get_cap *")
    assert ioctl(r, termios.FIONREAD, arg, name="FIONREAD") == 0
    assert arg.capability == 37


def test_a_drm_ioctl_on_a_non_drm_fd_names_the_call(pipe: tuple[int, int]) -> None:
    """ENOTTY from the kernel arrives as an OSError carrying errno and the ioctl's name."""
    arg = drm.HEADER.new("struct drm_get_cap", capability=drm.Cap.PRIME)
    with pytest.raises(OSError) as info:
        ioctl(pipe[0], drm.GET_CAP, arg)
    assert info.value.errno == errno.ENOTTY
    assert isinstance(info.value, IoctlError)
    assert info.value.ioctl == "DRM_IOCTL_GET_CAP"
    assert "DRM_IOCTL_GET_CAP" in str(info.value)


def test_a_closed_fd_is_ebadf_without_a_syscall() -> None:
    """fd -1 (a closed DrmFile) fails as EBADF with the name, never touching another file."""
    before = statistics()
    with pytest.raises(IoctlError) as info:
        ioctl(-1, drm.GEM_CLOSE.request, None, name="DRM_IOCTL_GEM_CLOSE")
    assert (info.value.errno, info.value.ioctl) == (errno.EBADF, "DRM_IOCTL_GEM_CLOSE")
    assert statistics().failures == before.failures + 1


def test_a_bare_request_needs_a_name() -> None:
    """The choke point refuses an anonymous request number."""
    with pytest.raises(TypeError):
        ioctl(0, 0x1234, None)


def test_eintr_and_eagain_are_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """As libdrm's drmIoctl: EINTR and EAGAIN repeat the call with the same argument."""
    answers = [errno.EINTR, errno.EAGAIN, errno.EINTR, 0]
    seen: list[Any] = []

    def fake_ioctl(fd: int, request: int, arg: Any, mutate: bool = True) -> int:
        seen.append(arg)
        err = answers.pop(0)
        if err:
            raise OSError(err, os.strerror(err))
        return 0

    monkeypatch.setattr(fcntl, "ioctl", fake_ioctl)
    before = statistics()
    arg = drm.HEADER.new("struct drm_gem_close", handle=5)
    assert ioctl(3, drm.GEM_CLOSE, arg) == 0
    after = statistics()
    assert len(seen) == 4
    assert all(a is seen[0] for a in seen)
    assert after.eintr_retries - before.eintr_retries == 2
    assert after.eagain_retries - before.eagain_retries == 1


def test_endless_eagain_gives_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """A driver that only ever answers EAGAIN fails with EAGAIN instead of spinning forever."""

    def always_busy(fd: int, request: int, arg: Any, mutate: bool = True) -> int:
        raise OSError(errno.EAGAIN, "busy")

    monkeypatch.setattr(fcntl, "ioctl", always_busy)
    with pytest.raises(IoctlError) as info:
        ioctl(3, drm.GEM_CLOSE, drm.HEADER.new("struct drm_gem_close"))
    assert info.value.errno == errno.EAGAIN


def test_ioctl_errors_survive_pickling() -> None:
    """An IoctlError crossing a process boundary keeps errno and name."""
    err = pickle.loads(pickle.dumps(IoctlError(errno.ENOENT, "DRM_IOCTL_X")))
    assert (err.errno, err.ioctl) == (errno.ENOENT, "DRM_IOCTL_X")
