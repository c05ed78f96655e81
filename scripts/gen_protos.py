"""Regenerate the Python code for protos/npud/v1/*.proto into npud/v1/.

The .proto files live under protos/npud/v1/ with ``package npud.v1``; with ``-I protos`` the
generated modules import each other as ``npud.v1.x_pb2``, which is exactly where they are
written (the package directory npud/v1/), so no import rewriting is needed.

Usage: python scripts/gen_protos.py [--out DIR]   (default: the repository root)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"


def generate(out: Path) -> list[Path]:
    """Run protoc (grpcio-tools) with mypy-protobuf stubs; return the .proto files compiled."""
    from grpc_tools import protoc  # the dev dependency, pinned in pyproject

    # protoc finds the mypy-protobuf plugins on PATH; they sit beside this interpreter.
    bindir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")

    protos = sorted((PROTO_ROOT / "npud" / "v1").glob("*.proto"))
    if not protos:
        raise SystemExit("no .proto files under protos/npud/v1")
    target = out / "npud" / "v1"
    target.mkdir(parents=True, exist_ok=True)
    for old in target.glob("*_pb2*.py*"):
        old.unlink()
    from importlib.resources import files

    well_known = files("grpc_tools") / "_proto"  # google/protobuf/*.proto, shipped with protoc
    args = [
        "grpc_tools.protoc",
        f"-I{PROTO_ROOT}",
        f"-I{well_known}",
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        f"--mypy_out={out}",
        f"--mypy_grpc_out={out}",
        *[str(p.relative_to(PROTO_ROOT)) for p in protos],
    ]
    rc = protoc.main(args)
    if rc != 0:
        raise SystemExit(f"protoc failed with status {rc}")
    init = target / "__init__.py"
    if not init.exists():
        init.write_text('"""Generated gRPC/protobuf code for npud API v1 (do not edit)."""\n')
    return protos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT)
    ns = parser.parse_args()
    protos = generate(ns.out)
    print(f"generated {len(protos)} proto file(s) into {ns.out / 'npud' / 'v1'}", file=sys.stderr)


if __name__ == "__main__":
    main()
