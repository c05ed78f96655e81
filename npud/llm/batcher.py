"""Continuous batching: many sequences share one model on npud, one decode job per step.

A :class:`Batcher` serves concurrent generation requests from one model through npud's asyncio
client. Each sequence has its own device state (its ``tokens`` ids and its KV cache, two STATE
buffers created when it is admitted and released when it leaves); the weights are the model's
content-keyed PERSISTENT buffers, shared with every other user of the model.

Work goes to npud as ordinary jobs in one context:

- **decode**: one job per step over every sequence that is decoding (up to ``max_batch``
  rows, :meth:`~npud.llm.compiler.Compiler.decode_batch`), on an in-order LATENCY queue. Each
  row reads its input id from its own ``tokens`` buffer, writes its KV entries and its next id
  there; the weights are read once per step for all rows. Sequences join and leave between
  steps: a step's rows are chosen when it is submitted. Steps are pipelined (``depth`` in
  flight) as in :mod:`npud.llm.generator`, and exact for the same reason: a row reads only
  what earlier steps of the same in-order queue wrote on the device.
- **prefill**: a new sequence's prompt in chunks, one prefill lane per service tier, each an
  in-order queue with its own scratch buffer so that a chunk runs beside a decode step: the
  interactive tier's chunks in the THROUGHPUT class, the batch tier's in the BACKGROUND class
  (npud runs them only when nothing else is ready, or to keep their minimum share). With
  ``priorities=False`` every request shares one THROUGHPUT lane, first come first served.

Isolation between users
-----------------------
A lane keeps one chunk in flight and picks the next one round-robin over the users who have a
prompt waiting (:class:`~npud.llm.turns.Turns`), so one user's long prompt costs another
user's prompt at most one chunk per turn, whatever its length. Admission to the decode batch
(a "slot", :mod:`npud.llm.admission`) is bounded per user, and the batch tier may not take the
last reserved slots, so a flood from one user or tier cannot take the batch from the others.
Users share the batcher's one npud context; a user reaches only the sequences its own
requests return (npud sees one client, the batcher, and no user names at all).

Sampling
--------
Greedy rows take the device's ARGMAX, which the next step reads on the device. While a row
with a sampler is in the batch, the step also ends in TOPK (:mod:`npud.llm.sampling`): such a
row reads back only its :data:`~npud.llm.sampling.MAX_CANDIDATES` best (logit, id) pairs, not
its whole row of logits, the host draws the id from them and writes it over the ARGMAX's.
While such a row decodes, steps are not pipelined (depth 1), since the next step must read the
host's id.

One event loop owns the batcher's state (the loop task plus the coroutines of the requests):
no locks.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from npud.client import Buffer as ClientBuffer
from npud.client import BufferUsage, JobResult, SchedulingClass
from npud.client.aio import AsyncClient, AsyncSubmitStream
from npud.errors import InvalidArgument, NpudError, TimeSliceExceeded, Unavailable
from npud.llm.admission import Admission
from npud.llm.batch_step import DecodeStep, StepJobs
from npud.llm.compiler import (
    Compiler,
    Step,
    StepKind,
    decode_scratch,
)
from npud.llm.daemon import UNFINISHED, job_error
from npud.llm.model import Model
from npud.llm.packs import attach_pack
from npud.llm.plan import KV, TOKENS, BufferKind, MemoryPlan, WeightDType, plan_memory
from npud.llm.sampling import MAX_CANDIDATES
from npud.llm.sequence import END, BatchSequence, Finish, Request, SeqState, Tier
from npud.llm.tokenizer import check_ids
from npud.llm.turns import Turns

__all__ = ["BatchSequence", "Batcher", "BatcherStatistics", "Finish", "Request", "Tier"]


@dataclass(frozen=True, slots=True)
class BatcherStatistics:
    """Counters of a batcher."""

    waiting: int
    prefilling: int
    decoding: int
    sequences: int
    finished: int
    cancelled: int
    failed: int
    decode_steps: int
    decode_rows: int
    prefill_chunks: int
    rechunks: int
    sampled_writes: int
    released_buffers: int

    @property
    def mean_batch(self) -> float:
        """Rows per decode step on average."""
        return self.decode_rows / self.decode_steps if self.decode_steps else 0.0


@dataclass(slots=True, eq=False)
class _Lane:
    """A prefill lane: an in-order npud queue, its scratch buffer, one chunk in flight."""

    tier: Tier
    queue_id: str
    scratch: ClientBuffer
    chunk: int
    users: Turns = field(default_factory=Turns)
    in_flight: tuple[BatchSequence, list[Step], asyncio.Future[JobResult]] | None = None


class Batcher:
    """Continuous batching of one model's sequences on npud (see the module docstring).

    Args:
        client: an open asyncio client; the caller keeps owning it.
        model: the model (its weights are uploaded once, or found on npud by content).
        max_batch: rows of a decode step, i.e. sequences decoding at once.
        max_seq: KV cache length per sequence (prompt + generated ids).
        chunk: prefill chunk in tokens (halved when npud's time slice refuses a chunk).
        depth: decode steps kept in flight (greedy rows only).
        priorities: map tiers to npud classes and lanes; ``False``: one lane, FIFO.
        max_per_user: slots one user may hold (default: ``max_batch``, i.e. no cap).
        reserved_interactive: slots the batch tier may not take.
        max_waiting: requests waiting for a slot before :meth:`submit` refuses more.
        job_timeout_s: the watchdog timeout asked for each job (0: npud's class default).
        label: the context's label, shown by ``npuctl``.
    """

    def __init__(
        self,
        client: AsyncClient,
        model: Model,
        *,
        max_batch: int = 8,
        max_seq: int | None = None,
        chunk: int = 16,
        depth: int = 2,
        weight_dtype: WeightDType | str = WeightDType.NATIVE,
        priorities: bool = True,
        max_per_user: int | None = None,
        reserved_interactive: int = 0,
        max_waiting: int = 64,
        job_timeout_s: float = 0.0,
        device: str = "",
        label: str = "npud-llm-batcher",
    ) -> None:
        if max_batch < 1 or depth < 1 or max_waiting < 0:
            raise InvalidArgument("max_batch and depth must be >= 1, max_waiting >= 0")
        if not 0 <= reserved_interactive < max_batch:
            raise InvalidArgument(f"reserved_interactive must be within 0..{max_batch - 1}")
        self.client = client
        self.model = model
        self.plan: MemoryPlan = plan_memory(
            model, max_seq=max_seq, chunk=chunk, weight_dtype=weight_dtype
        )
        self.max_batch = min(max_batch, self.plan.max_seq)
        self.compiler = Compiler(model.config, self.plan)
        self.depth = depth
        self.priorities = priorities
        self.admission = Admission(
            max_batch=self.max_batch,
            max_per_user=max_batch if max_per_user is None else max(1, max_per_user),
            reserved_interactive=reserved_interactive,
            max_waiting=max_waiting,
            per_user=priorities,
        )
        self.job_timeout_s = job_timeout_s
        self.device = device
        self.label = label
        self.context_id: str | None = None
        self._jobs: StepJobs | None = None
        self._decode_queue = ""
        self._lanes: dict[Tier, _Lane] = {}
        self._stream: AsyncSubmitStream | None = None
        self._decoding: list[BatchSequence] = []
        self._joining: list[BatchSequence] = []  # their last chunk rides in the next step
        self._rows = min(self.max_batch + self.plan.chunk, self.plan.max_seq)
        self._inflight: collections.deque[DecodeStep] = collections.deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._chores: set[asyncio.Task[Any]] = set()
        self._ids = itertools.count(1)
        self._failure: NpudError | None = None
        self._closed = False
        self._counts = collections.Counter[str]()

    # ---- life cycle -----------------------------------------------------------------------

    async def start(self) -> None:
        """Create the context, queues and scratch buffers; attach or upload the weights; start
        the scheduling task.

        Raises:
            ResourceExhausted: npud's quotas or memory cannot hold the model.
            Unavailable: npud is not there.
        """
        ctx = await self.client.create_context(self.device, label=self.label)
        self.context_id = ctx.context_id
        try:
            decode = await self.client.create_queue(
                ctx, SchedulingClass.LATENCY, label=f"{self.label}/decode"
            )
            self._decode_queue = decode.queue_id
            weights = {
                spec.name: await attach_pack(self.client, ctx.context_id, spec)
                for spec in self.plan.buffers
                if spec.kind is BufferKind.WEIGHTS
            }
            layout = decode_scratch(self.model.config, self._rows)
            scratch = await self.client.create_buffer(ctx, layout.size, usage=BufferUsage.SCRATCH)
            self._jobs = StepJobs(weights, scratch, layout, self.plan.scratch, self.job_timeout_s)
            tiers = (Tier.INTERACTIVE, Tier.BATCH) if self.priorities else (Tier.INTERACTIVE,)
            for tier in tiers:
                batch = tier is Tier.BATCH
                cls = SchedulingClass.BACKGROUND if batch else SchedulingClass.THROUGHPUT
                queue = await self.client.create_queue(
                    ctx, cls, label=f"{self.label}/prefill/{tier}"
                )
                scratch = await self.client.create_buffer(
                    ctx, self.plan.scratch.size, usage=BufferUsage.SCRATCH
                )
                self._lanes[tier] = _Lane(tier, queue.queue_id, scratch, self.plan.chunk)
            self._stream = self.client.submit_stream(ctx)
        except BaseException:
            await self._destroy_context()
            raise
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def _destroy_context(self) -> None:
        if self.context_id is not None:
            ctx, self.context_id = self.context_id, None
            with contextlib.suppress(NpudError):
                await self.client.destroy_context(ctx)

    async def close(self) -> None:
        """Fail every sequence with ``Unavailable``, stop the task and destroy the context
        (its state and scratch buffers die with it; the weights stay warm in npud).
        Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._fail_all(Unavailable("the batcher is shutting down"))
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._chores:
            await asyncio.gather(*self._chores, return_exceptions=True)
        if self._stream is not None:
            await self._stream.close()
            self._stream = None
        await self._destroy_context()

    def fail(self, error: Unavailable) -> None:
        """Mark the batcher broken (npud went away): every sequence ends with ``error`` and
        later submits raise it. The owner then closes it and makes a new one."""
        if self._failure is None:
            self._failure = error
            self._fail_all(error)

    @property
    def broken(self) -> NpudError | None:
        """The error that stopped the batcher (npud went away), if any."""
        return self._failure

    # ---- requests -------------------------------------------------------------------------

    def check(self, request: Request) -> None:
        """Check a request against the model and the KV cache before anything is queued.

        Raises:
            InvalidArgument: an empty prompt, an id outside the vocabulary, a prompt that
                leaves no room for one new id in the KV cache, or ``max_new_tokens`` < 1.
        """
        if request.max_new_tokens < 1:
            raise InvalidArgument(
                f"max_new_tokens must be at least 1, got {request.max_new_tokens}"
            )
        if not request.prompt:
            raise InvalidArgument("the prompt must hold at least one token")
        check_ids(request.prompt, self.model.config.vocab_size)
        if len(request.prompt) > self.plan.max_seq:
            raise InvalidArgument(
                f"the prompt has {len(request.prompt)} tokens but the context holds "
                f"{self.plan.max_seq}"
            )

    async def submit(self, request: Request) -> BatchSequence:
        """Queue ``request``; returns once it holds a slot and its buffers exist on npud.

        The caller owns the returned sequence's iteration and must either read it to the end
        or :meth:`BatchSequence.cancel` it (a cancelled coroutine here cancels it itself).

        Raises:
            InvalidArgument: see :meth:`check`.
            QueueFull: ``max_waiting`` requests already wait for a slot.
            ResourceExhausted: npud's quotas or memory refuse the sequence's buffers.
            Unavailable: npud is gone (or the batcher is closed).
        """
        self.check(request)
        if self._failure is not None or self._closed:
            raise self._failure or Unavailable("the batcher is closed")
        seq = BatchSequence(next(self._ids), request, "")
        self.admission.enqueue(seq, user=self._user(seq), batch=self._batch_lane(seq))
        seq.label = f"seq{seq.seq_id}"
        seq.submitted_at = time.monotonic()
        seq._cancel = self._cancel
        self._counts["sequences"] += 1
        self._wake.set()
        try:
            await seq._granted.wait()
            if seq.finish is not None:  # failed or cancelled while waiting
                if seq.error is not None:
                    raise seq.error
                return seq
            await self._allocate(seq)
        except BaseException:
            seq.cancel()
            raise
        return seq

    def _user(self, seq: BatchSequence) -> str:
        # without the priority mapping there is one queue, first come first served
        return seq.request.user if self.priorities else ""

    def _batch_lane(self, seq: BatchSequence) -> bool:
        return self.priorities and seq.request.tier is Tier.BATCH

    async def _allocate(self, seq: BatchSequence) -> None:
        assert self.context_id is not None
        ctx = self.context_id
        by_name = {spec.name: spec for spec in self.plan.buffers}
        try:
            seq.tokens_buf = await self.client.create_buffer(
                ctx, by_name[TOKENS].size, usage=BufferUsage.STATE
            )
            seq.kv_buf = await self.client.create_buffer(
                ctx, by_name[KV].size, usage=BufferUsage.STATE
            )
            prompt = np.asarray(seq.request.prompt, dtype="<i4").tobytes()
            await self.client.write_buffer(ctx, seq.tokens_buf, prompt)
        except NpudError as exc:
            self._finish(seq, Finish.ERROR, exc)
            if isinstance(exc, Unavailable):
                self.fail(exc)
            raise
        if seq.finish is not None:  # cancelled meanwhile
            self._maybe_release(seq)
            return
        seq.state = SeqState.PREFILL
        lane = self._lanes[Tier.BATCH if self._batch_lane(seq) else Tier.INTERACTIVE]
        lane.users.push(self._user(seq), seq)
        self._wake.set()

    def _cancel(self, seq: BatchSequence, finish: Finish) -> None:
        if seq.finish is not None:
            return
        self.admission.withdraw(seq, user=self._user(seq))
        for lane in self._lanes.values():
            lane.users.remove(self._user(seq), seq)
            if lane.in_flight is not None and lane.in_flight[0] is seq:
                self._chore(self._cancel_jobs(lane.queue_id, seq.label))
        if finish is Finish.CANCELLED:
            self._counts["cancelled"] += 1
        self._finish(seq, finish)

    async def _cancel_jobs(self, queue_id: str, label: str) -> None:
        if self.context_id is None:
            return
        ctx = self.context_id
        with contextlib.suppress(NpudError):
            jobs = await self.client.jobs(ctx, queue=queue_id, states=UNFINISHED)
            for job in jobs:
                if job.label.startswith(label + " ") and not job.terminal:
                    with contextlib.suppress(NpudError):
                        await self.client.cancel(ctx, job.job_id)

    def _finish(self, seq: BatchSequence, finish: Finish, error: NpudError | None = None) -> None:
        if seq.finish is not None:
            return
        seq.finish = finish
        seq.error = error
        if error is not None:
            self._counts["failed"] += 1
        elif finish is not Finish.CANCELLED:
            self._counts["finished"] += 1
        if seq in self._decoding:
            self._decoding.remove(seq)
        if seq in self._joining:
            self._joining.remove(seq)
        seq.state = SeqState.DONE
        seq._granted.set()
        seq._events.put_nowait(END)
        self._maybe_release(seq)
        self._wake.set()

    def _maybe_release(self, seq: BatchSequence) -> None:
        if seq.in_flight > 0 or seq.finish is None:
            return
        self.admission.release(seq)
        buffers = [b for b in (seq.tokens_buf, seq.kv_buf) if b is not None]
        seq.tokens_buf = seq.kv_buf = None
        if buffers:
            self._chore(self._release(buffers))
        self._wake.set()

    async def _release(self, buffers: Iterable[ClientBuffer]) -> None:
        if self.context_id is None:
            return
        for buf in buffers:
            with contextlib.suppress(NpudError):
                await self.client.release_buffer(self.context_id, buf)
                self._counts["released_buffers"] += 1

    def _chore(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._chores.add(task)
        task.add_done_callback(self._chores.discard)

    def _fail_all(self, error: NpudError) -> None:
        for seq in self.admission.drain():
            seq.in_flight = 0
            self._finish(seq, Finish.ERROR, error)

    # ---- the scheduling loop --------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                self._admit()
                await self._reap()
                await self._submit_prefill()
                await self._submit_decode()
                await self._wake.wait()
                self._wake.clear()
        except NpudError as exc:  # the stream or npud failed: nothing can go on
            self.fail(exc if isinstance(exc, Unavailable) else Unavailable(str(exc)))
        except Exception as exc:  # a bug: fail every sequence rather than leave them hanging
            self.fail(Unavailable(f"the batcher stopped: {type(exc).__name__}: {exc}"))
            raise

    def _admit(self) -> None:
        for seq in self.admission.grant():
            seq.state = SeqState.ADMITTED
            seq._granted.set()

    async def _reap(self) -> None:
        for lane in self._lanes.values():
            if lane.in_flight is not None and lane.in_flight[2].done():
                seq, steps, fut = lane.in_flight
                lane.in_flight = None
                seq.in_flight -= 1
                await self._on_prefill(lane, seq, steps, fut.result())
        while self._inflight and self._inflight[0].future.done():
            step = self._inflight.popleft()
            await self._on_decode(step, step.future.result())

    async def _on_prefill(
        self, lane: _Lane, seq: BatchSequence, steps: list[Step], result: JobResult
    ) -> None:
        if seq.finish is not None:
            self._maybe_release(seq)
            return
        if not result.ok:
            error = job_error(f"{seq.label} {steps[-1].label}", result)
            if isinstance(error, TimeSliceExceeded) and lane.chunk > 1:
                # smaller chunks and the prompt again from the start: every chunk rewrites
                # its own KV positions, so this is exact (see npud.llm.generator)
                lane.chunk = max(1, lane.chunk // 2)
                self._counts["rechunks"] += 1
                seq.prefill_at = 0
                lane.users.push_front(self._user(seq), seq)
                return
            self._finish(seq, Finish.ERROR, error)
            return
        self._counts["prefill_chunks"] += 1
        end = steps[-1].start_pos + steps[-1].n_tokens
        seq.prefill_at = end
        if end < len(seq.request.prompt):
            # its turn comes again when the round-robin gets back
            lane.users.push_front(self._user(seq), seq, to_back=True)
            return
        seq.first_token_at = time.monotonic()
        seq.position = seq.submitted_to = len(seq.request.prompt)
        if seq.request.sampler is not None:
            values, ids = result.readbacks
            token = await self._sampled(seq, values, ids)
        else:
            token = int.from_bytes(result.readbacks[0], "little", signed=True)
        self._emit(seq, token)
        if seq.finish is None:
            seq.state = SeqState.DECODE
            self._decoding.append(seq)

    def _emit(self, seq: BatchSequence, token: int) -> None:
        seq.generated.append(token)
        seq._events.put_nowait(token)
        eos = self.model.config.eos_token_id
        if seq.request.stop_at_eos and (token == eos or token in seq.request.stop_ids):
            self._finish(seq, Finish.STOP)
        elif len(seq.generated) >= seq.request.max_new_tokens:
            self._finish(seq, Finish.LENGTH)
        elif seq.position >= self.plan.max_seq:
            self._finish(seq, Finish.CONTEXT)

    async def _on_decode(self, step: DecodeStep, result: JobResult) -> None:
        for seq in step.rows:
            seq.in_flight -= 1
        error = None if result.ok else job_error(f"decode step of {len(step.rows)}", result)
        candidates = iter(result.readbacks[len(step.rows) :]) if result.ok else iter(())
        for index, seq in enumerate(step.rows):
            drawn = (next(candidates), next(candidates)) if step.sampled[index] else None
            if seq.finish is not None:
                self._maybe_release(seq)
                continue
            if error is not None:
                self._finish(seq, Finish.ERROR, error)
                continue
            token = int.from_bytes(result.readbacks[index], "little", signed=True)
            seq.position = step.positions[index] + step.tokens[index]
            if not seq.generated:  # a joiner's first token
                seq.first_token_at = time.monotonic()
                self._counts["prefill_chunks"] += 1
            if drawn is not None:
                token = await self._sampled(seq, *drawn)
            self._emit(seq, token)

    async def _sampled(self, seq: BatchSequence, values: bytes, ids: bytes) -> int:
        # The host's pick replaces the device's ARGMAX id where the next step reads it.
        assert seq.request.sampler is not None
        assert self.context_id is not None
        token = seq.request.sampler.pick(
            np.frombuffer(values, dtype="<f4"), np.frombuffer(ids, dtype="<i4")
        )
        if seq.tokens_buf is not None:
            data = token.to_bytes(4, "little", signed=True)
            await self.client.write_buffer(
                self.context_id, seq.tokens_buf, data, offset=seq.position * 4
            )
            self._counts["sampled_writes"] += 1
        return token

    async def _submit_prefill(self) -> None:
        assert self._stream is not None
        for lane in self._lanes.values():
            seq = self._next_chunk(lane)
            if seq is None:
                continue
            start = seq.prefill_at
            n_prompt = len(seq.request.prompt)
            n = min(lane.chunk, n_prompt - start)
            last = start + n == n_prompt
            top = MAX_CANDIDATES if last and seq.request.sampler is not None else 0
            step = self.compiler.step(
                start, n, emit_token=last, kind=StepKind.PREFILL, chunk=lane.chunk, top=top
            )
            assert self._jobs is not None
            spec, readbacks = self._jobs.prefill(step, seq, lane.queue_id, lane.scratch, top=top)
            fut = await self._stream.submit(spec, readbacks)
            fut.add_done_callback(lambda _f: self._wake.set())
            seq.in_flight += 1
            lane.in_flight = (seq, [step], fut)

    def _next_chunk(self, lane: _Lane) -> BatchSequence | None:
        # Why the last chunk of an interactive prompt joins the decode step instead: a
        # sequence whose prefill ends on its own lane joins the batch at the next step
        # submitted, behind the steps already in flight, so its second token would come up to
        # depth + 1 steps after its first. Carried in a decode step (a row of the chunk's
        # tokens beside the one-token rows), its first token comes in the batch's cadence and
        # the next step follows it at once; the wait moves into the time to first token.
        while lane.in_flight is None:
            seq = lane.users.pop()  # the user's next prompt goes to the back
            if seq is None:
                break
            remaining = len(seq.request.prompt) - seq.prefill_at
            if not self._batch_lane(seq) and remaining <= self.plan.chunk:
                self._joining.append(seq)
                self._wake.set()
                continue
            return seq
        return None

    async def _submit_decode(self) -> None:
        assert self._stream is not None
        sampling = any(s.request.sampler is not None for s in (*self._decoding, *self._joining))
        depth = 1 if sampling else self.depth
        while len(self._inflight) < depth:
            rows = [s for s in self._decoding if self._ready(s)][: self.max_batch]
            counts = [1] * len(rows)
            positions_list = [s.submitted_to for s in rows]
            joined = []
            for seq in list(self._joining):
                n = len(seq.request.prompt) - seq.prefill_at
                if len(rows) >= self.max_batch or sum(counts) + n > self._rows:
                    break
                rows.append(seq)
                counts.append(n)
                positions_list.append(seq.prefill_at)
                joined.append(seq)
            if not rows:
                return
            positions = tuple(positions_list)
            sampled = tuple(s.request.sampler is not None for s in rows)
            top = MAX_CANDIDATES if any(sampled) else 0
            if joined:
                step = self.compiler.mixed_batch(
                    list(zip(positions, counts, strict=True)), max_rows=self._rows, top=top
                )
            else:
                step = self.compiler.decode_batch(positions, max_rows=self._rows, top=top)
            ends = [p + n for p, n in zip(positions, counts, strict=True)]
            assert self._jobs is not None
            spec, readbacks = self._jobs.decode(
                step, self._decode_queue, rows, ends, sampled, top=top
            )
            fut = await self._stream.submit(spec, readbacks)
            fut.add_done_callback(lambda _f: self._wake.set())
            for seq in rows:
                seq.in_flight += 1
                seq.submitted_to += 1
            for seq in joined:  # decoding from now on: its next step may follow at once
                if seq.finish is not None:  # cancelled while the step was being sent
                    continue
                self._joining.remove(seq)
                seq.state = SeqState.DECODE
                seq.submitted_to = len(seq.request.prompt)
                self._decoding.append(seq)
            self._inflight.append(DecodeStep(tuple(rows), positions, tuple(counts), sampled, fut))
            self._counts["decode_steps"] += 1
            self._counts["decode_rows"] += len(rows)

    def _ready(self, seq: BatchSequence) -> bool:
        # The budget is known before the step: never submit past max_new_tokens or the cache.
        # Ids the sequence will have once every submitted step is back: the prefill's one
        # plus one per decode step.
        ids_after = 1 + seq.submitted_to - len(seq.request.prompt)
        if ids_after >= seq.request.max_new_tokens or seq.submitted_to >= self.plan.max_seq:
            return False
        return not (seq.request.sampler is not None and seq.in_flight > 0)

    def statistics(self) -> BatcherStatistics:
        """A frozen snapshot of the batcher's counters."""
        prefilling = sum(len(lane.users) for lane in self._lanes.values()) + sum(
            1 for lane in self._lanes.values() if lane.in_flight is not None
        )
        prefilling += len(self._joining)
        c = self._counts
        return BatcherStatistics(
            waiting=self.admission.waiting,
            prefilling=prefilling,
            decoding=len(self._decoding),
            sequences=c["sequences"],
            finished=c["finished"],
            cancelled=c["cancelled"],
            failed=c["failed"],
            decode_steps=c["decode_steps"],
            decode_rows=c["decode_rows"],
            prefill_chunks=c["prefill_chunks"],
            rechunks=c["rechunks"],
            sampled_writes=c["sampled_writes"],
            released_buffers=c["released_buffers"],
        )


def time_to_first_token(seq: BatchSequence) -> float:
    """Seconds from :meth:`Batcher.submit` to the first id (NaN before it)."""
    return seq.first_token_at - seq.submitted_at if seq.first_token_at else math.nan
