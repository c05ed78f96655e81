"""npud's ABI declarations against the kernel's own UAPI headers (Debian sid linux-libc-dev).

The headers are fetched by scripts/fetch-kernel-headers.sh into the user cache (seconds the
first time, milliseconds after). This test never skips: without the headers or gcc it fails,
because an unchecked ABI is exactly the silent corruption it exists to prevent.
"""

from __future__ import annotations

import os
import platform
import subprocess
from pathlib import Path

import pytest

from npud.abi import conformance, drm
from npud.abi.header import HeaderBuilder
from npud.abi.ioc import Direction, decode, ioc

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def include_dir() -> Path:
    out = subprocess.run(
        [str(ROOT / "scripts" / "fetch-kernel-headers.sh")],
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
    )
    assert out.returncode == 0, f"fetching the kernel headers failed:\n{out.stderr}"
    path = Path(out.stdout.strip().splitlines()[-1])
    assert (path / "drm" / "drm.h").is_file()
    return path


@pytest.fixture(scope="module")
def kernel_version(include_dir: Path) -> str:
    return (include_dir.parents[2] / "VERSION").read_text().strip()


@pytest.fixture(scope="module")
def facts() -> list[conformance.Fact]:
    return conformance.declared_facts()


@pytest.fixture(scope="module")
def probe(
    include_dir: Path, facts: list[conformance.Fact], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The probe of every declared fact, compiled by this machine's gcc."""
    directory = tmp_path_factory.mktemp("abi-probe")
    return conformance.build_probe(conformance.probe_source(facts), include_dir, directory)


@pytest.fixture(scope="module")
def kernel(probe: Path) -> dict[str, int]:
    run = subprocess.run(
        [str(probe)], capture_output=True, text=True, check=True, env={"PATH": os.defpath}
    )
    return conformance.parse_probe_output(run.stdout)


def test_every_declaration_matches_the_kernel_headers(
    facts: list[conformance.Fact],
    kernel: dict[str, int],
    kernel_version: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Zero mismatches over every struct, field, ioctl and constant of all eight headers."""
    report = conformance.compare(facts, kernel, kernel_version=kernel_version)
    with capsys.disabled():  # the count is part of the result: show it in every run
        print("\n" + report.summary())
    assert report.ok, report.summary()
    assert set(report.per_header) == {
        "drm",
        "vgem",
        "rocket",
        "ivpu",
        "amdxdna",
        "ethosu",
        "qaic",
        "etnaviv",
    }
    kinds = {f.key.split(" ", 1)[0] for f in facts}
    assert kinds == {"sizeof", "alignof", "offsetof", "signed", "ioctl", "const"}
    assert report.checked == len(facts) > 1500


def test_the_probe_is_a_binary_of_the_machine_running_the_suite(
    probe: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The probe that gave the kernel's layouts is this machine's ELF: in the arm64 run
    (NPUD_EXPECT_MACHINE=aarch64) an EM_AARCH64 binary, so the layouts checked are arm64's."""
    machine = conformance.elf_machine(probe)
    assert machine == platform.machine()
    expected = os.environ.get("NPUD_EXPECT_MACHINE")
    if expected is not None:
        assert machine == expected
    with capsys.disabled():  # the architecture is part of the result: show it
        print(f"\nABI probe {probe.name}: ELF for {machine}")


def _elf_header(ei_data: int, machine: int) -> bytes:
    order = "little" if ei_data == 1 else "big"
    return b"\x7fELF" + bytes([2, ei_data, 1]) + bytes(9) + bytes(2) + machine.to_bytes(2, order)


def test_elf_machine_reads_e_machine_in_either_byte_order(tmp_path: Path) -> None:
    """e_machine 183 is aarch64 and 62 x86_64, little- or big-endian; non-ELF is refused."""
    cases = {(1, 183): "aarch64", (2, 183): "aarch64", (1, 62): "x86_64"}
    for (ei_data, number), name in cases.items():
        path = tmp_path / f"elf-{ei_data}-{number}"
        path.write_bytes(_elf_header(ei_data, number) + bytes(44))
        assert conformance.elf_machine(path) == name
    (tmp_path / "script").write_bytes(b"#!/bin/sh\nexit 0\n" + bytes(8))
    with pytest.raises(ValueError, match="not an ELF"):
        conformance.elf_machine(tmp_path / "script")
    (tmp_path / "vax").write_bytes(_elf_header(1, 75) + bytes(44))
    with pytest.raises(ValueError, match="unknown ELF machine 75"):
        conformance.elf_machine(tmp_path / "vax")


def _struct_size_key(ctype: str) -> str:
    return f"sizeof {ctype}"


def test_a_struct_grown_at_the_end_is_an_extension(
    facts: list[conformance.Fact], kernel: dict[str, int]
) -> None:
    """Newer headers appending a field: an extension (ioctl too) with the kernel version."""
    grown = dict(kernel)
    ctype = "struct drm_syncobj_wait"
    grown[_struct_size_key(ctype)] += 8
    old = kernel["ioctl DRM_IOCTL_SYNCOBJ_WAIT"]
    d = decode(old)
    grown["ioctl DRM_IOCTL_SYNCOBJ_WAIT"] = ioc(d.direction, d.type_, d.nr, d.size + 8)
    report = conformance.compare(facts, grown, kernel_version="9.9.9-1")
    assert report.ok, report.summary()
    keys = {f.key for f in report.extensions}
    assert keys == {"sizeof struct drm_syncobj_wait", "ioctl DRM_IOCTL_SYNCOBJ_WAIT"}
    assert all("9.9.9-1" in f.reason for f in report.extensions)


@pytest.mark.parametrize(
    ("key", "delta", "reason"),
    [
        ("offsetof struct drm_prime_handle.fd", 4, "moved"),
        ("sizeof struct drm_mode_create_dumb.size", -4, "resized"),
        ("signed struct drm_prime_handle.fd", -1, "signedness"),
        ("sizeof struct drm_ivpu_submit", -8, "struct size"),
        ("const DRM_CAP_SYNCOBJ", 1, "constant"),
        ("const AMDXDNA_QOS_HIGH_PRIORITY", 0x80, "constant"),
    ],
)
def test_anything_but_appending_is_a_mismatch(
    facts: list[conformance.Fact], kernel: dict[str, int], key: str, delta: int, reason: str
) -> None:
    """A moved/resized field, changed signedness, shrunk struct or changed constant fails."""
    drifted = dict(kernel)
    drifted[key] += delta
    report = conformance.compare(facts, drifted)
    assert not report.ok
    assert any(f.key == key and reason in f.reason for f in report.mismatches)


def test_a_changed_ioctl_number_is_a_mismatch(
    facts: list[conformance.Fact], kernel: dict[str, int]
) -> None:
    """An ioctl whose nr or direction changed fails even if its struct is unchanged."""
    drifted = dict(kernel)
    d = decode(kernel["ioctl DRM_IOCTL_ROCKET_SUBMIT"])
    drifted["ioctl DRM_IOCTL_ROCKET_SUBMIT"] = ioc(Direction.READWRITE, d.type_, d.nr, d.size)
    report = conformance.compare(facts, drifted)
    assert [f.key for f in report.mismatches] == ["ioctl DRM_IOCTL_ROCKET_SUBMIT"]


def test_a_wrong_declaration_is_caught_by_the_real_probe(include_dir: Path) -> None:
    """A deliberately wrong cffi layout (64-bit GEM handle) fails against the real headers."""
    builder = HeaderBuilder(
        "drm-wrong", "drm/drm.h", "struct drm_gem_close { uint64_t handle; uint32_t pad; };"
    )
    builder.ioctl("DRM_IOCTL_GEM_CLOSE", Direction.WRITE, 0x09, "struct drm_gem_close")
    builder.constant("DRM_CAP_PRIME", 0x6)
    wrong = builder.build()
    facts = conformance.declared_facts([wrong])
    kernel = conformance.run_probe(conformance.probe_source(facts, [wrong]), include_dir)
    report = conformance.compare(facts, kernel, ioctl_structs={})
    bad = {f.key for f in report.mismatches}
    assert "sizeof struct drm_gem_close.handle" in bad
    assert "offsetof struct drm_gem_close.pad" in bad
    assert "sizeof struct drm_gem_close" in bad
    assert "ioctl DRM_IOCTL_GEM_CLOSE" in bad
    assert "const DRM_CAP_PRIME" in bad


def test_a_field_the_header_lacks_fails_to_compile(include_dir: Path) -> None:
    """A declared field that does not exist in the kernel's struct is a hard failure."""
    fact = conformance.Fact(
        "offsetof struct drm_gem_close.nonexistent",
        0,
        "offsetof(struct drm_gem_close, nonexistent)",
        "drm",
    )
    with pytest.raises(RuntimeError, match="does not compile"):
        conformance.run_probe(conformance.probe_source([fact], [drm.HEADER]), include_dir)


def test_probe_output_parsing_rejects_garbage() -> None:
    """A probe line without a tab-separated integer is an error, not a silent skip."""
    assert conformance.parse_probe_output("a b\t3\n\nc\t18446744073709551615\n") == {
        "a b": 3,
        "c": (1 << 64) - 1,
    }
    with pytest.raises(ValueError, match="malformed"):
        conformance.parse_probe_output("no tab here\n")
