"""The generated protobuf code committed under npud/v1 matches the .proto sources."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_committed_codegen_is_fresh(tmp_path: Path) -> None:
    """Regenerating into a scratch tree reproduces npud/v1 byte for byte."""
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    fresh = {p.name: p.read_bytes() for p in (tmp_path / "npud" / "v1").glob("*_pb2*")}
    committed = {p.name: p.read_bytes() for p in (ROOT / "npud" / "v1").glob("*_pb2*")}
    assert fresh, "protoc produced nothing"
    assert sorted(fresh) == sorted(committed), (
        "generated file set differs: run scripts/gen_protos.py"
    )
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale generated code: {stale}; run scripts/gen_protos.py"


def test_generated_package_imports_without_path_hacks() -> None:
    """`from npud.v1 import system_pb2_grpc` works from a plain interpreter."""
    out = subprocess.run(
        [sys.executable, "-c", "from npud.v1 import system_pb2_grpc, system_pb2; print('ok')"],
        check=True,
        capture_output=True,
        text=True,
        cwd="/",
    )
    assert out.stdout.strip() == "ok"
