"""Compiling prefill chunks and decode steps of a Llama decoder to command streams.

One :class:`Step` runs ``n`` consecutive tokens at positions ``start .. start+n-1`` through
every layer, writing their keys and values into the KV cache, and (for the last prefill chunk
and every decode step) the final norm, the output head and ARGMAX on the last token, whose id
lands in ``tokens[start+n]``. A decode step is a step of one token whose input id is read from
``tokens[start]``, where the previous step's ARGMAX put it; nothing is uploaded per token.

Per layer, for activations ``x`` (the residual stream):

    h = RMSNORM(x, input_layernorm)
    q, k, v = h @ Wq^T, h @ Wk^T, h @ Wv^T
    q, k = ROPE(q), ROPE(k)                      at positions start..start+n-1
    KV_WRITE(K_l, k), KV_WRITE(V_l, v)           at start
    a = ATTENTION(q, K_l, V_l)                   causal over 0..start+t, grouped-query
    x = x + a @ Wo^T
    h = RMSNORM(x, post_attention_layernorm)
    x = x + (SILU(h @ Wgate^T) * (h @ Wup^T)) @ Wdown^T

HF stores projections ``[out, in]``, so every MATMUL uses ``transpose_b``. No op writes an
operand it reads (the residual stream ping-pongs between two scratch tensors), so the program
is correct whatever order a device evaluates an op's elements in.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from npud.errors import InvalidArgument
from npud.isa import DType, Program, Tensor
from npud.llm.config import ModelConfig
from npud.llm.plan import (
    KV,
    SCRATCH,
    TOKENS,
    BufferKind,
    MemoryPlan,
    ScratchLayout,
    scratch_layout,
)
from npud.llm.sampling import MAX_CANDIDATES
from npud.llm.template import DecodeTemplate


class StepKind(enum.StrEnum):
    """What a step is for; it decides the scheduling class through the daemon."""

    PREFILL = "prefill"  # THROUGHPUT: chunks of the prompt
    DECODE = "decode"  # LATENCY: one token


class Rows(enum.Enum):
    """Which rows of a step go through the output head, and what comes back."""

    LAST = "last"  # each sequence's last row: ARGMAX into tokens, or TOPK candidates to draw from
    ALL = "all"  # every row: TOPK candidates of each (scoring a known sequence)
    LOGITS = "logits"  # every row: the whole logits (checks against another implementation)


class Access(enum.Flag):
    """How a step uses a bound buffer."""

    READ = enum.auto()
    WRITE = enum.auto()
    READWRITE = READ | WRITE


@dataclass(frozen=True, slots=True)
class Readback:
    """Bytes a step's caller wants back after it ran: ``size`` bytes of ``buffer`` at ``offset``."""

    buffer: str
    offset: int
    size: int


@dataclass(frozen=True, slots=True)
class Step:
    """One compiled job: its command stream, its bindings (buffer names, slot order), readback.

    ``readback`` is set when the step ends in ARGMAX: the 4-byte little-endian I32 id of the
    token after the step's last position. ``tag`` names the step's cost class for npud's
    per-kind duration estimates: prefill chunks of different sizes are different kinds, so a
    client that shrinks its chunks is judged by the smaller chunks' durations.
    """

    kind: StepKind
    start_pos: int
    n_tokens: int
    command: bytes
    bindings: tuple[tuple[str, Access], ...]
    readback: Readback | None
    tag: str = ""  # the job kind for npud's duration estimates ("decode", "prefill/16")

    @property
    def label(self) -> str:
        """A short human-readable name (``prefill[0:16]``, ``decode@42``)."""
        if self.kind is StepKind.DECODE:
            return f"decode@{self.start_pos}"
        return f"prefill[{self.start_pos}:{self.start_pos + self.n_tokens}]"


@dataclass(frozen=True, slots=True)
class _Row:
    """One sequence's part of a step: its buffers' binding slots, positions and scratch rows."""

    tokens: int  # binding slot of the sequence's ids
    kv: int  # binding slot of its KV cache
    start: int  # position of its first token in this step
    n: int  # tokens of it in this step
    first: int  # its first row in the step's scratch activations


DECODE_SCRATCH = "scratch.decode"
"""The binding name of the activations of a batched decode step (a buffer of its own, so a
prefill chunk of another sequence can run beside it)."""


def row_buffers(row: int) -> tuple[str, str]:
    """The binding names of row ``row``'s ids and KV cache in a batched decode step."""
    return f"{TOKENS}#{row}", f"{KV}#{row}"


def batch_bindings(plan: MemoryPlan, rows: int) -> tuple[tuple[str, Access], ...]:
    """The bindings of a decode step over ``rows`` sequences, in slot order: the decode scratch,
    the weight packs, then each row's ids and KV cache."""
    out: list[tuple[str, Access]] = [(DECODE_SCRATCH, Access.READWRITE)]
    out += [(spec.name, Access.READ) for spec in plan.buffers if spec.kind is BufferKind.WEIGHTS]
    for row in range(rows):
        out += [(name, Access.READWRITE) for name in row_buffers(row)]
    return tuple(out)


def decode_scratch(config: ModelConfig, rows: int) -> ScratchLayout:
    """The activations of a decode step over up to ``rows`` sequences."""
    return scratch_layout(config, rows, head_rows=rows)


def batch_candidates(layout: ScratchLayout, heads: int, row: int, top: int) -> tuple[int, int]:
    """Where row ``row``'s TOPK candidates of a batched step over ``heads`` rows sit in the
    decode scratch of ``layout``: the byte offsets of its ``top`` f32 values and of its
    ``top`` I32 ids (each ``4 * top`` bytes)."""
    base = layout.offsets["cands"]
    return base + row * top * 4, base + (heads + row) * top * 4


class Compiler:
    """Builds :class:`Step` programs for one model and memory plan (pure; no device needed)."""

    __slots__ = ("_batch_templates", "_decode_templates", "_validated", "config", "plan")

    def __init__(self, config: ModelConfig, plan: MemoryPlan) -> None:
        self.config = config
        self.plan = plan
        self._validated: set[tuple[object, ...]] = set()
        self._decode_templates: dict[int, DecodeTemplate] = {}
        self._batch_templates: dict[tuple[int, int, int], DecodeTemplate] = {}

    def _w(self, name: str, slots: dict[str, int] | None = None) -> Tensor:
        placed = self.plan.weights[name]
        return placed.ref(self.plan.slot(placed.buffer) if slots is None else slots[placed.buffer])

    def _kv(self, layer: int, which: int, slot: int) -> Tensor:
        cfg = self.config
        offset = (2 * layer + which) * self.plan.kv_bytes
        shape = (cfg.num_key_value_heads, self.plan.max_seq, cfg.head_dim)
        return Tensor(slot, offset, shape, DType.F32)

    def _bindings(self) -> tuple[tuple[str, Access], ...]:
        access = {
            BufferKind.WEIGHTS: Access.READ,
            BufferKind.STATE: Access.READWRITE,
            BufferKind.SCRATCH: Access.READWRITE,
        }
        return tuple((spec.name, access[spec.kind]) for spec in self.plan.buffers)

    def step(
        self,
        start_pos: int,
        n_tokens: int,
        *,
        emit_token: bool,
        kind: StepKind,
        chunk: int | None = None,
        top: int = 0,
        rows: Rows = Rows.LAST,
    ) -> Step:
        """Compile ``n_tokens`` tokens starting at ``start_pos``.

        Args:
            start_pos: position of the first token (its id is read from ``tokens[start_pos]``).
            n_tokens: tokens in this step, at most the plan's chunk size.
            emit_token: end with the head and ARGMAX of the last token into
                ``tokens[start_pos + n_tokens]``.
            kind: prefill or decode (a label for scheduling; the program is the same).
            chunk: the prefill chunk size this step belongs to (its tag); the plan's default.
            top: with ``emit_token``, end in TOPK of ``top`` candidates (read back, for the
                host to draw the next id and write it) instead of ARGMAX.
            rows: with ``emit_token``, which rows go through the head: the last (generation),
                every row (scoring a sequence: TOPK per row), or every row's whole logits
                (:attr:`Rows.LOGITS`, for checks against another implementation).

        Raises:
            InvalidArgument: the step does not fit the plan (too many tokens, or positions past
                the KV cache length), or ``top`` is outside 0..MAX_CANDIDATES (at least 1 for
                :attr:`Rows.ALL`).
        """
        self._check(start_pos, n_tokens)
        if not 0 <= top <= MAX_CANDIDATES or (rows is Rows.ALL and not top):
            raise InvalidArgument(f"top must be within 1..{MAX_CANDIDATES}, got {top}")
        prog, readback = self._program(
            start_pos, n_tokens, emit_token=emit_token, top=top, rows=rows
        )
        # Why validate only the first step of each shape: positions enter a program only as
        # start_pos parameters and token offsets, both bounds-checked above, so once a
        # (n_tokens, emit_token) shape passed the decoder every other position would too;
        # skipping the decoder makes a decode step ~10x cheaper to compile.
        shape = (n_tokens, emit_token, top, rows)
        command = prog.encode(validate=shape not in self._validated)
        self._validated.add(shape)
        if kind is StepKind.DECODE:
            tag = "decode"
        else:
            tag = f"prefill/{self.plan.chunk if chunk is None else chunk}"
        return Step(kind, start_pos, n_tokens, command, self._bindings(), readback, tag)

    def _check(self, start_pos: int, n_tokens: int) -> None:
        plan = self.plan
        if not 0 < n_tokens <= plan.chunk:
            raise InvalidArgument(f"a step holds 1..{plan.chunk} tokens, got {n_tokens}")
        end = start_pos + n_tokens
        if start_pos < 0 or end > plan.max_seq:
            raise InvalidArgument(
                f"positions {start_pos}..{end - 1} do not fit the KV cache of {plan.max_seq}"
            )

    def _program(
        self,
        start_pos: int,
        n_tokens: int,
        *,
        emit_token: bool,
        top: int = 0,
        rows: Rows = Rows.LAST,
    ) -> tuple[Program, Readback | None]:
        plan = self.plan
        row = _Row(plan.slot(TOKENS), plan.slot(KV), start_pos, n_tokens, 0)
        slots = {spec.name: index for index, spec in enumerate(plan.buffers)}
        prog = self._rows_program(
            (row,), plan.scratch, slots, scratch_name=SCRATCH, emit=emit_token, top=top, mode=rows
        )
        if not emit_token:
            return prog, None
        heads = 1 if rows is Rows.LAST else n_tokens
        if rows is Rows.LOGITS:
            logits = plan.scratch.ref(plan.slot(SCRATCH), "logits", heads)
            return prog, Readback(SCRATCH, logits.offset, logits.nbytes)
        if top:
            values, ids = plan.scratch.candidates(plan.slot(SCRATCH), heads, top)
            return prog, Readback(SCRATCH, values.offset, values.nbytes + ids.nbytes)
        return prog, Readback(TOKENS, (start_pos + n_tokens) * 4, 4)

    def _rows_program(
        self,
        rows: Sequence[_Row],
        s: ScratchLayout,
        slots: dict[str, int],
        *,
        scratch_name: str,
        emit: bool,
        top: int = 0,
        mode: Rows = Rows.LAST,
        argmax: bool = False,
    ) -> Program:
        # Row-wise ops (norms, projections, residual adds, the MLP) run over every row of the
        # step at once; the position-dependent ones (EMBED of the input ids, ROPE, KV_WRITE,
        # ATTENTION, ARGMAX into the ids) run per row, on that row's own buffers. One row of
        # n tokens is a prefill chunk or a decode step; n rows of one token each are a decode
        # step batched over n sequences.
        cfg = self.config
        total = sum(r.n for r in rows)
        scratch = slots[scratch_name]

        def act(name: str, n: int = total, row: int = 0) -> Tensor:
            return s.ref(scratch, name, n, row=row)

        prog = Program()
        embed = self._w("model.embed_tokens.weight", slots)
        for r in rows:
            ids = Tensor(r.tokens, r.start * 4, (r.n,), DType.I32)
            prog.embed(out=act("x0", r.n, r.first), table=embed, ids=ids)
        x, x_next = "x0", "x1"
        eps = cfg.rms_norm_eps
        for layer in range(cfg.num_hidden_layers):
            p = f"model.layers.{layer}."
            w_in = self._w(p + "input_layernorm.weight", slots)
            prog.rmsnorm(out=act("h"), x=act(x), w=w_in, eps=eps)
            for proj, out in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v")):
                w = self._w(f"{p}self_attn.{proj}.weight", slots)
                prog.matmul(out=act(out), a=act("h"), b=w, transpose_b=True)
            for r in rows:
                for src, dst, heads in (
                    ("q", "q_rot", cfg.num_attention_heads),
                    ("k", "k_rot", cfg.num_key_value_heads),
                ):
                    prog.rope(
                        out=act(dst, r.n, r.first),
                        x=act(src, r.n, r.first),
                        n_heads=heads,
                        head_dim=cfg.head_dim,
                        start_pos=r.start,
                        theta=cfg.rope_theta,
                    )
                k_cache, v_cache = self._kv(layer, 0, r.kv), self._kv(layer, 1, r.kv)
                prog.kv_write(cache=k_cache, src=act("k_rot", r.n, r.first), start_pos=r.start)
                prog.kv_write(cache=v_cache, src=act("v", r.n, r.first), start_pos=r.start)
                prog.attention(
                    out=act("attn", r.n, r.first),
                    q=act("q_rot", r.n, r.first),
                    k_cache=k_cache,
                    v_cache=v_cache,
                    n_heads=cfg.num_attention_heads,
                    n_kv_heads=cfg.num_key_value_heads,
                    head_dim=cfg.head_dim,
                    start_pos=r.start,
                )
            wo = self._w(p + "self_attn.o_proj.weight", slots)
            prog.matmul(out=act("proj"), a=act("attn"), b=wo, transpose_b=True)
            prog.add(out=act(x_next), a=act(x), b=act("proj"))
            x, x_next = x_next, x
            w_post = self._w(p + "post_attention_layernorm.weight", slots)
            prog.rmsnorm(out=act("h"), x=act(x), w=w_post, eps=eps)
            for proj, out in (("gate_proj", "gate"), ("up_proj", "up")):
                w = self._w(f"{p}mlp.{proj}.weight", slots)
                prog.matmul(out=act(out), a=act("h"), b=w, transpose_b=True)
            prog.silu(out=act("act"), x=act("gate"))
            prog.mul(out=act("mlp"), a=act("act"), b=act("up"))
            wd = self._w(p + "mlp.down_proj.weight", slots)
            prog.matmul(out=act("proj"), a=act("mlp"), b=wd, transpose_b=True)
            prog.add(out=act(x_next), a=act(x), b=act("proj"))
            x, x_next = x_next, x
        if emit:
            # The head runs on each row's last token, over runs of rows whose last tokens are
            # consecutive scratch rows (all of them for a decode step over one-token rows; a
            # chunk of n tokens starts a run of its own); row i's logits are logits row i.
            # Scoring a sequence (mode ALL or LOGITS, one row) runs it on every token instead.
            w_norm = self._w("model.norm.weight", slots)
            head = self._w("lm_head.weight", slots)
            if mode is Rows.LAST:
                heads = len(rows)
                index = 0
                while index < len(rows):
                    end = index + 1
                    while end < len(rows) and rows[end].n == 1 and rows[end - 1].n == 1:
                        end += 1
                    run = end - index
                    last = act(x, run, rows[index].first + rows[index].n - 1)
                    prog.rmsnorm(out=act("final", run, index), x=last, w=w_norm, eps=eps)
                    prog.matmul(
                        out=act("logits", run, index),
                        a=act("final", run, index),
                        b=head,
                        transpose_b=True,
                    )
                    index = end
            else:
                heads = total
                prog.rmsnorm(out=act("final", heads), x=act(x, heads, 0), w=w_norm, eps=eps)
                prog.matmul(
                    out=act("logits", heads), a=act("final", heads), b=head, transpose_b=True
                )
            if mode is Rows.LOGITS:
                pass  # the logits themselves are read back
            elif top:
                values, ids = s.candidates(scratch, heads, top)
                prog.topk(values=values, ids=ids, x=act("logits", heads))
            if mode is Rows.LAST and (not top or argmax):
                for index, r in enumerate(rows):
                    out_id = Tensor(r.tokens, (r.start + r.n) * 4, (1,), DType.I32)
                    prog.argmax(out=out_id, x=act("logits", 1, index))
        return prog

    def prefill(
        self, prompt_len: int, *, start_pos: int = 0, chunk: int | None = None, top: int = 0
    ) -> list[Step]:
        """The chunks of a prompt of ``prompt_len`` tokens; the last one emits the next token.

        Chunks are ``chunk`` (default: the plan's) tokens long except the last, which holds the
        remainder (variable length rather than padding: no wasted compute and no masking of
        pad rows).

        Raises:
            InvalidArgument: the prompt is empty or does not fit the KV cache, or ``chunk`` is
                not within 1..plan.chunk.
        """
        if prompt_len <= 0:
            raise InvalidArgument("the prompt must hold at least one token")
        size = self.plan.chunk if chunk is None else chunk
        if not 0 < size <= self.plan.chunk:
            raise InvalidArgument(f"a prefill chunk holds 1..{self.plan.chunk} tokens, got {size}")
        steps = []
        end = start_pos + prompt_len
        for begin in range(start_pos, end, size):
            n = min(size, end - begin)
            last = begin + n == end
            steps.append(
                self.step(begin, n, emit_token=last, kind=StepKind.PREFILL, chunk=size, top=top)
            )
        return steps

    def score(self, length: int, *, top: int = 2, logits: bool = False) -> list[Step]:
        """Steps that run a whole sequence of ``length`` ids (already in ``tokens``) and read
        back, for every chunk, the ``top`` candidates of every row (or, with ``logits``, the
        rows' whole logits): teacher-forced checks in one pass, with no id written to
        ``tokens``. Every step has a readback.

        Raises:
            InvalidArgument: the sequence is empty or does not fit the KV cache.
        """
        if length <= 0:
            raise InvalidArgument("the sequence must hold at least one token")
        rows = Rows.LOGITS if logits else Rows.ALL
        size = self.plan.chunk
        return [
            self.step(
                b, min(size, length - b), emit_token=True, kind=StepKind.PREFILL, top=top, rows=rows
            )
            for b in range(0, length, size)
        ]

    def decode(self, position: int, *, top: int = 0) -> Step:
        """The decode step for the token at ``position`` (read from ``tokens[position]``).

        With ``top`` the step ends in TOPK of that many candidates (read back) instead of
        ARGMAX: the host draws the next id and writes it to ``tokens[position + 1]``.
        The first decode step of each kind is compiled (and validated) in full and kept as a
        :class:`~npud.llm.template.DecodeTemplate`; later ones are that template patched to
        their position, the same bytes a full compile would give.

        Raises:
            InvalidArgument: ``position`` is past the KV cache, or ``top`` is outside
                0..MAX_CANDIDATES.
        """
        self._check(position, 1)
        if not 0 <= top <= MAX_CANDIDATES:
            raise InvalidArgument(f"top must be within 0..{MAX_CANDIDATES}, got {top}")
        template = self._decode_templates.get(top)
        readback: Readback | None
        if template is None:
            prog, readback = self._program(position, 1, emit_token=True, top=top)
            template = DecodeTemplate(
                prog.instructions, prog.encode(validate=True), position, self.plan.slot(TOKENS)
            )
            self._decode_templates[top] = template
        if top:
            values, ids = self.plan.scratch.candidates(self.plan.slot(SCRATCH), 1, top)
            readback = Readback(SCRATCH, values.offset, values.nbytes + ids.nbytes)
        else:
            readback = Readback(TOKENS, (position + 1) * 4, 4)
        return Step(
            StepKind.DECODE,
            position,
            1,
            template.at(position),
            self._bindings(),
            readback,
            "decode",
        )

    def decode_batch(self, positions: Sequence[int], *, max_rows: int, top: int = 0) -> Step:
        """One decode step over ``len(positions)`` sequences, as ONE job.

        Row ``r`` reads its input id from ``tokens#r[positions[r]]``, writes its keys and
        values into ``kv#r`` at that position and its next id (ARGMAX) into
        ``tokens#r[positions[r] + 1]``; the logits of row ``r`` are row ``r`` of the decode
        scratch's ``logits``. Row-wise work (projections, norms, MLP) runs over all rows at
        once and reads each weight once; the simulated NPU's kernels give each row the same
        bits as a step of that sequence alone. Bindings: :func:`batch_bindings`. The program of
        each row count is compiled once and patched to the positions afterwards.

        Args:
            positions: each row's position (the ids and caches are each row's own buffers, so
                two rows may be at the same position).
            max_rows: the rows the decode scratch buffer was sized for
                (:func:`decode_scratch`); at most the KV cache length.
            top: besides ARGMAX, end in TOPK of ``top`` candidates per row
                (:func:`batch_candidates` says where row ``r``'s are): a row that samples
                reads back only those, the host draws its id and writes it over the ARGMAX.

        Raises:
            InvalidArgument: no rows, more than ``max_rows``, a position past the cache, or
                ``top`` outside 0..MAX_CANDIDATES.
        """
        rows = len(positions)
        if not 0 < rows <= max_rows:
            raise InvalidArgument(f"a batched decode step holds 1..{max_rows} rows, got {rows}")
        if max_rows > self.plan.max_seq:
            raise InvalidArgument(f"{max_rows} rows exceed the KV cache length {self.plan.max_seq}")
        for position in positions:
            self._check(position, 1)
        if not 0 <= top <= MAX_CANDIDATES:
            raise InvalidArgument(f"top must be within 0..{MAX_CANDIDATES}, got {top}")
        template = self._batch_templates.get((rows, max_rows, top))
        if template is None:
            bindings = batch_bindings(self.plan, rows)
            slots = {name: index for index, (name, _) in enumerate(bindings)}
            # compiled with every row at a distinct position, which tells the template which
            # row each position field belongs to
            synthetic = list(range(rows))
            prog = self._rows_program(
                [
                    _Row(slots[row_buffers(r)[0]], slots[row_buffers(r)[1]], r, 1, r)
                    for r in synthetic
                ],
                decode_scratch(self.config, max_rows),
                slots,
                scratch_name=DECODE_SCRATCH,
                emit=True,
                top=top,
                argmax=True,
            )
            tokens_slots = [slots[row_buffers(r)[0]] for r in synthetic]
            template = DecodeTemplate(
                prog.instructions, prog.encode(validate=True), synthetic, tokens_slots
            )
            self._batch_templates[rows, max_rows, top] = template
        return Step(
            StepKind.DECODE,
            min(positions),
            rows,
            template.at(positions),
            batch_bindings(self.plan, rows),
            None,
            "decode",
        )

    def mixed_batch(self, rows: Sequence[tuple[int, int]], *, max_rows: int, top: int = 0) -> Step:
        """One step over sequences given as ``(start, n_tokens)`` per row, as ONE job: decoding
        rows of one token and joining rows carrying the last chunk of their prompt, each
        emitting its next id into ``tokens#r[start + n]``. Bindings as
        :meth:`decode_batch`, ``top`` too; all rows of one token is exactly
        :meth:`decode_batch`.

        Raises:
            InvalidArgument: no rows, more tokens than ``max_rows``, a row of more tokens than
                the plan's chunk, positions past the cache, or ``top`` outside
                0..MAX_CANDIDATES.
        """
        if all(n == 1 for _, n in rows):
            return self.decode_batch([start for start, _ in rows], max_rows=max_rows, top=top)
        if not 0 <= top <= MAX_CANDIDATES:
            raise InvalidArgument(f"top must be within 0..{MAX_CANDIDATES}, got {top}")
        total = sum(n for _, n in rows)
        if not rows or total > max_rows or len(rows) > max_rows:
            raise InvalidArgument(f"a batched step holds 1..{max_rows} tokens, got {total}")
        for start, n in rows:
            self._check(start, n)
        bindings = batch_bindings(self.plan, len(rows))
        slots = {name: index for index, (name, _) in enumerate(bindings)}
        placed, first = [], 0
        for r, (start, n) in enumerate(rows):
            tokens_name, kv_name = row_buffers(r)
            placed.append(_Row(slots[tokens_name], slots[kv_name], start, n, first))
            first += n
        prog = self._rows_program(
            placed,
            decode_scratch(self.config, max_rows),
            slots,
            scratch_name=DECODE_SCRATCH,
            emit=True,
            top=top,
            argmax=True,
        )
        shape = (-len(rows), top, *(n for _, n in rows))
        command = prog.encode(validate=shape not in self._validated)
        self._validated.add(shape)
        return Step(
            StepKind.DECODE, min(s for s, _ in rows), len(rows), command, bindings, None, "decode"
        )
