"""Generation figures and the byte-level tokenizer."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npud.errors import InvalidArgument
from npud.llm.metrics import GenerationStats, percentile
from npud.llm.tokenizer import ByteTokenizer, check_ids


def test_percentile_is_nearest_rank() -> None:
    """p50 of 1..10 is 5, p99 of fewer than 100 samples is the maximum, empty is NaN."""
    samples = [float(i) for i in range(10, 0, -1)]
    assert percentile(samples, 0.50) == 5.0
    assert percentile(samples, 0.99) == 10.0
    assert percentile(samples, 0.0) == 1.0
    assert math.isnan(percentile([], 0.5))


@settings(max_examples=50)
@given(st.lists(st.floats(0, 1e3), min_size=1, max_size=50), st.floats(0, 1))
def test_percentile_is_a_sample_and_monotone(samples: list[float], fraction: float) -> None:
    """A percentile is one of the samples and never exceeds a higher percentile."""
    value = percentile(samples, fraction)
    assert value in samples
    assert value <= percentile(samples, min(1.0, fraction + 0.1))


def test_generation_stats_figures() -> None:
    """Decode rate counts the gaps after the first token; TTFT feeds the prefill rate."""
    stats = GenerationStats(
        prompt_tokens=32,
        generated_tokens=5,
        prefill_chunks=2,
        ttft_s=0.5,
        total_s=0.9,
        inter_token_s=(0.1, 0.1, 0.1, 0.1),
    )
    assert stats.decode_s == pytest.approx(0.4)
    assert stats.decode_tokens_per_s == pytest.approx(10.0)
    assert stats.prefill_tokens_per_s == pytest.approx(64.0)
    assert stats.itl_p50_s == pytest.approx(0.1)
    assert "TTFT 500.00 ms" in stats.summary()


@given(st.text(max_size=50))
def test_byte_tokenizer_round_trips(text: str) -> None:
    """Encoding then decoding any text gives it back; BOS comes first and is dropped."""
    tok = ByteTokenizer()
    ids = tok.encode(text)
    assert ids[0] == tok.bos_id
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.decode(ids) == text
    assert tok.decode([*ids, tok.eos_id]) == text


def test_check_ids_names_the_position() -> None:
    """An id outside the vocabulary is refused with its position."""
    check_ids([0, 1, 257], 258)
    with pytest.raises(InvalidArgument, match="position 1"):
        check_ids([0, -1], 258)
