"""Continuous batching through a real npud: batched sequences get exactly what they get alone."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest

import npud.client.aio as aio
from npud.client import BufferUsage
from npud.errors import InvalidArgument, QueueFull
from npud.llm.batcher import Batcher, BatchSequence, Finish, Request, Tier
from npud.llm.model import Model
from npud.llm.sampling import Sampler, SamplingParams
from npud.llm.tokenizer import ByteTokenizer
from tests.cli.harness import start_daemon
from tests.llm.reference import ReferenceLlama

pytestmark = pytest.mark.slow

TOK = ByteTokenizer()
PROMPTS = [
    "Hi",
    "The quick brown fox jumps over the lazy dog.",  # three prefill chunks
    "npud",
    "A longer prompt, so that its positions differ from the others by a lot.",
    "x",
    "Batching changes no output",
    "0123456789abcdef",  # exactly one chunk
    "seven",
]
T = TypeVar("T")


@pytest.fixture(scope="module")
def socket(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A daemon on a simulated NPU; yields its socket."""
    daemon = start_daemon(tmp_path_factory.mktemp("npud"))
    try:
        yield daemon.socket
    finally:
        daemon.stop()


def run(
    socket: Path, model: Model, body: Callable[[Batcher], Awaitable[T]], **options: object
) -> T:
    """Run ``body`` against a started batcher on its own client; close both afterwards."""

    async def main() -> T:
        async with aio.connect(socket) as client:
            batcher = Batcher(client, model, max_seq=96, job_timeout_s=10.0, **options)  # type: ignore[arg-type]
            await batcher.start()
            try:
                return await asyncio.wait_for(body(batcher), 120)
            finally:
                await batcher.close()

    return asyncio.run(main())


async def collect(seq: BatchSequence) -> list[int]:
    return [token async for token in seq.tokens()]


async def generate(batcher: Batcher, request: Request) -> list[int]:
    return await collect(await batcher.submit(request))


async def waiting_reaches(batcher: Batcher, n: int, timeout_s: float = 30.0) -> None:
    """Let the loop run until ``n`` requests wait for a slot (a readiness wait)."""
    async with asyncio.timeout(timeout_s):
        while batcher.statistics().waiting != n:
            await asyncio.sleep(0.001)


def greedy(prompt: str, n: int, **kw: object) -> Request:
    return Request(tuple(TOK.encode(prompt)), n, stop_at_eos=False, **kw)  # type: ignore[arg-type]


def test_batched_sequences_equal_each_alone_and_the_reference(
    socket: Path, tiny_model: Model, reference: ReferenceLlama
) -> None:
    """Eight sequences of different prompt lengths and budgets, submitted at once, share decode
    steps (joining and leaving at different steps), and each gets token for token what it gets
    alone, which is the reference's greedy continuation."""
    requests = [greedy(p, 6 + 3 * i) for i, p in enumerate(PROMPTS)]

    async def together(batcher: Batcher) -> tuple[list[list[int]], float]:
        out = await asyncio.gather(*(generate(batcher, r) for r in requests))
        return out, batcher.statistics().mean_batch

    async def alone(batcher: Batcher) -> list[list[int]]:
        return [await generate(batcher, r) for r in requests]

    batched, mean_batch = run(socket, tiny_model, together, max_batch=8)
    single = run(socket, tiny_model, alone, max_batch=8)
    assert mean_batch > 2, "the sequences did not share decode steps"
    for request, got, solo in zip(requests, batched, single, strict=True):
        expected = reference.generate(list(request.prompt), request.max_new_tokens)
        assert got == solo == expected


def test_sampled_rows_are_reproducible_and_batch_independent(
    socket: Path, tiny_model: Model, reference: ReferenceLlama
) -> None:
    """A sampled sequence draws from the device's TOPK candidates: the same seed gives the
    same ids alone and beside greedy sequences, and those ids are what the same sampler
    draws from the reference's whole logits at every position."""
    params = SamplingParams(temperature=1.0, top_p=0.95, seed=7)

    async def alone(batcher: Batcher) -> list[int]:
        return await generate(batcher, greedy("sample me", 12, sampler=Sampler(params)))

    async def mixed(batcher: Batcher) -> list[int]:
        others = [generate(batcher, greedy(p, 12)) for p in PROMPTS[:3]]
        mine = generate(batcher, greedy("sample me", 12, sampler=Sampler(params)))
        results = await asyncio.gather(mine, *others)
        return results[0]

    first = run(socket, tiny_model, alone)
    assert len(first) == 12
    assert run(socket, tiny_model, mixed) == first
    host = Sampler(params)
    ids = TOK.encode("sample me")
    expected = []
    for _ in range(12):
        expected.append(host.pick_from_logits(reference.logits(ids + expected)[-1]))
    assert first == expected


def test_cancel_mid_decode_frees_the_sequence_state(socket: Path, tiny_model: Model) -> None:
    """A sequence cancelled while decoding stops producing ids, and once its steps in flight
    end its two state buffers are released: the context holds what it held before."""

    async def held(batcher: Batcher) -> int:
        # the submit stream keeps its command buffers for reuse: the sequences' are the rest
        assert batcher.context_id is not None
        buffers = await batcher.client.buffers(batcher.context_id)
        return sum(1 for b in buffers if b.usage is not BufferUsage.COMMAND)

    async def body(batcher: Batcher) -> tuple[int, int, int, list[int]]:
        assert batcher.context_id is not None
        before = await held(batcher)
        keep = asyncio.ensure_future(generate(batcher, greedy("stay", 20)))
        seq = await batcher.submit(greedy("leave early", 200))
        got = []
        async for token in seq.tokens():
            got.append(token)
            if len(got) == 3:
                seq.cancel()
        during = await held(batcher)
        await keep
        for _ in range(200):  # the release is asynchronous: let it finish
            if await held(batcher) == before:
                break
            await asyncio.sleep(0.01)
        after = await held(batcher)
        assert seq.finish is Finish.CANCELLED
        return before, during, after, got

    before, during, after, got = run(socket, tiny_model, body)
    assert len(got) == 3
    assert during >= before
    assert after == before


def test_bad_requests_are_refused_before_anything_is_queued(
    socket: Path, tiny_model: Model
) -> None:
    """An empty prompt, max_new_tokens < 1, a prompt longer than the context and an id
    outside the vocabulary are InvalidArgument; a full waiting room is QueueFull."""

    async def body(batcher: Batcher) -> None:
        for bad, match in (
            (Request((), 4), "at least one token"),
            (Request((1, 2), 0), "max_new_tokens"),
            (Request(tuple([65] * 97), 4), "context holds 96"),
            (Request((65, 9999), 4), "outside the vocabulary"),
        ):
            with pytest.raises(InvalidArgument, match=match):
                await batcher.submit(bad)
        assert batcher.statistics().sequences == 0

    run(socket, tiny_model, body)

    async def crowded(batcher: Batcher) -> None:
        first = await batcher.submit(greedy("one", 50))
        waiting = asyncio.ensure_future(batcher.submit(greedy("two", 5)))
        await waiting_reaches(batcher, 1)
        with pytest.raises(QueueFull, match="wait for one of 1"):
            await batcher.submit(greedy("three", 5))
        first.cancel()
        second = await waiting
        assert len(await collect(second)) == 5

    run(socket, tiny_model, crowded, max_batch=1, max_waiting=1)


def test_interactive_prompts_go_before_batch_and_users_take_turns(
    socket: Path, tiny_model: Model
) -> None:
    """With one slot, a waiting interactive request is admitted before batch requests that
    arrived earlier, and two users' requests alternate."""
    order: list[str] = []

    async def body(batcher: Batcher) -> None:
        blocker = await batcher.submit(greedy("hold", 4))

        async def one(name: str, tier: Tier, user: str) -> None:
            seq = await batcher.submit(greedy(name, 2, tier=tier, user=user))
            order.append(name)
            await collect(seq)

        tasks = [asyncio.ensure_future(one(f"b{i}", Tier.BATCH, "bulk")) for i in range(2)]
        await waiting_reaches(batcher, 2)
        tasks += [asyncio.ensure_future(one(f"a{i}", Tier.INTERACTIVE, "alice")) for i in (1, 2)]
        tasks += [asyncio.ensure_future(one(f"c{i}", Tier.INTERACTIVE, "carol")) for i in (1, 2)]
        await waiting_reaches(batcher, 6)
        await collect(blocker)
        await asyncio.gather(*tasks)

    run(socket, tiny_model, body, max_batch=1)
    assert order == ["a1", "c1", "a2", "c2", "b0", "b1"]


def test_the_weights_are_sealed_and_shared_with_a_single_sequence_client(
    socket: Path, tiny_model: Model
) -> None:
    """The batcher uploads the weight packs sealed (npud checked them against their content
    keys), and a single-sequence client of the same model then uploads nothing."""
    from npud.llm.daemon import DaemonBackend
    from npud.llm.generator import Generator

    async def body(batcher: Batcher) -> list[bool]:
        assert batcher.context_id is not None
        held = await batcher.client.buffers(batcher.context_id)
        return [b.sealed for b in held if b.key]

    sealed = run(socket, tiny_model, body)
    assert sealed
    assert all(sealed)
    backend = DaemonBackend(socket_path=socket, job_timeout_s=10.0)
    with Generator(tiny_model, backend, max_seq=96) as gen:
        stats = backend.statistics()
        assert stats.weight_bytes_uploaded == 0
        assert stats.weight_packs_reused == len(list(gen.plan.packs()))
