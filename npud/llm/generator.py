"""Greedy generation: prefill a prompt in chunks, then one decode step per token.

A :class:`Generator` ties a model, its memory plan, the compiler and a backend together. Token
ids live on the device (the plan's ``tokens`` buffer): the prompt is written there once, every
step's ARGMAX writes the next id after its last position, and the next decode step embeds it
from there. The host reads each id back only to report it (and to stop at EOS), so one round
trip per token suffices and nothing is uploaded per token.

While step p runs, the host compiles step p+1, which hides the compiler's cost behind the
device's.
"""

from __future__ import annotations

import enum
import itertools
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
        weight_dtype: WeightDType | str = WeightDType.F32,
    ) -> None:
        """Plan ``model``'s memory and prepare ``backend`` (weights uploaded or attached).

        Raises:
            InvalidArgument: a bad ``max_seq`` or ``chunk``.
            ResourceExhausted: the device cannot hold the model.
            Unavailable: the device or daemon is gone.
        """
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
    ) -> Generation:
        """Greedily continue ``prompt`` by up to ``max_new_tokens`` ids.

        Each call starts a fresh sequence at position 0 (the KV cache is overwritten in place;
        attention never reads positions beyond the current one, so no clearing is needed).
        ``on_token`` is called with each id as soon as it is known.

        Raises:
            InvalidArgument: an empty prompt, an id outside the vocabulary, a prompt longer
                than the KV cache, or ``max_new_tokens`` < 1.
            JobFailed: a step failed on the device.
            TimeSliceExceeded: npud refused even one-token prefill chunks.
            Unavailable: the device or daemon went away.
        """
        cfg, plan = self.model.config, self.plan
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
        first, chunks = self._prefill(n_prompt)
        tokens = [first]
        times = [self.backend.now()]
        if on_token is not None:
            on_token(first)

        position = n_prompt  # the position of the newest token, the next step's input
        upcoming: Step | None = self.compiler.decode(position) if budget > 1 else None
        while upcoming is not None and tokens[-1] != eos:
            ticket = self.backend.submit([upcoming])
            self._steps += 1
            position += 1
            more = len(tokens) + 1 < budget
            upcoming = self.compiler.decode(position) if more else None  # overlaps the device
            token = _token(self.backend.wait(ticket))
            tokens.append(token)
            times.append(self.backend.now())
            if on_token is not None:
                on_token(token)

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

    def _prefill(self, n_prompt: int) -> tuple[int, list[Step]]:
        # Why re-chunk: npud refuses a THROUGHPUT job estimated over its time slice
        # (TimeSliceExceeded), asking the client to split its work; the answer is smaller
        # chunks. Redoing the whole prompt is correct because every chunk rewrites its own KV
        # positions and later chunks only read positions written before them. The smaller size
        # is kept for later prompts.
        while True:
            chunks = self.compiler.prefill(n_prompt, chunk=self.chunk)
            try:
                first = _token(self.backend.wait(self.backend.submit(chunks)))
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
        )
