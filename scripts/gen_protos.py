"""Regenerate the Python code for npud's .proto files.

The .proto files live under protos/npud/v1/ with ``package npud.v1``; with ``-I protos`` the
generated modules import each other as ``npud.v1.x_pb2``, which is exactly where they are
written (the package directory npud/v1/), so no import rewriting is needed. The kubelet's
device plugin API (protos/npud/plugin/v1beta1/, ``package v1beta1`` as the kubelet requires)
is generated the same way into npud/plugin/v1beta1/.

Usage: python scripts/gen_protos.py [--out DIR]   (default: the repository root)
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = ROOT / "protos"
PACKAGES = {
    "npud/v1": "Generated gRPC/protobuf code for npud API v1 (do not edit).",
    "npud/plugin/v1beta1": "Generated code for the kubelet's device plugin API (do not edit).",
}
"""Proto source directories (under protos/, mirrored under the output) and their package doc."""


def generate(out: Path) -> list[Path]:
    """Run protoc (grpcio-tools) with mypy-protobuf stubs; return the .proto files compiled."""
    from grpc_tools import protoc  # the dev dependency, pinned in pyproject

    # protoc finds the mypy-protobuf plugins on PATH; they sit beside this interpreter.
    bindir = str(Path(sys.executable).parent)
    os.environ["PATH"] = bindir + os.pathsep + os.environ.get("PATH", "")

    protos = []
    for package, doc in PACKAGES.items():
        found = sorted((PROTO_ROOT / package).glob("*.proto"))
        if not found:
            raise SystemExit(f"no .proto files under protos/{package}")
        protos += found
        target = out / package
        target.mkdir(parents=True, exist_ok=True)
        for old in target.glob("*_pb2*.py*"):
            old.unlink()
        init = target / "__init__.py"
        if not init.exists():
            init.write_text(f'"""{doc}"""\n')
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
    return protos


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT)
    ns = parser.parse_args()
    protos = generate(ns.out)
    places = ", ".join(str(ns.out / package) for package in PACKAGES)
    print(f"generated {len(protos)} proto file(s) into {places}", file=sys.stderr)


if __name__ == "__main__":
    main()
