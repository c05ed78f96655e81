"""SmolLM2-135M-Instruct through a real npud daemon: real answers, shared weights, bad files.

Each question is asked by a separate ``npud-llm chat`` process with the model's chat template
and greedy decoding, as a user would; the second process finds the ~100 MB of quantised
weights resident and uploads none. Damaged GGUF files fail in the client, naming the file and
the tensor or key, and the daemon keeps serving.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from npud.client import Client, connect
from npud.llm.catalog import DEFAULT_MODEL, pull
from tests.llm.gguf_files import write_gguf

pytestmark = pytest.mark.slow

WEIGHTS_ON_DEVICE = 96_576_768
"""Bytes of the model's weight packs on the device (blocks as in the file, 64-byte aligned)."""


@pytest.fixture(scope="module")
def gguf_path() -> Path:
    """The model file, pulled into the model cache on first use."""
    return pull(DEFAULT_MODEL)


def _chat(socket: Path, model: Path | str, question: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "npud.llm.cli",
            "chat",
            "--socket",
            str(socket),
            "--model",
            str(model),
            "--prompt",
            question,
            "--max-tokens",
            "24",
            "--json",
            "--job-timeout",
            "120",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_capitals_through_the_daemon_with_shared_weights(daemon: Path, gguf_path: Path) -> None:
    """France -> Paris, Germany -> Berlin, each stopping at the template's end token; the
    second process uploads 0 weight bytes and reuses every pack."""
    with connect(daemon) as client:
        before = client.stats().devices[0]
    first = _chat(daemon, gguf_path, "Which city is the capital of France?")
    assert first.returncode == 0, first.stderr
    one = json.loads(first.stdout)
    assert "Paris" in one["text"], one["text"]
    assert one["stop"] == "eos"
    assert one["weight_bytes_uploaded"] == WEIGHTS_ON_DEVICE
    second = _chat(daemon, gguf_path, "Name the capital city of Germany.")
    assert second.returncode == 0, second.stderr
    two = json.loads(second.stdout)
    assert "Berlin" in two["text"], two["text"]
    assert two["stop"] == "eos"
    assert two["weight_bytes_uploaded"] == 0
    assert two["weight_packs_reused"] == one["weight_packs_uploaded"] == 31
    with connect(daemon) as client:
        after = client.stats().devices[0]
    uploaded = after.residency.uploaded_weight_bytes - before.residency.uploaded_weight_bytes
    assert uploaded == WEIGHTS_ON_DEVICE
    # within 1.5x the GGUF file (98,362,432 bytes): the weights stay quantised on the device
    assert 1.5 * gguf_path.stat().st_size >= WEIGHTS_ON_DEVICE


def _bad_files(tmp: Path, good: Path) -> dict[str, tuple[Path, str]]:
    """Damaged models and the words their errors must contain (besides the file's path)."""
    data = good.read_bytes()
    truncated = tmp / "truncated.gguf"
    truncated.write_bytes(data[: len(data) // 2])
    magic = tmp / "magic.gguf"
    magic.write_bytes(b"GGML" + data[4:4096])
    from gguf import GGMLQuantizationType

    from npud.llm.tiny import random_tensors, tiny_config

    tensors = random_tensors(tiny_config())
    q5 = write_gguf(tmp / "q5.gguf", tiny_config(), tensors, quant=GGMLQuantizationType.Q5_0)
    gpt2 = write_gguf(tmp / "gpt2.gguf", tiny_config(), tensors, arch="gpt2")
    return {
        "truncated": (truncated, "tensor 'blk."),
        "magic": (magic, "not a GGUF file"),
        "quantisation": (q5, "Q5_0 is not supported"),
        "architecture": (gpt2, "'general.architecture'"),
    }


def test_bad_gguf_fails_naming_file_and_tensor_daemon_unaffected(
    daemon: Path, gguf_path: Path, tmp_path: Path
) -> None:
    """Truncated, wrong magic, unsupported quantisation or architecture: exit 2, the file and
    the tensor or key named, no context left in the daemon, which then still answers."""
    with connect(daemon) as client:
        contexts = client.stats().devices[0].contexts
    for kind, (path, words) in _bad_files(tmp_path, gguf_path).items():
        failed = _chat(daemon, path, "Which city is the capital of France?")
        assert failed.returncode == 2, (kind, failed.stderr)
        assert str(path) in failed.stderr, kind
        assert words in failed.stderr, (kind, failed.stderr)
    client2: Client
    with connect(daemon) as client2:
        assert client2.stats().devices[0].contexts == contexts
    ok = _chat(daemon, gguf_path, "Which city is the capital of France?")
    assert ok.returncode == 0, ok.stderr
    assert "Paris" in json.loads(ok.stdout)["text"]
