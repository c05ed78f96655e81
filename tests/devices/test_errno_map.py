"""The one errno -> npud error table."""

from __future__ import annotations

import errno

import pytest

from npud.abi.ioctl import IoctlError
from npud.devices.errno_map import ERRNO_TABLE, error_class, error_for
from npud.errors import (
    DeviceError,
    DeviceLost,
    InvalidArgument,
    NotFound,
    NpudError,
    OutOfDeviceMemory,
    Unsupported,
)


@pytest.mark.parametrize(
    ("err", "cls"),
    [
        (errno.ENOENT, NotFound),
        (errno.EINVAL, InvalidArgument),
        (errno.ENOMEM, OutOfDeviceMemory),
        (errno.EOPNOTSUPP, Unsupported),
        (errno.ENODEV, DeviceLost),
        (errno.EBADF, DeviceError),
        (errno.EREMOTEIO, DeviceError),  # unlisted -> DeviceError
    ],
)
def test_each_errno_maps_to_one_class_and_keeps_errno_and_name(err: int, cls: type) -> None:
    """The translated error has the table's class, the kernel's errno and the ioctl's name."""
    translated = error_for(IoctlError(err, "DRM_IOCTL_GEM_CLOSE"), what="free buffer 3")
    assert type(translated) is cls
    assert translated.errno == err
    assert translated.ioctl == "DRM_IOCTL_GEM_CLOSE"
    assert str(translated).startswith("free buffer 3: DRM_IOCTL_GEM_CLOSE failed")
    assert errno.errorcode[err] in str(translated)


def test_driver_overrides_win_over_the_table() -> None:
    """An adapter's dialect (e.g. a driver's EBADFD meaning device loss) overrides the default."""
    assert error_class(errno.EBADFD) is not DeviceLost
    assert error_class(errno.EBADFD, {errno.EBADFD: DeviceLost}) is DeviceLost


def test_a_plain_oserror_is_translated_too() -> None:
    """A failed mmap (plain OSError, no ioctl) maps by errno with an explicit or empty name."""
    err = error_for(OSError(errno.ENOMEM, "no memory"), ioctl="mmap")
    assert isinstance(err, OutOfDeviceMemory)
    assert (err.errno, err.ioctl) == (errno.ENOMEM, "mmap")
    assert error_for(OSError(errno.ENOENT, "x")).ioctl == ""


def test_every_class_in_the_table_is_an_npud_error() -> None:
    """The table only produces npud's own error vocabulary; EINTR/EAGAIN retry never reach it."""
    assert all(issubclass(cls, NpudError) for cls in ERRNO_TABLE.values())
    assert errno.EINTR not in ERRNO_TABLE
