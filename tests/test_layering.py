"""The layering rule is a checked contract, not a convention."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def _lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"],
        cwd=cwd,
        capture_output=True,
        text=True,
        check=False,
        env={"PATH": str(LINT_IMPORTS.parent), "PYTHONPATH": str(cwd)},
    )


def _copy_tree(tmp_path: Path) -> Path:
    dst = tmp_path / "tree"
    dst.mkdir()
    shutil.copy(ROOT / "pyproject.toml", dst / "pyproject.toml")
    shutil.copytree(ROOT / "npud", dst / "npud", ignore=shutil.ignore_patterns("__pycache__"))
    return dst


def test_the_tree_keeps_its_layers() -> None:
    """lint-imports passes on the package as it stands."""
    result = _lint(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" in result.stdout.lower() or "kept" in result.stdout.lower()


def test_core_importing_grpc_breaks_the_build(tmp_path: Path) -> None:
    """Adding `import grpc` to core makes the layering check fail and name the contract."""
    tree = _copy_tree(tmp_path)
    target = tree / "npud" / "core" / "__init__.py"
    target.write_text(target.read_text() + "\nimport grpc  # forbidden\n")
    result = _lint(tree)
    assert result.returncode != 0
    assert "Core is pure Python" in result.stdout
    assert "npud.core -> grpc" in result.stdout


def test_devices_importing_core_breaks_the_build(tmp_path: Path) -> None:
    """An upward import (devices -> core) is refused by the layers contract."""
    tree = _copy_tree(tmp_path)
    target = tree / "npud" / "devices" / "__init__.py"
    target.write_text(target.read_text() + "\nimport npud.core  # upward: forbidden\n")
    result = _lint(tree)
    assert result.returncode != 0
    assert "Layers go one way" in result.stdout


def test_the_gateway_reaching_into_the_daemon_breaks_the_build(tmp_path: Path) -> None:
    """The gateway is a client of npud: importing core (even through a module of its own)
    fails the gateway's contract."""
    tree = _copy_tree(tmp_path)
    target = tree / "npud" / "gateway" / "engine.py"
    target.write_text(target.read_text() + "\nimport npud.core.service  # forbidden\n")
    result = _lint(tree)
    assert result.returncode != 0
    assert "The gateway is a client of npud" in result.stdout
