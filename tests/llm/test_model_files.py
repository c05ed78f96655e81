"""Loading models: good files load exactly; bad ones fail naming the file and the tensor."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npud.errors import InvalidArgument
from npud.llm.config import load_config
from npud.llm.errors import ModelFileError
from npud.llm.model import load_model
from npud.llm.tiny import random_tensors, tiny_config, write_model
from npud.llm.weights import WEIGHTS_FILE, read_header

Q_PROJ = "model.layers.1.self_attn.q_proj.weight"


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _rewrite(model_dir: Path, changes: dict[str, np.ndarray | None]) -> None:
    """Rewrite the model's weights with some tensors replaced (or removed when None)."""
    tensors = random_tensors(tiny_config())
    for name, value in changes.items():
        if value is None:
            del tensors[name]
        else:
            tensors[name] = value
    write_model(model_dir, tiny_config(), tensors)


def test_tiny_model_round_trips(tiny_dir: Path) -> None:
    """The tiny model loads back bit-exact, with the config it was written with."""
    model = load_model(tiny_dir)
    assert model.config == tiny_config()
    expected = random_tensors(tiny_config())
    assert set(model.tensors) == set(expected)
    for name, value in expected.items():
        np.testing.assert_array_equal(model.tensors[name], value)
    assert model.parameter_count == sum(v.size for v in expected.values())


def test_model_is_deterministic(tmp_path: Path, tiny_dir: Path) -> None:
    """Generating the tiny model twice gives byte-identical weights."""
    other = write_model(tmp_path / "again", tiny_config(), random_tensors(tiny_config()))
    assert (other / WEIGHTS_FILE).read_bytes() == (tiny_dir / WEIGHTS_FILE).read_bytes()


def test_truncated_file_names_the_tensor(tmp_path: Path, tiny_dir: Path) -> None:
    """A safetensors file cut in the data names the file and the first tensor that was lost."""
    model_dir = _copy(tiny_dir, tmp_path / "m")
    path = model_dir / WEIGHTS_FILE
    entries = sorted(read_header(path), key=lambda e: e.end)
    victim = entries[len(entries) // 2]
    data = path.read_bytes()
    path.write_bytes(data[: victim.end - 1])
    with pytest.raises(ModelFileError) as info:
        load_model(model_dir)
    assert isinstance(info.value, InvalidArgument)
    assert info.value.path == path
    assert info.value.tensor == victim.name
    assert str(path) in str(info.value)
    assert victim.name in str(info.value)
    assert "truncated" in str(info.value)


def test_truncated_header_names_the_file(tmp_path: Path, tiny_dir: Path) -> None:
    """A file cut inside its header fails naming the file."""
    model_dir = _copy(tiny_dir, tmp_path / "m")
    path = model_dir / WEIGHTS_FILE
    path.write_bytes(path.read_bytes()[:100])
    with pytest.raises(ModelFileError, match="truncated") as info:
        load_model(model_dir)
    assert info.value.path == path


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(cut=st.floats(min_value=0.0, max_value=0.999))
def test_any_truncation_is_a_model_file_error(tmp_path: Path, tiny_dir: Path, cut: float) -> None:
    """Cutting the weights file anywhere fails with ModelFileError, never another exception."""
    model_dir = tmp_path / f"m{cut}"
    shutil.copytree(tiny_dir, model_dir, dirs_exist_ok=True)
    path = model_dir / WEIGHTS_FILE
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ModelFileError) as info:
        load_model(model_dir)
    assert info.value.path == path


def test_wrong_shape_names_the_tensor(tmp_path: Path) -> None:
    """A tensor whose shape disagrees with config.json is named, with both shapes."""
    model_dir = tmp_path / "m"
    _rewrite(model_dir, {Q_PROJ: np.zeros((128, 64), np.float32)})
    with pytest.raises(ModelFileError) as info:
        load_model(model_dir)
    assert info.value.tensor == Q_PROJ
    assert info.value.path == model_dir / WEIGHTS_FILE
    assert "[128, 64]" in str(info.value)
    assert "[128, 128]" in str(info.value)


def test_missing_tensor_names_the_tensor(tmp_path: Path) -> None:
    """A tensor the architecture needs but no file holds is named."""
    model_dir = tmp_path / "m"
    _rewrite(model_dir, {"model.norm.weight": None})
    with pytest.raises(ModelFileError, match="missing") as info:
        load_model(model_dir)
    assert info.value.tensor == "model.norm.weight"
    assert info.value.path == model_dir


def test_wrong_dtype_names_the_tensor(tmp_path: Path) -> None:
    """An integer tensor where weights belong is refused, naming the tensor and its dtype."""
    model_dir = tmp_path / "m"
    _rewrite(model_dir, {Q_PROJ: np.zeros((128, 128), np.int32)})
    with pytest.raises(ModelFileError, match="I32") as info:
        load_model(model_dir)
    assert info.value.tensor == Q_PROJ


def test_corrupt_header_names_the_file(tmp_path: Path, tiny_dir: Path) -> None:
    """A header that is not JSON fails naming the file."""
    model_dir = _copy(tiny_dir, tmp_path / "m")
    path = model_dir / WEIGHTS_FILE
    data = bytearray(path.read_bytes())
    data[8:12] = b"\xff\xfe\x00{"
    path.write_bytes(bytes(data))
    with pytest.raises(ModelFileError, match="header") as info:
        load_model(model_dir)
    assert info.value.path == path


def test_duplicate_tensor_across_files_is_refused(tmp_path: Path, tiny_dir: Path) -> None:
    """The same tensor in two shards is ambiguous and refused, naming it."""
    model_dir = _copy(tiny_dir, tmp_path / "m")
    from safetensors.numpy import save_file

    save_file({"model.norm.weight": np.ones(128, np.float32)}, str(model_dir / "extra.safetensors"))
    with pytest.raises(ModelFileError, match="also present") as info:
        load_model(model_dir)
    assert info.value.tensor == "model.norm.weight"


def _write_raw_safetensors(
    path: Path, tensors: dict[str, tuple[str, tuple[int, ...], bytes]]
) -> None:
    header: dict[str, object] = {}
    blob = b""
    for name, (dtype, shape, data) in tensors.items():
        header[name] = {
            "dtype": dtype,
            "shape": list(shape),
            "data_offsets": [len(blob), len(blob) + len(data)],
        }
        blob += data
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + blob)


def test_bf16_and_f16_weights_are_widened(tmp_path: Path) -> None:
    """BF16 and F16 tensors load as the float32 values they encode."""
    tensors = random_tensors(tiny_config())
    model_dir = tmp_path / "m"
    write_model(model_dir, tiny_config(), tensors)
    norm = tensors["model.norm.weight"]
    bf16 = (norm.view(np.uint32) >> 16).astype("<u2")  # truncation: exact in BF16
    q = tensors[Q_PROJ].astype(np.float16)
    del tensors["model.norm.weight"], tensors[Q_PROJ]
    write_model(model_dir, tiny_config(), tensors)
    _write_raw_safetensors(
        model_dir / "more.safetensors",
        {
            "model.norm.weight": ("BF16", norm.shape, bf16.tobytes()),
            Q_PROJ: ("F16", q.shape, q.astype("<f2").tobytes()),
        },
    )
    model = load_model(model_dir)
    expected_norm = (bf16.astype(np.uint32) << 16).view(np.float32)
    np.testing.assert_array_equal(model.tensors["model.norm.weight"], expected_norm)
    np.testing.assert_array_equal(model.tensors[Q_PROJ], q.astype(np.float32))


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"hidden_size": None}, "missing required key 'hidden_size'"),
        ({"num_attention_heads": 3}, "not a multiple"),
        ({"num_key_value_heads": 3}, "not a multiple"),
        ({"vocab_size": "many"}, "must be an integer"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "not supported"),
    ],
)
def test_bad_config_names_the_file_and_key(
    tmp_path: Path, tiny_dir: Path, change: dict[str, object], needle: str
) -> None:
    """A config.json with a missing, ill-typed or inconsistent key fails naming file and key."""
    model_dir = _copy(tiny_dir, tmp_path / "m")
    path = model_dir / "config.json"
    raw = json.loads(path.read_text())
    for key, value in change.items():
        if value is None:
            del raw[key]
        else:
            raw[key] = value
    path.write_text(json.dumps(raw))
    with pytest.raises(ModelFileError, match=needle) as info:
        load_config(model_dir)
    assert info.value.path == path


def test_missing_model_directory_is_a_model_file_error(tmp_path: Path) -> None:
    """Pointing at a directory without a model says which file is missing."""
    with pytest.raises(ModelFileError, match=r"config\.json"):
        load_model(tmp_path)
