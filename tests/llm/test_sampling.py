"""Greedy and sampled picks from the device's top candidates."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npud.errors import InvalidArgument
from npud.llm.sampling import MAX_CANDIDATES, Sampler, SamplingParams, top_candidates


def _logits(seed: int, n: int = 1000) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 3, n).astype(np.float32)


def test_greedy_is_the_default_and_picks_the_highest_lowest_id_on_ties() -> None:
    """Without parameters the pick is the argmax; equal logits go to the lower id."""
    logits = np.array([1.0, 5.0, 3.0, 5.0], dtype=np.float32)
    sampler = Sampler()
    assert SamplingParams().greedy
    assert sampler.pick_from_logits(logits) == 1
    assert sampler.statistics().greedy == 1
    assert sampler.statistics().draws == 0


def test_top_candidates_sorted_highest_first_ties_to_lower_id() -> None:
    """The candidate order is by logit descending, then id ascending."""
    values, ids = top_candidates(np.array([2.0, 7.0, 2.0, 9.0, 7.0]), 4)
    assert ids.tolist() == [3, 1, 4, 0]
    assert values.tolist() == [9.0, 7.0, 7.0, 2.0]


def test_same_seed_same_ids_different_seed_differs() -> None:
    """Two samplers with one seed draw the same sequence; another seed draws another."""
    params = SamplingParams(temperature=1.0, top_p=0.95, seed=42)
    rows = [_logits(i) for i in range(40)]
    a = [Sampler(params).pick_from_logits(r) for r in rows]
    s1, s2 = Sampler(params), Sampler(params)
    seq1 = [s1.pick_from_logits(r) for r in rows]
    seq2 = [s2.pick_from_logits(r) for r in rows]
    other = Sampler(SamplingParams(temperature=1.0, top_p=0.95, seed=43))
    seq3 = [other.pick_from_logits(r) for r in rows]
    assert seq1 == seq2
    assert seq1 != seq3
    assert len(set(a)) > 1  # a fresh sampler per row still draws, not always the argmax


def test_top_k_limits_the_draw_to_the_k_best() -> None:
    """With top_k=3 every draw is one of the three highest logits."""
    logits = _logits(7)
    best3 = set(top_candidates(logits, 3)[1].tolist())
    sampler = Sampler(SamplingParams(temperature=5.0, top_k=3, seed=1))
    draws = {sampler.pick_from_logits(logits) for _ in range(200)}
    assert draws <= best3
    assert len(draws) == 3


def test_top_p_keeps_the_smallest_prefix_reaching_p() -> None:
    """Probabilities 0.5/0.3/0.2: top_p 0.6 draws only the first two, 0.5 only the first."""
    values = np.log(np.array([0.5, 0.3, 0.2]))
    ids = np.array([10, 11, 12])
    two = Sampler(SamplingParams(temperature=1.0, top_p=0.6, seed=3))
    assert {two.pick(values, ids) for _ in range(300)} == {10, 11}
    one = Sampler(SamplingParams(temperature=1.0, top_p=0.5, seed=3))
    assert {one.pick(values, ids) for _ in range(50)} == {10}


def test_draw_frequencies_follow_the_softmax() -> None:
    """At temperature 1 the empirical frequencies match the softmax within sampling error."""
    probs = np.array([0.6, 0.25, 0.1, 0.05])
    sampler = Sampler(SamplingParams(temperature=1.0, seed=11))
    n = 4000
    counts = np.bincount([sampler.pick(np.log(probs), np.arange(4)) for _ in range(n)], None, 4)
    # 5 standard deviations of a binomial proportion at n=4000
    assert np.all(np.abs(counts / n - probs) < 5 * np.sqrt(probs * (1 - probs) / n))


@settings(max_examples=50, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.floats(0.05, 3.0),
    st.integers(0, MAX_CANDIDATES),
    st.floats(0.01, 1.0),
)
def test_draws_are_candidates_within_top_k(seed: int, temp: float, k: int, p: float) -> None:
    """Every draw is a candidate id, among the first top_k (when set)."""
    logits = _logits(seed % 1000, 200)
    values, ids = top_candidates(logits, MAX_CANDIDATES)
    sampler = Sampler(SamplingParams(temperature=temp, top_k=k, top_p=p, seed=seed))
    token = sampler.pick(values, ids)
    allowed = ids[: k or MAX_CANDIDATES].tolist()
    assert token in allowed


@pytest.mark.parametrize(
    "kwargs",
    [
        {"temperature": -0.1},
        {"temperature": float("nan")},
        {"temperature": 1e9},
        {"top_k": -1},
        {"top_k": MAX_CANDIDATES + 1},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"seed": -1},
        {"seed": 1.5},
    ],
)
def test_bad_parameters_are_refused(kwargs: dict[str, object]) -> None:
    """A parameter outside its range is an InvalidArgument naming it."""
    with pytest.raises(InvalidArgument, match=next(iter(kwargs))):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


def test_mismatched_candidates_are_refused() -> None:
    """Values and ids of different lengths cannot be drawn from."""
    with pytest.raises(InvalidArgument, match="matching candidates"):
        Sampler(SamplingParams(temperature=1.0)).pick([1.0, 2.0], [1])
