"""System tools some tests drive (Prometheus, promtool, Kubernetes' proto files).

``scripts/test.sh`` installs them; a developer's run without them skips those tests with the
reason, while CI (``CI=true``) fails, so a missing install step cannot pass unnoticed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest


def missing(what: str, hint: str) -> None:
    """Skip (or, under CI, fail) a test that needs ``what``; ``hint`` says how to get it."""
    message = f"{what} is not installed ({hint}; ./scripts/test.sh installs it)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(message)
    pytest.skip(message)


def tool(name: str, package: str) -> str:
    """The path of the program ``name`` (from the Debian package ``package``)."""
    path = shutil.which(name)
    if path is None:
        missing(name, f"apt-get install {package}")
    assert path is not None
    return path


def file(path: Path, package: str) -> Path:
    """``path``, a file the Debian package ``package`` (or test.sh) provides."""
    if not path.is_file():
        missing(str(path), f"from the Debian package {package}")
    return path
