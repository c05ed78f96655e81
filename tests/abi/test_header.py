"""Header declarations: struct construction, constant recording, ioctl bookkeeping."""

from __future__ import annotations

import enum

import pytest

from npud.abi import amdxdna, drm, ivpu
from npud.abi.header import HeaderBuilder, lookup
from npud.abi.ioc import Direction


def test_new_builds_a_zeroed_struct_with_the_given_fields() -> None:
    """Header.new sets the named fields and leaves the rest zero."""
    arg = drm.HEADER.new("struct drm_mode_create_dumb", width=64, height=32, bpp=32)
    assert (arg.width, arg.height, arg.bpp, arg.handle, arg.size) == (64, 32, 32, 0, 0)


def test_new_refuses_structs_of_other_headers_and_unknown_fields() -> None:
    """A struct from another header is a KeyError; a misspelt field an AttributeError."""
    with pytest.raises(KeyError):
        drm.HEADER.new("struct drm_ivpu_param")
    with pytest.raises(AttributeError):
        drm.HEADER.new("struct drm_gem_close", handel=1)


def test_multi_bit_flag_members_are_recorded() -> None:
    """Masks of an IntFlag (ivpu CACHE_MASK) and enum aliases (amdxdna BO SHARE) are checked."""
    assert ivpu.HEADER.constants["DRM_IVPU_BO_CACHE_MASK"] == 0x30000
    assert amdxdna.HEADER.constants["AMDXDNA_BO_SHARE"] == 1
    assert amdxdna.HEADER.constants["AMDXDNA_QOS_REALTIME_PRIORITY"] == 0x100


def test_driver_ioctls_sit_above_the_command_base_and_record_their_number() -> None:
    """A driver ioctl's nr is DRM_COMMAND_BASE + cmd, and cmd is recorded under its C name."""
    spec = ivpu.SUBMIT
    assert spec.nr == 0x40 + 0x05
    assert ivpu.HEADER.constants["DRM_IVPU_SUBMIT"] == 0x05
    assert lookup("ivpu") is ivpu.HEADER


def test_a_constant_cannot_change_value() -> None:
    """Declaring one constant twice with different values is an error."""

    class Two(enum.IntEnum):
        A = 1

    builder = HeaderBuilder("scratch-test", "drm/drm.h", "struct s { uint32_t a; };")
    builder.constants(Two, "X_")
    with pytest.raises(ValueError, match="twice"):
        builder.constant("X_A", 2)
    builder.ioctl("S", Direction.READ, 0x01, "struct s")
    with pytest.raises(ValueError, match="twice"):
        builder.ioctl("S", Direction.READ, 0x01, "struct s")
    with pytest.raises(ValueError, match="driver range"):
        builder.driver_ioctl("T", Direction.READ, 0x60, "struct s", cmd_name="T_CMD")
