"""GGUF models: the loader maps, un-permutes and keeps blocks; bad files name the culprit."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType

from npud.isa import DType
from npud.llm.direct import DirectBackend
from npud.llm.errors import ModelFileError
from npud.llm.generator import Generator
from npud.llm.gguf_model import load_gguf, permute_rows, unpermute_rows
from npud.llm.model import Model, load_model
from npud.llm.plan import plan_memory
from npud.llm.tiny import random_tensors, tiny_config
from npud.llm.tokenizer import ByteTokenizer
from tests.llm.gguf_files import write_gguf
from tests.llm.gguf_reference import GgufReference
from tests.llm.reference import ReferenceLlama

TOK = ByteTokenizer()
PROMPT = TOK.encode("The quick brown fox jumps over the lazy dog")

NEAR_TIE = 1e-3
"""Top-1/top-2 logit gap below which float32 rounding may pick either id (see test below)."""


@pytest.fixture(scope="module")
def tiny_tensors() -> dict[str, np.ndarray]:
    """The tiny model's float32 tensors (HF names)."""
    return random_tensors(tiny_config())


def _greedy(model: Model, prompt: list[int], n: int) -> list[int]:
    with Generator(model, DirectBackend.on_sim(), max_seq=96) as gen:
        return list(gen.generate(prompt, n, stop_at_eos=False).tokens)


def test_f32_gguf_generates_the_safetensors_reference_ids(
    tmp_path: Path, tiny_tensors: dict[str, np.ndarray], reference: ReferenceLlama
) -> None:
    """A GGUF written like llama.cpp's converter (Q/K rows permuted) loads to the same model:
    greedy ids equal the reference of the safetensors original, so the rows were un-permuted."""
    path = write_gguf(tmp_path / "tiny.gguf", tiny_config(), tiny_tensors)
    model = load_model(path)
    expected = tiny_config()
    assert model.config == dataclasses.replace(
        expected, rms_norm_eps=model.config.rms_norm_eps, bos_token_id=None
    )
    assert model.config.rms_norm_eps == pytest.approx(expected.rms_norm_eps)  # stored as f32
    assert not model.quantized
    q = "model.layers.0.self_attn.q_proj.weight"
    np.testing.assert_array_equal(model.tensors[q], tiny_tensors[q])
    assert _greedy(model, PROMPT, 16) == reference.generate(PROMPT, 16)


def test_permutation_round_trips() -> None:
    """Un-permuting undoes the converter's permutation, for floats and for block bytes."""
    rows = np.arange(4 * 8 * 3).reshape(4 * 8, 3)
    assert np.array_equal(unpermute_rows(permute_rows(rows, 4), 4), rows)
    assert not np.array_equal(permute_rows(rows, 4), rows)


@pytest.mark.parametrize("quant", [GGMLQuantizationType.Q8_0, GGMLQuantizationType.Q4_1])
def test_quantised_gguf_keeps_blocks_and_matches_the_reference(
    tmp_path: Path, tiny_tensors: dict[str, np.ndarray], quant: GGMLQuantizationType
) -> None:
    """Q8_0/Q4_1 matrices stay blocks on the device (weight bytes within 1.5x the file's
    tensor bytes) and greedy ids equal the independent reference (adjacent-pair RoPE on the
    file's rows, gguf's dequantisation) except at near-ties."""
    path = write_gguf(
        tmp_path / f"tiny-{quant.name}.gguf", tiny_config(), tiny_tensors, quant=quant
    )
    model = load_gguf(path)
    assert {q.dtype for q in model.quantized.values()} == {DType[quant.name]}
    plan = plan_memory(model, max_seq=96)
    assert plan.weights["model.layers.0.mlp.up_proj.weight"].dtype is DType[quant.name]
    assert plan.weight_bytes <= 1.5 * model.file_weight_bytes
    ids = _greedy(model, PROMPT, 16)
    ref = GgufReference(path)
    logits = ref.logits(PROMPT + ids[:-1])[len(PROMPT) - 1 :]
    for step, (token, row) in enumerate(zip(ids, logits, strict=True)):
        top2 = np.sort(row)[-2:]
        if token != int(np.argmax(row)):
            assert top2[1] - top2[0] < NEAR_TIE, f"step {step}: {token} vs {np.argmax(row)}"


def _truncate(src: Path, dst: Path, size: int) -> Path:
    dst.write_bytes(src.read_bytes()[:size])
    return dst


def test_truncated_gguf_names_the_file_and_the_first_lost_tensor(
    tmp_path: Path, tiny_tensors: dict[str, np.ndarray]
) -> None:
    """Cut inside the tensor data: the error names the file and a tensor whose bytes are gone;
    cut inside the header: it says where."""
    good = write_gguf(tmp_path / "good.gguf", tiny_config(), tiny_tensors)
    size = good.stat().st_size
    cut = _truncate(good, tmp_path / "cut.gguf", size - 1000)
    with pytest.raises(ModelFileError, match="truncated") as info:
        load_model(cut)
    assert info.value.path == cut
    assert info.value.tensor is not None
    assert info.value.tensor.startswith(("blk.", "output"))
    head = _truncate(good, tmp_path / "head.gguf", 200)
    with pytest.raises(ModelFileError, match=r"truncated.*(metadata|tensor)"):
        load_model(head)


def test_wrong_magic_is_refused(tmp_path: Path) -> None:
    """A file that is not GGUF but named .gguf fails saying so."""
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"GGML" + bytes(100))
    with pytest.raises(ModelFileError, match="not a GGUF file") as info:
        load_model(bad)
    assert info.value.path == bad


def test_unsupported_quantisation_names_the_tensor(
    tmp_path: Path, tiny_tensors: dict[str, np.ndarray]
) -> None:
    """A Q5_0 matrix is refused with its GGUF name and the supported kinds."""
    path = write_gguf(
        tmp_path / "q5.gguf", tiny_config(), tiny_tensors, quant=GGMLQuantizationType.Q5_0
    )
    with pytest.raises(ModelFileError, match="Q5_0 is not supported") as info:
        load_model(path)
    assert info.value.tensor is not None
    assert info.value.tensor.endswith(".weight")


def test_unsupported_architecture_names_the_key(
    tmp_path: Path, tiny_tensors: dict[str, np.ndarray]
) -> None:
    """general.architecture other than llama is refused naming the key."""
    path = write_gguf(tmp_path / "gpt2.gguf", tiny_config(), tiny_tensors, arch="gpt2")
    with pytest.raises(ModelFileError, match=r"general\.architecture.*'gpt2'"):
        load_model(path)


def test_missing_tensor_is_named(tmp_path: Path, tiny_tensors: dict[str, np.ndarray]) -> None:
    """A layer tensor absent from the file is named by its GGUF name."""
    path = write_gguf(
        tmp_path / "hole.gguf",
        tiny_config(),
        tiny_tensors,
        skip=frozenset({"blk.1.ffn_up.weight"}),
    )
    with pytest.raises(ModelFileError, match="missing") as info:
        load_model(path)
    assert info.value.tensor == "blk.1.ffn_up.weight"
