"""One kernel UAPI header as npud declares it: cffi structs, ioctl specs and constants.

Each module of :mod:`npud.abi` (``drm``, ``rocket``, ``ivpu``, ...) builds one :class:`Header`
with a :class:`HeaderBuilder`: the structs as cffi C declarations (written by us from the facts
of the kernel's header, with the kernel's ``__u32``/``__u64`` spelled as fixed-width C types),
every ioctl as an :class:`IoctlSpec` whose request number is computed from the cffi struct size,
and the constants the adapters use, each under the exact name the kernel header gives it.

That naming is what makes the declarations checkable: :mod:`npud.abi.conformance` walks every
header, writes a C probe that prints the kernel's view of each struct, field, ioctl and constant,
and compares. Nothing here touches a device; opening nodes and calling ioctls is
:mod:`npud.abi.drmfile` and :mod:`npud.abi.ioctl`.

Struct instances are cffi cdata; mypy sees them as :data:`Struct` (``Any``), because cffi's
field access is dynamic. They never leave the abi/devices layers.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import cffi

from npud.abi.ioc import Direction, ioc

Struct: TypeAlias = Any
"""A cffi cdata pointer to a declared struct (``ffi.new("struct x *")``)."""

DRM_IOCTL_TYPE = ord("d")
"""The ioctl type byte of every DRM ioctl (``DRM_IOCTL_BASE``)."""

DRM_COMMAND_BASE = 0x40
"""Driver-private DRM ioctls are numbered from here ..."""

DRM_COMMAND_END = 0xA0
"""... up to here (exclusive); core mode-setting ioctls follow."""


@dataclass(frozen=True, slots=True)
class IoctlSpec:
    """One ioctl: its kernel name, request number and argument struct.

    ``name`` is the kernel's macro name (``DRM_IOCTL_PRIME_HANDLE_TO_FD``); it travels on every
    error so a log line names the call that failed. ``struct`` is the C type of the argument
    (``"struct drm_prime_handle"``) or ``None`` for an argument-less ``DRM_IO`` ioctl.
    """

    name: str
    direction: Direction
    type_: int
    nr: int
    struct: str | None
    size: int
    request: int
    header: str


@dataclass(slots=True, eq=False)
class Header:
    """The declarations of one kernel UAPI header (an identity object: one per module)."""

    name: str
    include: str  # the path under <include/> that the C probe includes ("drm/rocket_accel.h")
    ffi: cffi.FFI
    ioctls: dict[str, IoctlSpec] = field(default_factory=dict)
    constants: dict[str, int] = field(default_factory=dict)

    def structs(self) -> tuple[str, ...]:
        """Every struct declared for this header, as C type names (``"struct drm_version"``)."""
        _typedefs, structs, unions = self.ffi.list_types()
        return tuple(f"struct {s}" for s in sorted(structs)) + tuple(
            f"union {u}" for u in sorted(unions)
        )

    def new(self, ctype: str, **fields: Any) -> Struct:
        """A zeroed ``ctype`` (e.g. ``"struct drm_gem_close"``) with ``fields`` set.

        The caller owns the returned cdata; it is freed when the last reference goes.

        Raises:
            KeyError: ``ctype`` is not declared in this header.
            AttributeError: a field name is not a member of the struct.
        """
        if ctype not in self.structs():
            raise KeyError(f"{ctype} is not declared in npud.abi.{self.name}")
        ptr = self.ffi.new(f"{ctype} *")
        for key, value in fields.items():
            setattr(ptr, key, value)
        return ptr

    def spec(self, name: str) -> IoctlSpec:
        """The ioctl named ``name`` (the kernel macro name).

        Raises:
            KeyError: no such ioctl in this header.
        """
        return self.ioctls[name]


class HeaderBuilder:
    """Builds a :class:`Header`: declare structs, then ioctls and constants, then :meth:`build`."""

    def __init__(self, name: str, include: str, cdef: str) -> None:
        ffi = cffi.FFI()
        ffi.cdef(cdef)
        self._header = Header(name=name, include=include, ffi=ffi)

    @property
    def ffi(self) -> cffi.FFI:
        """The header's cffi instance (for ``sizeof`` while declaring)."""
        return self._header.ffi

    def constant(self, c_name: str, value: int) -> int:
        """Record ``c_name = value`` for the conformance check and return ``value``."""
        if c_name in self._header.constants and self._header.constants[c_name] != value:
            raise ValueError(f"{c_name} declared twice with different values")
        self._header.constants[c_name] = value
        return value

    def constants(
        self, values: type[enum.IntEnum] | type[enum.IntFlag], prefix: str, suffix: str = ""
    ) -> None:
        """Record every member of an enum as ``prefix + member name + suffix``."""
        # __members__, not iteration: iterating an IntFlag skips multi-bit members (masks).
        for member_name, member in values.__members__.items():
            self.constant(prefix + member_name + suffix, int(member))

    def ioctl(self, name: str, direction: Direction, nr: int, struct: str | None) -> IoctlSpec:
        """Declare the core ioctl ``name`` = ``_IOC(direction, 'd', nr, sizeof(struct))``."""
        size = 0 if struct is None else self._header.ffi.sizeof(struct)
        spec = IoctlSpec(
            name=name,
            direction=direction,
            type_=DRM_IOCTL_TYPE,
            nr=nr,
            struct=struct,
            size=size,
            request=ioc(direction, DRM_IOCTL_TYPE, nr, size),
            header=self._header.name,
        )
        if name in self._header.ioctls:
            raise ValueError(f"ioctl {name} declared twice")
        self._header.ioctls[name] = spec
        return spec

    def driver_ioctl(
        self, name: str, direction: Direction, cmd: int, struct: str | None, *, cmd_name: str
    ) -> IoctlSpec:
        """Declare a driver-private ioctl at ``DRM_COMMAND_BASE + cmd``.

        ``cmd_name`` is the driver's own constant for ``cmd`` (``DRM_ROCKET_SUBMIT``), recorded
        for the conformance check as well.
        """
        if not 0 <= cmd < DRM_COMMAND_END - DRM_COMMAND_BASE:
            raise ValueError(f"driver ioctl {name}: cmd {cmd:#x} outside the driver range")
        self.constant(cmd_name, cmd)
        return self.ioctl(name, direction, DRM_COMMAND_BASE + cmd, struct)

    def build(self) -> Header:
        """The finished header, registered for :func:`lookup` under its name."""
        _REGISTRY[self._header.name] = self._header
        return self._header


_REGISTRY: dict[str, Header] = {}


def lookup(name: str) -> Header:
    """The built header named ``name`` (``"drm"``, ``"rocket"``, ...).

    Raises:
        KeyError: no module declared that header (import it first).
    """
    return _REGISTRY[name]


def all_specs(headers: Iterable[Header]) -> Mapping[str, IoctlSpec]:
    """Every ioctl of ``headers`` by name."""
    return {name: spec for header in headers for name, spec in header.ioctls.items()}
