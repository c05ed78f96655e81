"""Greedy generation: prefill a prompt in chunks, then one decode step per token.

A :class:`Generator` ties a model, its memory plan, the compiler and a backend together. Token
ids live on the device (the plan's ``tokens`` buffer): the prompt is written there once, every
step's ARGMAX writes the next id after its last position, and the next decode step embeds it
from there. The host reads each id back only to report it (and to stop at EOS), so one round
trip per token suffices and nothing is uploaded per token.

Decode is pipelined: up to ``depth`` steps (default 2) are in flight at once, and the host
compiles the next step while the device runs the current one. Step p+1 may be submitted before
step p's id is known because the id never travels through the host: step p's ARGMAX writes it
to ``tokens[p+1]`` on the device, and step p+1 EMBEDs it from there, after step p on the same
in-order queue (one engine's FIFO for the direct backend, an in-order LATENCY queue in npud).
The host's readback of each id still arrives in order and still decides when to stop; the at
most ``depth - 1`` steps already submitted past EOS are let run out and their ids dropped
(see :meth:`Generator.generate` for why that is exact).
"""

from __future__ import annotations

import enum
import itertools
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from npud.errors import InvalidArgument, TimeSliceExceeded
from npud.llm.backend import Backend
from npud.llm.compiler import Compiler, Step
from npud.llm.metrics import GenerationStats
from npud.llm.model import Model
from npud.llm.plan import TOKENS, MemoryPlan, WeightDType, plan_memory
from npud.llm.sampling import GREEDY, Sampler, SamplingParams
from npud.llm.tokenizer import check_ids


class StopReason(enum.StrEnum):
    """Why a generation ended."""

    LENGTH = "length"  # max_new_tokens reached
    EOS = "eos"  # the model produced its end-of-sequence id
    CONTEXT = "context"  # the KV cache is full


@dataclass(frozen=True, slots=True)
class Generation:
    """The result of one :meth:`Generator.generate` call: ids (EOS included) and figures."""

    prompt: tuple[int, ...]
    tokens: tuple[int, ...]
    stop: StopReason
    stats: GenerationStats


@dataclass(frozen=True, slots=True)
class GeneratorStatistics:
    """Totals over a generator's life."""

    generations: int
    prompt_tokens: int
    generated_tokens: int
    steps: int
    chunk: int  # the prefill chunk now in use
    rechunks: int  # times npud's time slice made the generator halve its chunk
    depth: int  # decode steps kept in flight
    discarded: int  # decode steps run past a stop (EOS) or behind a failure, ids dropped


DEFAULT_DEPTH = 2
"""Decode steps in flight by default: one running while the next is already queued behind it."""


def _check_depth(depth: int) -> int:
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise InvalidArgument(f"the pipeline depth must be an integer >= 1, got {depth!r}")
    return depth


def _token(readback: bytes | None) -> int:
    if readback is None or len(readback) != 4:
        raise InvalidArgument(f"expected a 4-byte token id from the device, got {readback!r}")
    return int.from_bytes(readback, "little", signed=True)


class Generator:
    """Generates tokens from one model on one backend, one sequence at a time.

    The generator owns the backend's buffers from construction until :meth:`close` (or the
    end of a ``with`` block); the caller keeps owning the model and the backend object.
    """

    def __init__(
        self,
        model: Model,
        backend: Backend[Any],
        *,
        max_seq: int | None = None,
        chunk: int = 16,
        weight_dtype: WeightDType | str = WeightDType.NATIVE,
        depth: int = DEFAULT_DEPTH,
    ) -> None:
        """Plan ``model``'s memory and prepare ``backend`` (weights uploaded or attached).

        ``depth`` is how many decode steps are kept in flight (1: submit the next step only
        once the previous id is back; 2 hides one host round trip behind a step's device time).

        Raises:
            InvalidArgument: a bad ``max_seq``, ``chunk`` or ``depth``.
            ResourceExhausted: the device cannot hold the model.
            Unavailable: the device or daemon is gone.
        """
        self.depth = _check_depth(depth)
        self.model = model
        self.backend = backend
        self.plan: MemoryPlan = plan_memory(
            model, max_seq=max_seq, chunk=chunk, weight_dtype=weight_dtype
        )
        self.compiler = Compiler(model.config, self.plan)
        self._generations = 0
        self._prompt_tokens = 0
        self._generated = 0
        self._steps = 0
        self._rechunks = 0
        self._discarded = 0
        self.chunk = self.plan.chunk  # halved when npud refuses a chunk over its time slice
        backend.prepare(self.plan)

    def __enter__(self) -> Generator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the backend's buffers. Idempotent."""
        self.backend.close()

    def generate(
        self,
        prompt: Sequence[int],
        max_new_tokens: int,
        *,
        stop_at_eos: bool = True,
        on_token: Callable[[int], None] | None = None,
        depth: int | None = None,
        sampling: SamplingParams = GREEDY,
    ) -> Generation:
        """Continue ``prompt`` by up to ``max_new_tokens`` ids, greedily by default.

        Each call starts a fresh sequence at position 0 (the KV cache is overwritten in place;
        attention never reads positions beyond the current one, so no clearing is needed).
        ``on_token`` is called with each id as soon as it is known, in order. ``depth``
        overrides the generator's pipeline depth for this call. ``sampling`` other than
        greedy draws each id on the host from the step's top candidates (see
        :mod:`npud.llm.sampling`) and writes it back to the device before the next step, so
        such a generation runs at depth 1.

        Raises:
            InvalidArgument: an empty prompt, an id outside the vocabulary, a prompt longer
                than the KV cache, ``max_new_tokens`` < 1, or a bad ``depth``.
            JobFailed: a step failed on the device (the first failure is raised; steps in
                flight behind it are cancelled and have ended when this raises).
            TimeSliceExceeded: npud refused even one-token prefill chunks.
            Unavailable: the device or daemon went away.
        """
        cfg, plan = self.model.config, self.plan
        depth = self.depth if depth is None else _check_depth(depth)
        if max_new_tokens < 1:
            raise InvalidArgument(f"max_new_tokens must be at least 1, got {max_new_tokens}")
        if not prompt:
            raise InvalidArgument("the prompt must hold at least one token")
        check_ids(prompt, cfg.vocab_size)
        n_prompt = len(prompt)
        if n_prompt > plan.max_seq:
            raise InvalidArgument(
                f"the prompt has {n_prompt} tokens but the KV cache holds {plan.max_seq}"
            )
        # The token after position p is written to tokens[p + 1]; the last position the cache
        # holds is max_seq - 1, so at most max_seq + 1 - n_prompt new ids fit.
        budget = min(max_new_tokens, plan.max_seq + 1 - n_prompt)
        eos = cfg.eos_token_id if stop_at_eos else None

        start = self.backend.now()
        self.backend.write(TOKENS, 0, np.asarray(prompt, dtype="<i4").tobytes())
        sampler = None if sampling.greedy else Sampler(sampling)
        top = 0 if sampler is None else sampling.candidates
        first, chunks = self._prefill(n_prompt, top=top)
        if sampler is not None:
            first = self._draw(sampler, first, n_prompt)
        tokens = [first]
        times = [self.backend.now()]
        if on_token is not None:
            on_token(first)
        if sampler is not None and first != eos:
            self._decode_sampled(
                tokens,
                times,
                sampler,
                position=n_prompt,
                steps=budget - 1,
                eos=eos,
                on_token=on_token,
            )
        elif first != eos:
            self._decode(
                tokens,
                times,
                position=n_prompt,
                steps=budget - 1,
                depth=depth,
                eos=eos,
                on_token=on_token,
            )

        if eos is not None and tokens[-1] == eos:
            stop = StopReason.EOS
        elif len(tokens) < max_new_tokens:
            stop = StopReason.CONTEXT
        else:
            stop = StopReason.LENGTH
        stats = GenerationStats(
            prompt_tokens=n_prompt,
            generated_tokens=len(tokens),
            prefill_chunks=len(chunks),
            ttft_s=times[0] - start,
            total_s=times[-1] - start,
            inter_token_s=tuple(b - a for a, b in itertools.pairwise(times)),
        )
        self._generations += 1
        self._prompt_tokens += n_prompt
        self._generated += len(tokens)
        return Generation(tuple(prompt), tuple(tokens), stop, stats)

    def _decode(
        self,
        tokens: list[int],
        times: list[float],
        *,
        position: int,
        steps: int,
        depth: int,
        eos: int | None,
        on_token: Callable[[int], None] | None,
    ) -> None:
        # Why pipelining is exact: step p reads only device state that earlier steps wrote
        # (its input id tokens[p], which step p-1's ARGMAX wrote, and KV positions < p) and
        # the in-order queue runs it after them, so whether the host has seen step p-1's id
        # when it submits step p changes nothing on the device. The host decides to stop from
        # the ids as they come back in order; steps already submitted past the stop (at most
        # depth - 1, only for EOS: the length budget is known up front and never overrun)
        # run to completion and their ids are dropped. They wrote KV entries and tokens[] at
        # positions past the end of this sequence, which nothing reads: every generation
        # rewrites positions from 0 before attending to them, and nothing reuses a cache
        # across generations. Waiting for them before returning keeps the next prompt's write
        # from racing a step still in flight.
        #
        # Why the failure path cancels: an in-order queue is not poisoned by a failure, so the
        # step behind a failed one would run on an id the failed step never wrote. Its result
        # is meaningless; it is cancelled (or aborted) and waited for, and the first failure
        # is what the caller sees.
        inflight: deque[Any] = deque()
        submitted = 0
        upcoming: Step | None = self.compiler.decode(position) if steps > 0 else None
        try:
            while len(tokens) <= steps and tokens[-1] != eos:
                while upcoming is not None and len(inflight) < depth:
                    inflight.append(self.backend.submit([upcoming]))
                    self._steps += 1
                    submitted += 1
                    position += 1
                    # compiled while the device runs what was just submitted
                    upcoming = self.compiler.decode(position) if submitted < steps else None
                token = _token(self.backend.wait(inflight.popleft()))
                tokens.append(token)
                times.append(self.backend.now())
                if on_token is not None:
                    on_token(token)
        except BaseException:
            self._abandon(inflight, cancel=True)
            raise
        self._abandon(inflight, cancel=False)

    def _draw(self, sampler: Sampler, readback: bytes | None, position: int) -> int:
        # The step read back its top candidates (values, then ids); the drawn id goes to
        # tokens[position], where the next step's EMBED reads it.
        k = sampler.params.candidates
        if readback is None or len(readback) != 8 * k:
            raise InvalidArgument(f"expected {k} candidates from the device, got {readback!r}")
        values = np.frombuffer(readback, dtype="<f4", count=k)
        ids = np.frombuffer(readback, dtype="<i4", count=k, offset=4 * k)
        token = sampler.pick(values, ids)
        self.backend.write(TOKENS, position * 4, token.to_bytes(4, "little", signed=True))
        return token

    def _decode_sampled(
        self,
        tokens: list[int],
        times: list[float],
        sampler: Sampler,
        *,
        position: int,
        steps: int,
        eos: int | None,
        on_token: Callable[[int], None] | None,
    ) -> None:
        # Depth 1: step p+1 embeds the id the host drew from step p's candidates, so it can
        # only be submitted once that id is written.
        k = sampler.params.candidates
        while len(tokens) <= steps and tokens[-1] != eos:
            step = self.compiler.decode(position, top=k)
            readback = self.backend.wait(self.backend.submit([step]))
            self._steps += 1
            position += 1
            token = self._draw(sampler, readback, position)
            tokens.append(token)
            times.append(self.backend.now())
            if on_token is not None:
                on_token(token)

    def _abandon(self, inflight: deque[Any], *, cancel: bool) -> None:
        if inflight:
            self._discarded += len(inflight)
            self.backend.abandon(list(inflight), cancel=cancel)
            inflight.clear()

    def _prefill(self, n_prompt: int, *, top: int = 0) -> tuple[Any, list[Step]]:
        # Why re-chunk: npud refuses a THROUGHPUT job estimated over its time slice
        # (TimeSliceExceeded), asking the client to split its work; the answer is smaller
        # chunks. Redoing the whole prompt is correct because every chunk rewrites its own KV
        # positions and later chunks only read positions written before them. The smaller size
        # is kept for later prompts.
        while True:
            chunks = self.compiler.prefill(n_prompt, chunk=self.chunk, top=top)
            try:
                readback = self.backend.wait(self.backend.submit(chunks))
                first = readback if top else _token(readback)
            except TimeSliceExceeded:
                self._steps += len(chunks)
                if self.chunk == 1:
                    raise
                self.chunk = max(1, self.chunk // 2)
                self._rechunks += 1
                continue
            self._steps += len(chunks)
            return first, chunks

    def statistics(self) -> GeneratorStatistics:
        """Totals over this generator's life."""
        return GeneratorStatistics(
            self._generations,
            self._prompt_tokens,
            self._generated,
            self._steps,
            self.chunk,
            self._rechunks,
            self.depth,
            self._discarded,
        )
