"""The ``npud-llm`` command, run in process on the simulated NPU (``--direct``)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from npud.llm.cli import main
from npud.llm.tiny import default_model_dir, ensure_default_model
from npud.llm.tokenizer import ByteTokenizer
from npud.llm.weights import WEIGHTS_FILE
from tests.llm.reference import ReferenceLlama


def test_make_tiny_then_run_matches_the_reference(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """make-tiny writes a model that `run --direct --json` continues exactly like the reference."""
    model_dir = tmp_path / "tiny"
    assert main(["make-tiny", str(model_dir)]) == 0
    capsys.readouterr()
    args = ["run", "--direct", "--model", str(model_dir), "--prompt", "npud says"]
    assert main([*args, "--max-tokens", "12", "--no-eos", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    prompt = ByteTokenizer().encode("npud says")
    assert out["prompt_ids"] == prompt
    assert out["token_ids"] == ReferenceLlama(model_dir).generate(prompt, 12)
    assert out["generated_tokens"] == 12
    assert out["weight_packs_uploaded"] == 3
    assert out["ttft_s"] > 0


def test_run_streams_text_and_figures(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Plain `run` prints the prompt, the continuation and a line of figures."""
    args = ["run", "--direct", "--model", str(tiny_dir), "--prompt", "Hi", "--max-tokens", "5"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert out.startswith("Hi")
    assert "TTFT" in out
    assert "inter-token p50" in out


def test_run_with_prompt_ids(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--prompt-ids feeds ids directly (the path for models with their own tokenizer)."""
    args = ["run", "--direct", "--model", str(tiny_dir), "--prompt-ids", "256,72,105"]
    assert main([*args, "--max-tokens", "3", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["prompt_ids"] == [256, 72, 105]
    assert len(out["token_ids"]) <= 3


def test_bad_model_exits_2_naming_file_and_tensor(
    tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A truncated model fails with status 2 and a message naming the file and a tensor."""
    model_dir = tmp_path / "bad"
    shutil.copytree(tiny_dir, model_dir)
    weights = model_dir / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[:-1000])
    assert main(["run", "--direct", "--model", str(model_dir), "--prompt", "x"]) == 2
    err = capsys.readouterr().err
    assert str(weights) in err
    assert "tensor 'model." in err


def test_info_lists_buffers_and_keys(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`info` shows the shape, the parameter count and a content key per weights buffer."""
    assert main(["info", "--model", str(tiny_dir)]) == 0
    out = capsys.readouterr().out
    assert "2 layers, width 128" in out
    assert out.count("sha256:") == 3


def test_default_model_is_generated_on_first_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without --model the tiny model is generated once into the cache dir, then reused."""
    monkeypatch.delenv("NPUD_LLM_MODEL", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    first = ensure_default_model()
    assert first == default_model_dir() == tmp_path / "npud" / "tiny-llama"
    stamp = (first / WEIGHTS_FILE).stat().st_mtime_ns
    assert ensure_default_model() == first
    assert (first / WEIGHTS_FILE).stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.joinpath("npud").iterdir()] == ["tiny-llama"]


def test_unreachable_daemon_is_reported(
    tmp_path: Path, tiny_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a daemon at --socket, `run` fails with status 1 and says how to proceed."""
    sock = str(tmp_path / "none.sock")
    assert main(["run", "--socket", sock, "--model", str(tiny_dir), "--prompt", "x"]) == 1
    err = capsys.readouterr().err
    assert "Unavailable" in err
    assert "is npud running?" in err


@pytest.mark.parametrize("depth", ["1", "3"])
def test_depth_option_keeps_the_ids(
    tiny_dir: Path, reference: ReferenceLlama, capsys: pytest.CaptureFixture[str], depth: str
) -> None:
    """--depth sets the decode pipeline depth (reported in --json) without changing the ids."""
    args = ["run", "--direct", "--model", str(tiny_dir), "--prompt", "deep", "--no-eos"]
    assert main([*args, "--max-tokens", "6", "--depth", depth, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["depth"] == int(depth)
    assert out["token_ids"] == reference.generate(ByteTokenizer().encode("deep"), 6)


def test_bad_depth_exits_2(tiny_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--depth 0 is a bad argument: status 2 and a message naming the depth."""
    args = ["run", "--direct", "--model", str(tiny_dir), "--prompt", "x", "--depth", "0"]
    assert main(args) == 2
    assert "depth" in capsys.readouterr().err
