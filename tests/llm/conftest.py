"""Fixtures of the LLM tests: the tiny model written once per session, and its reference."""

from __future__ import annotations

from pathlib import Path

import pytest

from npud.llm.model import Model, load_model
from npud.llm.tiny import make_tiny
from tests.llm.reference import ReferenceLlama


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny demo model on disk (config.json + model.safetensors); do not modify it."""
    return make_tiny(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_model(tiny_dir: Path) -> Model:
    """The tiny model loaded by npud.llm."""
    return load_model(tiny_dir)


@pytest.fixture(scope="session")
def reference(tiny_dir: Path) -> ReferenceLlama:
    """The independent numpy reference of the tiny model."""
    return ReferenceLlama(tiny_dir)
