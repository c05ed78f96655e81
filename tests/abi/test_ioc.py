"""Request-number encoding: the _IOC macro in Python."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npud.abi import drm, vgem
from npud.abi.ioc import GENERIC, POWERPC_MIPS_SPARC, Direction, decode, ioc, layout_for


def test_well_known_drm_requests_on_the_generic_layout() -> None:
    """DRM_IOCTL_VERSION and GEM_CLOSE have the numbers every x86-64/arm64 libdrm uses."""
    assert ioc(Direction.READWRITE, ord("d"), 0x00, 64, layout=GENERIC) == 0xC0406400
    assert ioc(Direction.WRITE, ord("d"), 0x09, 8, layout=GENERIC) == 0x40086409
    assert ioc(Direction.NONE, ord("d"), 0x1E, 0, layout=GENERIC) == 0x641E  # SET_MASTER


def test_declared_specs_encode_their_struct_size() -> None:
    """A spec's request carries sizeof(struct) from cffi, its nr and the DRM type byte."""
    fields = decode(drm.SYNCOBJ_WAIT.request)
    assert fields.size == drm.ffi.sizeof("struct drm_syncobj_wait") == 40
    assert (fields.type_, fields.nr, fields.direction) == (ord("d"), 0xC3, Direction.READWRITE)
    assert decode(vgem.FENCE_SIGNAL.request).nr == 0x40 + 0x2


def test_three_direction_bit_machines_use_their_layout() -> None:
    """powerpc/mips/sparc encode WRITE as 4 in 3 direction bits; x86-64 and arm64 are generic."""
    assert layout_for("ppc64le") is POWERPC_MIPS_SPARC
    assert layout_for("mips64") is POWERPC_MIPS_SPARC
    assert layout_for("x86_64") is GENERIC
    assert layout_for("aarch64") is GENERIC
    assert ioc(Direction.WRITE, 0x64, 9, 8, layout=POWERPC_MIPS_SPARC) == 0x80086409


def test_fields_that_do_not_fit_are_refused() -> None:
    """A 16 KiB argument cannot be encoded in 14 size bits."""
    with pytest.raises(ValueError, match="size"):
        ioc(Direction.READ, 0x64, 0, 1 << 14, layout=GENERIC)
    with pytest.raises(ValueError, match="nr"):
        ioc(Direction.READ, 0x64, 256, 8, layout=GENERIC)


@settings(max_examples=200, deadline=None)
@given(
    direction=st.sampled_from(list(Direction)),
    type_=st.integers(0, 255),
    nr=st.integers(0, 255),
    size=st.integers(0, (1 << 13) - 1),
    layout=st.sampled_from([GENERIC, POWERPC_MIPS_SPARC]),
)
def test_decode_inverts_encode(
    direction: Direction, type_: int, nr: int, size: int, layout: object
) -> None:
    """decode(ioc(...)) gives back every field, on both layouts."""
    assert layout is GENERIC or layout is POWERPC_MIPS_SPARC
    fields = decode(ioc(direction, type_, nr, size, layout=layout), layout=layout)
    assert (fields.direction, fields.type_, fields.nr, fields.size) == (direction, type_, nr, size)
