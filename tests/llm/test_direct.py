"""The compiled model on the simulated NPU, in process, against the numpy reference."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from npud.errors import DeviceLost, InvalidArgument, JobFailed, TimeSliceExceeded
from npud.llm.compiler import Step, StepKind
from npud.llm.direct import DirectBackend
from npud.llm.generator import Generator, StopReason
from npud.llm.model import Model
from npud.llm.plan import GLOBAL, WeightDType, plan_memory
from npud.llm.tiny import tiny_config, write_model
from npud.llm.tokenizer import ByteTokenizer
from tests.llm.reference import ReferenceLlama

TOK = ByteTokenizer()
PROMPTS = [
    "a",  # two tokens with BOS: shorter than a chunk
    "Hello, npud!",  # 13 tokens
    "fifteen bytes!!",  # 16 tokens: exactly one chunk
    "The quick brown fox jumps over the lazy dog.",  # 45 tokens: three chunks, the last short
]


@pytest.fixture
def generator(tiny_model: Model) -> Iterator[Generator]:
    """A generator on a fresh virtual-clock simulated NPU, chunk 16, cache 128."""
    with Generator(tiny_model, DirectBackend.on_sim(), max_seq=128, chunk=16) as gen:
        yield gen


@pytest.mark.parametrize("text", PROMPTS)
@pytest.mark.parametrize("max_new", [1, 2, 24])
@pytest.mark.parametrize("depth", [1, 2])
def test_tokens_match_the_reference(
    generator: Generator, reference: ReferenceLlama, text: str, max_new: int, depth: int
) -> None:
    """Greedy ids equal the numpy reference's, token for token, across chunk boundaries,
    whether each decode step waits for the previous id (depth 1) or is pipelined (depth 2)."""
    prompt = TOK.encode(text)
    result = generator.generate(prompt, max_new, stop_at_eos=False, depth=depth)
    assert list(result.tokens) == reference.generate(prompt, max_new)
    assert result.stop is StopReason.LENGTH
    assert result.stats.prefill_chunks == -(-len(prompt) // 16)


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    prompt=st.lists(st.integers(0, 257), min_size=1, max_size=40),
    chunk=st.integers(1, 16),
    max_new=st.integers(1, 8),
    depth=st.integers(1, 4),
)
def test_any_prompt_and_chunking_match_the_reference(
    tiny_model: Model,
    reference: ReferenceLlama,
    prompt: list[int],
    chunk: int,
    max_new: int,
    depth: int,
) -> None:
    """For any prompt ids, chunk size and pipeline depth, the ids equal the reference's."""
    with Generator(tiny_model, DirectBackend.on_sim(), max_seq=64, chunk=chunk, depth=depth) as gen:
        result = gen.generate(prompt, max_new, stop_at_eos=False)
    assert list(result.tokens) == reference.generate(prompt, max_new)


def test_sequences_reuse_the_cache_without_clearing(
    generator: Generator, reference: ReferenceLlama
) -> None:
    """A long generation followed by a short one on the same buffers still matches."""
    long_prompt = TOK.encode(PROMPTS[3])
    short_prompt = TOK.encode(PROMPTS[1])
    generator.generate(long_prompt, 30, stop_at_eos=False)
    again = generator.generate(short_prompt, 10, stop_at_eos=False)
    assert list(again.tokens) == reference.generate(short_prompt, 10)
    stats = generator.statistics()
    assert stats.generations == 2
    assert stats.generated_tokens == 40


def test_greedy_output_is_not_degenerate(generator: Generator) -> None:
    """The tiny model's greedy continuations vary (not one token repeated forever)."""
    for text in PROMPTS[1:]:
        tokens = generator.generate(TOK.encode(text), 16, stop_at_eos=False).tokens
        assert len(set(tokens)) >= 6, tokens


def test_figures_are_the_modelled_device_times(generator: Generator) -> None:
    """On the virtual clock, TTFT plus inter-token gaps add up to the device's busy time."""
    result = generator.generate(TOK.encode(PROMPTS[3]), 12, stop_at_eos=False)
    stats = result.stats
    busy = generator.backend.statistics().device_busy_s
    assert stats.ttft_s > 0
    assert len(stats.inter_token_s) == 11
    assert all(gap > 0 for gap in stats.inter_token_s)
    assert stats.total_s == pytest.approx(busy, rel=1e-9)
    assert stats.ttft_s > stats.itl_p50_s  # three prefill chunks cost more than one step
    assert stats.decode_tokens_per_s == pytest.approx(11 / stats.decode_s)


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_stops_at_eos(tiny_model: Model, reference: ReferenceLlama, depth: int) -> None:
    """Generation stops after the model's EOS id (included in the output) when asked to; the
    depth - 1 steps pipelined past it are dropped, run out before generate returns, and leave
    the next sequence on the same buffers exact."""
    prompt = TOK.encode(PROMPTS[1])
    expected = reference.generate(prompt, 6)
    eos = expected[3]
    config = dataclasses.replace(tiny_model.config, eos_token_id=eos)
    model = Model(config, tiny_model.tensors)
    with Generator(model, DirectBackend.on_sim(), max_seq=64, depth=depth) as gen:
        result = gen.generate(prompt, 20)
        cut = expected.index(eos) + 1
        assert list(result.tokens) == expected[:cut]
        assert result.stop is StopReason.EOS
        assert gen.statistics().discarded == depth - 1
        backend = gen.backend.statistics()
        assert backend.steps_submitted == backend.steps_completed
        other = TOK.encode(PROMPTS[2])
        again = gen.generate(other, 10, stop_at_eos=False)
        assert list(again.tokens) == reference.generate(other, 10)


@pytest.mark.parametrize("depth", [1, 2])
def test_eos_from_the_prefill_submits_no_decode_step(
    tiny_model: Model, reference: ReferenceLlama, depth: int
) -> None:
    """When the prefill's id is EOS, generation ends there: no decode step is submitted."""
    prompt = TOK.encode(PROMPTS[1])
    config = dataclasses.replace(tiny_model.config, eos_token_id=reference.generate(prompt, 1)[0])
    with Generator(Model(config, tiny_model.tensors), DirectBackend.on_sim(), depth=depth) as gen:
        result = gen.generate(prompt, 20)
    assert result.stop is StopReason.EOS
    assert len(result.tokens) == 1
    assert gen.statistics().steps == 1  # the one prefill chunk
    assert gen.statistics().discarded == 0


@pytest.mark.parametrize("depth", [1, 2, 4])
def test_stops_when_the_cache_is_full(
    tiny_model: Model, reference: ReferenceLlama, depth: int
) -> None:
    """A generation that would overrun the KV cache ends early with CONTEXT, still exact, and
    the pipeline never submits a step past the cache (nothing to discard)."""
    prompt = TOK.encode("fourteen byte")  # 14 tokens
    with Generator(tiny_model, DirectBackend.on_sim(), max_seq=20, chunk=8, depth=depth) as gen:
        result = gen.generate(prompt, 30, stop_at_eos=False)
    assert gen.statistics().discarded == 0
    assert gen.statistics().steps == 2 + len(result.tokens) - 1  # 2 prefill chunks
    assert result.stop is StopReason.CONTEXT
    assert len(result.tokens) == 20 + 1 - len(prompt)
    assert list(result.tokens) == reference.generate(prompt, len(result.tokens))


@pytest.mark.parametrize(
    ("prompt", "needle"),
    [([], "at least one token"), ([1, 2, 258], "position 2"), (list(range(70)), "KV cache")],
)
def test_bad_prompts_are_refused(tiny_model: Model, prompt: list[int], needle: str) -> None:
    """Empty prompts, ids outside the vocabulary and prompts over the cache are refused."""
    with (
        Generator(tiny_model, DirectBackend.on_sim(), max_seq=64) as gen,
        pytest.raises(InvalidArgument, match=needle),
    ):
        gen.generate(prompt, 4)
    assert gen.statistics().steps == 0


def test_device_job_error_fails_the_generation(generator: Generator) -> None:
    """A step the device fails surfaces as JobFailed naming the step and the reason."""
    backend = generator.backend
    assert isinstance(backend, DirectBackend)
    backend.device.inject_job_error(message="parity error")  # type: ignore[attr-defined]
    with pytest.raises(JobFailed, match=r"prefill\[0:2\].*parity error"):
        generator.generate(TOK.encode("a"), 4)


def test_device_loss_fails_the_generation(generator: Generator) -> None:
    """Losing the device mid-generation raises DeviceLost instead of hanging."""
    backend = generator.backend
    assert isinstance(backend, DirectBackend)
    backend.device.lose("unplugged")  # type: ignore[attr-defined]
    with pytest.raises(DeviceLost):
        generator.generate(TOK.encode("a"), 4)


def _model_from(tmp_path: Path, tensors: dict[str, np.ndarray]) -> tuple[Model, ReferenceLlama]:
    model_dir = write_model(tmp_path / "m", tiny_config(), tensors)
    return Model(tiny_config(), tensors), ReferenceLlama(model_dir)


@pytest.mark.parametrize("dtype", [WeightDType.F16, WeightDType.I8])
def test_reduced_precision_weights_match_their_reference(
    tmp_path: Path, tiny_model: Model, dtype: WeightDType
) -> None:
    """F16 / I8 weight storage equals the reference run on the same rounded weights."""
    plan = plan_memory(tiny_model, max_seq=64, weight_dtype=dtype)
    rounded: dict[str, np.ndarray] = {}
    for name, value in tiny_model.tensors.items():
        placed = plan.weights[name]
        if placed.dtype.name == "F16":
            rounded[name] = value.astype(np.float16).astype(np.float32)
        elif placed.dtype.name == "I8":
            q = np.clip(np.rint(value / placed.scale), -127, 127).astype(np.float32)
            rounded[name] = q * np.float32(placed.scale)
        else:
            rounded[name] = value
    _, reference = _model_from(tmp_path, rounded)
    prompt = TOK.encode(PROMPTS[3])
    with Generator(tiny_model, DirectBackend.on_sim(), max_seq=64, weight_dtype=dtype) as gen:
        result = gen.generate(prompt, 12, stop_at_eos=False)
        assert gen.plan.weight_bytes < plan_memory(tiny_model).weight_bytes
    assert list(result.tokens) == reference.generate(prompt, 12)
    assert GLOBAL in {spec.name for spec in gen.plan.buffers}


def test_process_mode_matches_the_reference(tiny_model: Model, reference: ReferenceLlama) -> None:
    """The device process (real time, shared memory) produces the reference's ids too."""
    prompt = TOK.encode(PROMPTS[3])
    with Generator(tiny_model, DirectBackend.on_sim(mode="process"), max_seq=64) as gen:
        result = gen.generate(prompt, 8, stop_at_eos=False)
    assert list(result.tokens) == reference.generate(prompt, 8)


class _SliceLimited:
    """A real backend that refuses prefill chunks over ``limit`` tokens, as npud's time slice."""

    def __init__(self, inner: DirectBackend, limit: int) -> None:
        self.inner = inner
        self.limit = limit
        self.refused = 0

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    def submit(self, steps: list[Step]) -> object:
        too_big = [s for s in steps if s.kind is StepKind.PREFILL and s.n_tokens > self.limit]
        if too_big:
            self.refused += 1
            return TimeSliceExceeded(f"{too_big[0].label}: over the time slice")
        return self.inner.submit(steps)

    def wait(self, ticket: object) -> bytes | None:
        if isinstance(ticket, TimeSliceExceeded):
            raise ticket
        return self.inner.wait(ticket)


def test_time_slice_refusals_shrink_the_chunks(
    tiny_model: Model, reference: ReferenceLlama
) -> None:
    """When npud refuses chunks over its time slice the generator halves them; still exact."""
    backend = _SliceLimited(DirectBackend.on_sim(), limit=5)
    prompt = TOK.encode(PROMPTS[3])
    with Generator(tiny_model, backend, max_seq=64, chunk=16) as gen:  # type: ignore[arg-type]
        result = gen.generate(prompt, 6, stop_at_eos=False)
        again = gen.generate(prompt, 2, stop_at_eos=False)
    assert list(result.tokens) == reference.generate(prompt, 6)
    assert list(again.tokens) == reference.generate(prompt, 2)
    assert backend.refused == 2  # 16 and 8 refused, 4 accepted and kept for the second prompt
    assert gen.statistics().chunk == 4
    assert gen.statistics().rechunks == 2
    assert result.stats.prefill_chunks == 12
