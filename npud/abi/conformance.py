"""Checking npud's ABI declarations against the kernel's own headers.

A wrong struct layout or ioctl number is not an error anyone sees: the kernel reads the wrong
bytes, and a customer's board corrupts memory. So every declaration in :mod:`npud.abi` is
compared with what a C compiler makes of the kernel's UAPI headers:

1. :func:`declared_facts` lists, from the cffi side, every declared struct's ``sizeof`` and
   ``alignof``, every field's ``offsetof``, ``sizeof`` and signedness, every ioctl's request
   number and every constant, each under a key such as ``offsetof struct drm_version.name``.
2. :func:`probe_source` writes a C program that prints the same keys from the kernel headers;
   :func:`run_probe` compiles it with the machine's own gcc against a header tree (Debian's
   ``linux-libc-dev``, fetched by ``scripts/fetch-kernel-headers.sh``) and parses its output.
   The layouts are the compiling machine's: the arm64 run (scripts/arm64.sh) compiles the
   same probe with arm64 gcc against the same headers, so both ABIs are checked.
3. :func:`compare` judges every key under the version-drift rule below.

Version drift
-------------
UAPI structs grow by appending fields; the kernel copies the smaller of the user's and its own
size and zero-fills the rest, so an older (shorter) declaration stays correct. When the headers
are newer than our declarations, a struct whose every declared field is where we say it is but
whose size is larger is an **extension**: reported, with the kernel version, not failed; its
ioctl numbers (which encode the size) differ only in the size bits and are extensions too.
Anything else is a **mismatch**: a moved or resized field, a changed signedness, a shrunk
struct, a changed constant, an ioctl number that differs in direction, type or number.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from npud.abi import amdxdna, drm, ethosu, etnaviv, ivpu, qaic, rocket, vgem
from npud.abi.header import Header
from npud.abi.ioc import decode

HEADERS: tuple[Header, ...] = (
    drm.HEADER,
    vgem.HEADER,
    rocket.HEADER,
    ivpu.HEADER,
    amdxdna.HEADER,
    ethosu.HEADER,
    qaic.HEADER,
    etnaviv.HEADER,
)
"""Every header npud declares, in probe order."""

_U64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Fact:
    """One checkable fact: its key, its value on the cffi side and the C expression for it."""

    key: str
    value: int
    c_expr: str
    header: str


def _is_integer(header: Header, cname: str) -> bool:
    try:
        header.ffi.cast(cname, 0)
    except TypeError:
        return False
    return True


def declared_facts(headers: Iterable[Header] = HEADERS) -> list[Fact]:
    """Every fact the cffi declarations assert, with the C expression that checks it."""
    facts: list[Fact] = []
    for header in headers:
        ffi = header.ffi
        for ctype in header.structs():
            name = header.name
            facts.append(Fact(f"sizeof {ctype}", ffi.sizeof(ctype), f"sizeof({ctype})", name))
            facts.append(
                Fact(f"alignof {ctype}", ffi.alignof(ctype), f"__alignof__({ctype})", name)
            )
            for fname, cfield in ffi.typeof(ctype).fields:
                base = f"{ctype}.{fname}"
                member = f"(({ctype} *)0)->{fname}"
                facts.append(
                    Fact(f"offsetof {base}", cfield.offset, f"offsetof({ctype}, {fname})", name)
                )
                ftype = cfield.type
                if ftype.kind == "array" and ftype.length is None:
                    continue  # a flexible array member has no size
                facts.append(Fact(f"sizeof {base}", ffi.sizeof(ftype), f"sizeof({member})", name))
                if ftype.kind == "primitive" and _is_integer(header, ftype.cname):
                    signed = int(int(ffi.cast(ftype.cname, -1)) < 0)
                    facts.append(
                        Fact(
                            f"signed {base}",
                            signed,
                            f"(((__typeof__({member}))-1) < 0)",
                            name,
                        )
                    )
        for spec in header.ioctls.values():
            facts.append(
                Fact(f"ioctl {spec.name}", spec.request, f"(unsigned long)({spec.name})", name)
            )
        for cname, value in header.constants.items():
            facts.append(Fact(f"const {cname}", value & _U64, f"({cname})", header.name))
    return facts


def probe_source(facts: Iterable[Fact], headers: Iterable[Header] = HEADERS) -> str:
    """A C program printing ``key<TAB>value`` for every fact, from the kernel's headers."""
    includes = ["stddef.h", "stdio.h", "fcntl.h"]
    includes += [h.include for h in headers]
    lines = [f"#include <{inc}>" for inc in dict.fromkeys(includes)]
    lines.append("int main(void) {")
    for fact in facts:
        lines.append(
            f'    printf("%s\\t%llu\\n", "{fact.key}", (unsigned long long)({fact.c_expr}));'
        )
    lines.append("    return 0;")
    lines.append("}")
    return "\n".join(lines) + "\n"


def parse_probe_output(text: str) -> dict[str, int]:
    """The probe's ``key<TAB>value`` lines as a mapping.

    Raises:
        ValueError: a line is not ``key<TAB>integer``.
    """
    result: dict[str, int] = {}
    for line in text.splitlines():
        if not line:
            continue
        key, sep, value = line.rpartition("\t")
        if not sep:
            raise ValueError(f"malformed probe line: {line!r}")
        result[key] = int(value)
    return result


def multiarch_include(include_dir: Path) -> Path | None:
    """The per-architecture include directory (``<include>/x86_64-linux-gnu``) if present."""
    try:
        triplet = subprocess.run(
            ["gcc", "-print-multiarch"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None
    candidate = include_dir / triplet
    return candidate if triplet and candidate.is_dir() else None


def build_probe(source: str, include_dir: Path, directory: Path) -> Path:
    """Compile ``source`` with this machine's gcc against ``include_dir`` into ``directory``.

    Returns the executable (``directory/probe``), which the caller owns. The compiler is the
    native one, so the probe has this machine's layouts: on arm64 (also under emulation) it is
    an arm64 ELF, which :func:`elf_machine` tells.

    Raises:
        FileNotFoundError: gcc is not installed.
        RuntimeError: the probe did not compile (gcc's diagnostics are in the message: a
            declared field or constant that the header lacks ends up here).
    """
    gcc = shutil.which("gcc")
    if gcc is None:
        raise FileNotFoundError("gcc is needed to compile the ABI probe")
    include_args = ["-I", str(include_dir)]
    arch_dir = multiarch_include(include_dir)
    if arch_dir is not None:
        include_args += ["-I", str(arch_dir)]
    src = directory / "probe.c"
    exe = directory / "probe"
    src.write_text(source)
    build = subprocess.run(
        [gcc, "-std=gnu11", "-O0", *include_args, "-o", str(exe), str(src)],
        capture_output=True,
        text=True,
        check=False,
    )
    if build.returncode != 0:
        raise RuntimeError(f"the ABI probe does not compile:\n{build.stderr[-4000:]}")
    return exe


def run_probe(source: str, include_dir: Path) -> dict[str, int]:
    """Compile ``source`` (see :func:`build_probe`), run it, and parse its output.

    Raises:
        FileNotFoundError: gcc is not installed.
        RuntimeError: the probe did not compile or did not run.
    """
    with tempfile.TemporaryDirectory(prefix="npud-abi-probe-") as tmp:
        exe = build_probe(source, include_dir, Path(tmp))
        run = subprocess.run(
            [str(exe)], capture_output=True, text=True, check=False, env={"PATH": os.defpath}
        )
        if run.returncode != 0:
            raise RuntimeError(f"the ABI probe failed ({run.returncode}): {run.stderr}")
        return parse_probe_output(run.stdout)


ELF_MACHINES: Mapping[int, str] = {
    3: "i686",
    40: "arm",
    62: "x86_64",
    183: "aarch64",
    243: "riscv64",
}
"""ELF ``e_machine`` values (EM_386, EM_ARM, EM_X86_64, EM_AARCH64, EM_RISCV) by the name
``platform.machine()`` gives that architecture on Linux."""


def elf_machine(path: Path) -> str:
    """The architecture an ELF file is built for, named as ``platform.machine()`` names it.

    Reads ``e_machine`` from the ELF header (its byte order from ``EI_DATA``), so it tells an
    arm64 binary from an x86_64 one whatever machine runs the check.

    Raises:
        ValueError: the file is not ELF, or its machine is not one listed in ELF_MACHINES.
    """
    with path.open("rb") as f:
        ident = f.read(20)
    if len(ident) < 20 or ident[:4] != b"\x7fELF" or ident[5] not in (1, 2):
        raise ValueError(f"{path} is not an ELF file")
    number = int.from_bytes(ident[18:20], "little" if ident[5] == 1 else "big")
    if number not in ELF_MACHINES:
        raise ValueError(f"{path}: unknown ELF machine {number}")
    return ELF_MACHINES[number]


@dataclass(frozen=True, slots=True)
class Finding:
    """One fact that differs: its key, both values and why it is judged as it is."""

    key: str
    declared: int
    kernel: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class Report:
    """The verdict over every fact."""

    checked: int
    mismatches: tuple[Finding, ...]
    extensions: tuple[Finding, ...]
    kernel_version: str
    per_header: Mapping[str, int] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """No mismatches (extensions are allowed)."""
        return not self.mismatches

    def summary(self) -> str:
        """A few lines for a person: counts per header, then every finding."""
        lines = [
            f"ABI conformance against linux-libc-dev {self.kernel_version}: "
            f"{self.checked} items checked, {len(self.mismatches)} mismatches, "
            f"{len(self.extensions)} extensions",
            "  " + ", ".join(f"{name}: {n}" for name, n in self.per_header.items()),
        ]
        lines += [f"  MISMATCH {f.key}: {f.reason}" for f in self.mismatches]
        lines += [f"  extension {f.key}: {f.reason}" for f in self.extensions]
        return "\n".join(lines)


def _struct_of(key: str) -> str:
    # "offsetof struct x.f" -> "struct x"; "sizeof struct x" -> "struct x"
    rest = key.split(" ", 1)[1]
    return rest.split(".", 1)[0]


def compare(
    facts: Iterable[Fact],
    kernel: Mapping[str, int],
    *,
    kernel_version: str = "unknown",
    ioctl_structs: Mapping[str, str | None] | None = None,
) -> Report:
    """Judge every fact against the kernel's value under the version-drift rule.

    ``ioctl_structs`` maps an ioctl key (``ioctl DRM_IOCTL_X``) to its argument struct, so that
    an ioctl whose number differs only in the size of an extended struct counts as extension.
    """
    facts = list(facts)
    if ioctl_structs is None:
        ioctl_structs = {
            f"ioctl {spec.name}": spec.struct for h in HEADERS for spec in h.ioctls.values()
        }
    bad_structs: set[str] = set()
    grown: dict[str, tuple[int, int]] = {}
    mismatches: list[Finding] = []
    extensions: list[Finding] = []

    # Fields first: a struct whose declared fields all sit where the kernel has them may have
    # grown at the end; one with any moved/resized field is wrong whatever its size says.
    for fact in facts:
        kind = fact.key.split(" ", 1)[0]
        if kind in ("offsetof", "signed") or (kind == "sizeof" and "." in fact.key):
            got = kernel.get(fact.key)
            if got != fact.value:
                bad_structs.add(_struct_of(fact.key))
                what = {"offsetof": "moved", "signed": "changed signedness"}.get(kind, "resized")
                mismatches.append(
                    Finding(
                        fact.key, fact.value, got, f"field {what}: npud {fact.value}, kernel {got}"
                    )
                )
    for fact in facts:
        kind = fact.key.split(" ", 1)[0]
        got = kernel.get(fact.key)
        if kind == "sizeof" and "." not in fact.key:
            ctype = _struct_of(fact.key)
            if got == fact.value:
                continue
            if got is not None and got > fact.value and ctype not in bad_structs:
                grown[ctype] = (fact.value, got)
                extensions.append(
                    Finding(
                        fact.key,
                        fact.value,
                        got,
                        f"kernel {kernel_version} appends {got - fact.value} bytes "
                        f"({fact.value} -> {got}); npud's prefix is correct",
                    )
                )
            else:
                mismatches.append(
                    Finding(
                        fact.key, fact.value, got, f"struct size npud {fact.value}, kernel {got}"
                    )
                )
        elif kind == "ioctl":
            if got == fact.value:
                continue
            struct = ioctl_structs.get(fact.key)
            if got is not None and struct is not None and _only_size_differs(fact.value, got):
                sizes = grown.get(struct)
                if sizes is not None and decode(got).size == sizes[1]:
                    extensions.append(
                        Finding(
                            fact.key,
                            fact.value,
                            got,
                            f"request {fact.value:#x} -> {got:#x}: the size of {struct} grew "
                            f"in kernel {kernel_version}; the kernel still accepts the old size",
                        )
                    )
                    continue
            mismatches.append(Finding(fact.key, fact.value, got, _describe_ioctl(fact.value, got)))
        elif kind == "const" and (got is None or (got & _U64) != fact.value):
            mismatches.append(
                Finding(fact.key, fact.value, got, f"constant npud {fact.value}, kernel {got}")
            )
    # Alignment after sizes: an appended wider field may legitimately raise it.
    for fact in facts:
        if fact.key.startswith("alignof "):
            got = kernel.get(fact.key)
            if got != fact.value and _struct_of(fact.key) not in grown:
                mismatches.append(
                    Finding(fact.key, fact.value, got, f"alignment npud {fact.value}, kernel {got}")
                )
    per_header: dict[str, int] = {}
    for fact in facts:
        per_header[fact.header] = per_header.get(fact.header, 0) + 1
    return Report(
        checked=len(facts),
        mismatches=tuple(mismatches),
        extensions=tuple(extensions),
        kernel_version=kernel_version,
        per_header=per_header,
    )


def _only_size_differs(a: int, b: int) -> bool:
    try:
        da, db = decode(a), decode(b)
    except ValueError:
        return False
    return (da.direction, da.type_, da.nr) == (db.direction, db.type_, db.nr) and da.size != db.size


def _describe_ioctl(declared: int, kernel: int | None) -> str:
    if kernel is None:
        return "missing from the probe output"
    return f"request npud {declared:#x}, kernel {kernel:#x}"
