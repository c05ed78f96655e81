"""Kubernetes' own device plugin proto, from Debian, compiled at test time.

The file is never copied into the repository: it is found where Debian's package
golang-github-kubernetes-kubelet-dev installs it (or where scripts/test.sh unpacked that package
under .cache/debian on releases that do not ship it), and compiled into a temporary directory
with grpc_tools. It imports gogo.proto (Debian's golang-gogoprotobuf-dev) for Go-only options.

Python cannot import packages named ``k8s.io`` or ``github.com``; protoc's Python generator
writes those trees as ``k8s/io/...`` and ``github/com/...``, which is where the generated imports
(``from k8s.io.kubelet... import``) resolve.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from google.protobuf import descriptor_pb2

from tests import ROOT
from tests.tools import file as need_file

RELATIVE = Path("k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1/api.proto")
GOCODE = Path("usr/share/gocode/src")
GOGO = Path("/") / GOCODE / "github.com/gogo/protobuf/gogoproto/gogo.proto"


def source_root() -> Path:
    """The gocode directory holding Kubernetes' api.proto (skips, or fails under CI, without)."""
    for root in (Path("/") / GOCODE, ROOT / ".cache" / "debian" / GOCODE):
        if (root / RELATIVE).is_file():
            return root
    need_file(Path("/") / GOCODE / RELATIVE, "golang-github-kubernetes-kubelet-dev")
    raise AssertionError("unreachable")


def _protoc(*args: str) -> None:
    from grpc_tools import protoc

    well_known = files("grpc_tools") / "_proto"
    need_file(GOGO, "golang-gogoprotobuf-dev")
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{source_root()}",
            f"-I{GOGO.parents[4]}",
            f"-I{well_known}",
            *args,
        ]
    )
    assert rc == 0, f"protoc failed on Kubernetes' proto ({rc})"


def descriptor() -> descriptor_pb2.FileDescriptorProto:
    """Kubernetes' api.proto as a FileDescriptorProto (nothing is imported into a pool)."""
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "k8s.pb"
        _protoc(f"--descriptor_set_out={out}", str(RELATIVE))
        fds = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    (fd,) = [f for f in fds.file if f.name == str(RELATIVE)]
    return fd


def build_python(out: Path) -> Path:
    """Python modules for Kubernetes' proto (and gogo's) under ``out``, importable with ``out``
    on sys.path as ``k8s.io.kubelet.pkg.apis.deviceplugin.v1beta1.api_pb2``."""
    out.mkdir(parents=True, exist_ok=True)
    _protoc(
        f"--python_out={out}",
        f"--grpc_python_out={out}",
        str(RELATIVE),
        str(GOGO.relative_to(GOGO.parents[4])),
    )
    assert (out / "k8s" / "io" / RELATIVE.parent.relative_to("k8s.io") / "api_pb2.py").is_file()
    return out
