"""The generated protobuf code committed under npud/v1 matches the .proto sources."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_committed_codegen_is_fresh(tmp_path: Path) -> None:
    """Regenerating into a scratch tree reproduces npud/v1 and npud/plugin/v1beta1 byte for
    byte."""
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_protos.py"), "--out", str(tmp_path)],
        check=True,
        capture_output=True,
    )
    places = ("npud/v1", "npud/plugin/v1beta1")
    fresh = {p: p.read_bytes() for d in places for p in (tmp_path / d).glob("*_pb2*")}
    fresh = {str(p.relative_to(tmp_path)): data for p, data in fresh.items()}
    committed = {
        str(p.relative_to(ROOT)): p.read_bytes() for d in places for p in (ROOT / d).glob("*_pb2*")
    }
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
