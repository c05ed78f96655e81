"""Linux ioctl request numbers, computed the way ``<asm-generic/ioctl.h>`` does.

An ioctl request packs four fields into one number: the transfer direction, the size of the
argument struct, a "type" byte naming the subsystem (``'d'`` for DRM) and the command number::

    request = dir << DIRSHIFT | size << SIZESHIFT | type << TYPESHIFT | nr

The size is taken from the cffi declaration of the argument struct, so a wrong struct layout
also shows up as a wrong ioctl number (the conformance test checks both against the kernel's
headers). Most architectures (x86, arm, arm64, riscv, loongarch, s390) use the generic layout:
2 direction bits and 14 size bits. powerpc, mips, sparc and alpha use 3 direction bits, 13 size
bits and different direction values; :func:`layout_for` picks the right one from the machine.

Driver-private DRM ioctls live at ``DRM_COMMAND_BASE + nr`` (0x40..0x9f); see :mod:`npud.abi.drm`.
"""

from __future__ import annotations

import enum
import platform
from dataclasses import dataclass

NRBITS = 8
TYPEBITS = 8
NRSHIFT = 0
TYPESHIFT = NRSHIFT + NRBITS
SIZESHIFT = TYPESHIFT + TYPEBITS


class Direction(enum.Enum):
    """Which way the argument travels, as seen from userspace."""

    NONE = "none"  # _IO: no argument
    WRITE = "write"  # _IOW: userspace writes, the kernel reads
    READ = "read"  # _IOR: the kernel writes back
    READWRITE = "readwrite"  # _IOWR: both


@dataclass(frozen=True, slots=True)
class IocLayout:
    """The bit layout of request numbers on one family of architectures."""

    name: str
    size_bits: int
    dir_none: int
    dir_write: int
    dir_read: int

    @property
    def dir_shift(self) -> int:
        """Where the direction bits start."""
        return SIZESHIFT + self.size_bits

    def dir_value(self, direction: Direction) -> int:
        """The encoded value of ``direction`` in this layout."""
        return {
            Direction.NONE: self.dir_none,
            Direction.WRITE: self.dir_write,
            Direction.READ: self.dir_read,
            Direction.READWRITE: self.dir_write | self.dir_read,
        }[direction]


GENERIC = IocLayout("generic", size_bits=14, dir_none=0, dir_write=1, dir_read=2)
"""asm-generic/ioctl.h: x86, arm, arm64, riscv, loongarch, s390, ..."""

POWERPC_MIPS_SPARC = IocLayout(
    "powerpc/mips/sparc", size_bits=13, dir_none=1, dir_write=4, dir_read=2
)
"""arch/{powerpc,mips,sparc,alpha}/include/uapi/asm/ioctl.h."""

_THREE_DIR_BIT_MACHINES = ("ppc", "powerpc", "mips", "sparc", "alpha")


def layout_for(machine: str | None = None) -> IocLayout:
    """The request layout of ``machine`` (default: this machine, from ``platform.machine()``)."""
    arch = (machine if machine is not None else platform.machine()).lower()
    if arch.startswith(_THREE_DIR_BIT_MACHINES):
        return POWERPC_MIPS_SPARC
    return GENERIC


def ioc(
    direction: Direction, type_: int, nr: int, size: int, *, layout: IocLayout | None = None
) -> int:
    """Encode one request number (the ``_IOC`` macro).

    Raises:
        ValueError: a field does not fit its bits (e.g. an argument struct of 16 KiB or more).
    """
    lay = layout if layout is not None else layout_for()
    if not 0 <= nr < 1 << NRBITS:
        raise ValueError(f"ioctl nr {nr:#x} does not fit {NRBITS} bits")
    if not 0 <= type_ < 1 << TYPEBITS:
        raise ValueError(f"ioctl type {type_:#x} does not fit {TYPEBITS} bits")
    if not 0 <= size < 1 << lay.size_bits:
        raise ValueError(f"ioctl argument size {size} does not fit {lay.size_bits} bits")
    return (
        lay.dir_value(direction) << lay.dir_shift
        | size << SIZESHIFT
        | type_ << TYPESHIFT
        | nr << NRSHIFT
    )


@dataclass(frozen=True, slots=True)
class DecodedRequest:
    """The four fields of a request number."""

    direction: Direction
    type_: int
    nr: int
    size: int


def decode(request: int, *, layout: IocLayout | None = None) -> DecodedRequest:
    """Split a request number into its fields (the inverse of :func:`ioc`).

    Raises:
        ValueError: the direction bits hold no valid direction in this layout.
    """
    lay = layout if layout is not None else layout_for()
    dir_bits = request >> lay.dir_shift
    for direction in Direction:
        if lay.dir_value(direction) == dir_bits:
            break
    else:
        raise ValueError(f"request {request:#x} has no valid direction in the {lay.name} layout")
    return DecodedRequest(
        direction=direction,
        type_=(request >> TYPESHIFT) & ((1 << TYPEBITS) - 1),
        nr=(request >> NRSHIFT) & ((1 << NRBITS) - 1),
        size=(request >> SIZESHIFT) & ((1 << lay.size_bits) - 1),
    )
