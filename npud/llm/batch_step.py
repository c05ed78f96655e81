"""A step of the batcher as one npud job: the buffers it binds and the bytes it reads back.

A compiled :class:`~npud.llm.compiler.Step` names its buffers (``tokens#r``, ``kv#r`` per row,
the scratch, the weight packs); :class:`StepJobs` turns it into a :class:`~npud.client.JobSpec`
on the right queue, binding each name to the sequence's or the batcher's buffer, and lists the
readbacks: each row's next id (where ARGMAX wrote it) and, for a row that samples, only its
TOPK candidates (values then ids, ``4 * top`` bytes each), never its logits.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from npud.client import Access as ClientAccess
from npud.client import Bind, JobResult, JobSpec, Readback
from npud.client import Buffer as ClientBuffer
from npud.llm.compiler import (
    DECODE_SCRATCH,
    Access,
    Step,
    batch_candidates,
    row_buffers,
)
from npud.llm.plan import KV, SCRATCH, TOKENS, ScratchLayout
from npud.llm.sequence import BatchSequence


@dataclass(slots=True, eq=False)
class DecodeStep:
    """A batched decode step in flight: its rows, where each starts and how many ids it
    carries (1 for a decoding sequence, its last chunk for a joiner), which rows sample."""

    rows: tuple[BatchSequence, ...]
    positions: tuple[int, ...]
    tokens: tuple[int, ...]
    sampled: tuple[bool, ...]
    future: asyncio.Future[JobResult]


def _access(access: Access) -> ClientAccess:
    return ClientAccess.READ if access is Access.READ else ClientAccess.READ_WRITE


@dataclass(frozen=True, slots=True)
class StepJobs:
    """Builds the jobs of one batcher: its weight buffers, decode scratch and its layout."""

    weights: Mapping[str, ClientBuffer]
    decode_scratch: ClientBuffer
    decode_layout: ScratchLayout
    prefill_layout: ScratchLayout
    timeout_s: float

    def _bind(self, step: Step, names: Mapping[str, ClientBuffer | None]) -> tuple[Bind, ...]:
        return tuple(
            Bind(names.get(name) or self.weights[name], _access(access))
            for name, access in step.bindings
        )

    def prefill(
        self, step: Step, seq: BatchSequence, queue: str, scratch: ClientBuffer, *, top: int
    ) -> tuple[JobSpec, tuple[Readback, ...]]:
        """The job of a prefill chunk of ``seq`` on a lane (``queue``, its ``scratch``).

        The last chunk reads back the next id, or with ``top`` its candidates (safe to read
        from the lane's scratch: the lane's next chunk waits for this result).
        """
        names = {TOKENS: seq.tokens_buf, KV: seq.kv_buf, SCRATCH: scratch}
        spec = JobSpec(
            queue=queue,
            command=step.command,
            bindings=self._bind(step, names),
            kind=step.tag,
            label=f"{seq.label} {step.label}",
            timeout_s=self.timeout_s,
        )
        end = step.start_pos + step.n_tokens
        if end < len(seq.request.prompt):
            return spec, ()
        if top:
            values, ids = batch_candidates(self.prefill_layout, 1, 0, top)
            return spec, (Readback(scratch, values, top * 4), Readback(scratch, ids, top * 4))
        assert seq.tokens_buf is not None
        return spec, (Readback(seq.tokens_buf, end * 4, 4),)

    def decode(
        self,
        step: Step,
        queue: str,
        rows: Sequence[BatchSequence],
        ends: Sequence[int],
        sampled: Sequence[bool],
        *,
        top: int,
    ) -> tuple[JobSpec, list[Readback]]:
        """The job of a batched step over ``rows``, row ``r``'s next id at ``ends[r]``: every
        row's id, then the candidates of each row that samples."""
        names: dict[str, ClientBuffer | None] = {DECODE_SCRATCH: self.decode_scratch}
        for r, seq in enumerate(rows):
            tokens_name, kv_name = row_buffers(r)
            names[tokens_name], names[kv_name] = seq.tokens_buf, seq.kv_buf
        readbacks: list[Readback] = []
        for seq, end in zip(rows, ends, strict=True):
            assert seq.tokens_buf is not None
            readbacks.append(Readback(seq.tokens_buf, end * 4, 4))
        for r, is_sampled in enumerate(sampled):
            if is_sampled:
                values, ids = batch_candidates(self.decode_layout, len(rows), r, top)
                readbacks.append(Readback(self.decode_scratch, values, top * 4))
                readbacks.append(Readback(self.decode_scratch, ids, top * 4))
        spec = JobSpec(
            queue=queue,
            command=step.command,
            bindings=self._bind(step, names),
            kind="decode",
            label=f"decode x{len(rows)}",
            timeout_s=self.timeout_s,
        )
        return spec, readbacks
