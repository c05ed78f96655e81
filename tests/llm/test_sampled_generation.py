"""Sampled generation on the device: TOPK candidates back, the host's draw written in."""

from __future__ import annotations

import numpy as np

from npud.llm.compiler import Rows
from npud.llm.direct import DirectBackend
from npud.llm.generator import Generator
from npud.llm.model import Model
from npud.llm.sampling import SamplingParams
from npud.llm.tokenizer import ByteTokenizer
from tests.llm.reference import ReferenceLlama

TOK = ByteTokenizer()
PROMPT = TOK.encode("Sampling on an NPU, one step at a time")


def test_same_seed_same_ids_and_each_draw_is_a_top_k_candidate(
    tiny_model: Model, reference: ReferenceLlama
) -> None:
    """Two generations with one seed give the same ids, another seed others; every drawn id is
    among the reference's top_k logits at its position, given the ids drawn before it."""
    params = SamplingParams(temperature=1.5, top_k=8, seed=7)
    with Generator(tiny_model, DirectBackend.on_sim(), max_seq=96) as gen:
        one = gen.generate(PROMPT, 20, stop_at_eos=False, sampling=params).tokens
        two = gen.generate(PROMPT, 20, stop_at_eos=False, sampling=params).tokens
        other = gen.generate(
            PROMPT, 20, stop_at_eos=False, sampling=SamplingParams(temperature=1.5, top_k=8, seed=8)
        ).tokens
        greedy = gen.generate(PROMPT, 20, stop_at_eos=False).tokens
    assert one == two
    assert one != other
    assert one != greedy
    logits = reference.logits(PROMPT + list(one[:-1]))[len(PROMPT) - 1 :]
    for token, row in zip(one, logits, strict=True):
        assert token in np.argsort(-row)[:8]


def test_temperature_zero_is_the_greedy_path(tiny_model: Model, reference: ReferenceLlama) -> None:
    """Greedy parameters (temperature 0, or top_k 1) give exactly the reference's greedy ids."""
    with Generator(tiny_model, DirectBackend.on_sim(), max_seq=96) as gen:
        for params in (SamplingParams(), SamplingParams(temperature=0.7, top_k=1, seed=3)):
            ids = gen.generate(PROMPT, 12, stop_at_eos=False, sampling=params).tokens
            assert list(ids) == reference.generate(PROMPT, 12)


def test_a_sampling_step_reads_back_only_its_candidates(tiny_model: Model) -> None:
    """A decode step that samples reads back 8 bytes per candidate, never a row of logits."""
    with Generator(tiny_model, DirectBackend.on_sim(), max_seq=96) as gen:
        step = gen.compiler.decode(5, top=64)
        assert step.readback is not None
        assert step.readback.size == 64 * 8 < tiny_model.config.vocab_size * 4
        scored = gen.compiler.step(0, 4, emit_token=True, kind=step.kind, top=2, rows=Rows.ALL)
        assert scored.readback is not None
        assert scored.readback.size == 4 * 2 * 8
