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
from dataclasses import dataclass

from npud.errors import InvalidArgument
from npud.isa import DType, Program, Tensor
from npud.llm.config import ModelConfig
from npud.llm.plan import KV, SCRATCH, TOKENS, BufferKind, MemoryPlan
from npud.llm.template import DecodeTemplate


class StepKind(enum.StrEnum):
    """What a step is for; it decides the scheduling class through the daemon."""

    PREFILL = "prefill"  # THROUGHPUT: chunks of the prompt
    DECODE = "decode"  # LATENCY: one token


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


class Compiler:
    """Builds :class:`Step` programs for one model and memory plan (pure; no device needed)."""

    __slots__ = ("_decode_template", "_validated", "config", "plan")

    def __init__(self, config: ModelConfig, plan: MemoryPlan) -> None:
        self.config = config
        self.plan = plan
        self._validated: set[tuple[int, bool]] = set()
        self._decode_template: DecodeTemplate | None = None

    def _w(self, name: str) -> Tensor:
        placed = self.plan.weights[name]
        return placed.ref(self.plan.slot(placed.buffer))

    def _kv(self, layer: int, which: int) -> Tensor:
        cfg = self.config
        offset = (2 * layer + which) * self.plan.kv_bytes
        shape = (cfg.num_key_value_heads, self.plan.max_seq, cfg.head_dim)
        return Tensor(self.plan.slot(KV), offset, shape, DType.F32)

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
    ) -> Step:
        """Compile ``n_tokens`` tokens starting at ``start_pos``.

        Args:
            start_pos: position of the first token (its id is read from ``tokens[start_pos]``).
            n_tokens: tokens in this step, at most the plan's chunk size.
            emit_token: end with the head and ARGMAX of the last token into
                ``tokens[start_pos + n_tokens]``.
            kind: prefill or decode (a label for scheduling; the program is the same).
            chunk: the prefill chunk size this step belongs to (its tag); the plan's default.

        Raises:
            InvalidArgument: the step does not fit the plan (too many tokens, or positions past
                the KV cache length).
        """
        self._check(start_pos, n_tokens)
        prog, readback = self._program(start_pos, n_tokens, emit_token=emit_token)
        # Why validate only the first step of each shape: positions enter a program only as
        # start_pos parameters and token offsets, both bounds-checked above, so once a
        # (n_tokens, emit_token) shape passed the decoder every other position would too;
        # skipping the decoder makes a decode step ~10x cheaper to compile.
        shape = (n_tokens, emit_token)
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
        self, start_pos: int, n_tokens: int, *, emit_token: bool
    ) -> tuple[Program, Readback | None]:
        cfg, plan = self.config, self.plan
        end = start_pos + n_tokens
        n, s = n_tokens, plan.scratch
        scratch = plan.slot(SCRATCH)

        def act(name: str, rows: int = n, row: int = 0) -> Tensor:
            return s.ref(scratch, name, rows, row=row)

        prog = Program()
        ids = Tensor(plan.slot(TOKENS), start_pos * 4, (n,), DType.I32)
        prog.embed(out=act("x0"), table=self._w("model.embed_tokens.weight"), ids=ids)
        x, x_next = "x0", "x1"
        eps = cfg.rms_norm_eps
        for layer in range(cfg.num_hidden_layers):
            p = f"model.layers.{layer}."
            prog.rmsnorm(out=act("h"), x=act(x), w=self._w(p + "input_layernorm.weight"), eps=eps)
            for proj, out in (("q_proj", "q"), ("k_proj", "k"), ("v_proj", "v")):
                w = self._w(f"{p}self_attn.{proj}.weight")
                prog.matmul(out=act(out), a=act("h"), b=w, transpose_b=True)
            for src, dst, heads in (
                ("q", "q_rot", cfg.num_attention_heads),
                ("k", "k_rot", cfg.num_key_value_heads),
            ):
                prog.rope(
                    out=act(dst),
                    x=act(src),
                    n_heads=heads,
                    head_dim=cfg.head_dim,
                    start_pos=start_pos,
                    theta=cfg.rope_theta,
                )
            k_cache, v_cache = self._kv(layer, 0), self._kv(layer, 1)
            prog.kv_write(cache=k_cache, src=act("k_rot"), start_pos=start_pos)
            prog.kv_write(cache=v_cache, src=act("v"), start_pos=start_pos)
            prog.attention(
                out=act("attn"),
                q=act("q_rot"),
                k_cache=k_cache,
                v_cache=v_cache,
                n_heads=cfg.num_attention_heads,
                n_kv_heads=cfg.num_key_value_heads,
                head_dim=cfg.head_dim,
                start_pos=start_pos,
            )
            wo = self._w(p + "self_attn.o_proj.weight")
            prog.matmul(out=act("proj"), a=act("attn"), b=wo, transpose_b=True)
            prog.add(out=act(x_next), a=act(x), b=act("proj"))
            x, x_next = x_next, x
            w_post = self._w(p + "post_attention_layernorm.weight")
            prog.rmsnorm(out=act("h"), x=act(x), w=w_post, eps=eps)
            for proj, out in (("gate_proj", "gate"), ("up_proj", "up")):
                w = self._w(f"{p}mlp.{proj}.weight")
                prog.matmul(out=act(out), a=act("h"), b=w, transpose_b=True)
            prog.silu(out=act("act"), x=act("gate"))
            prog.mul(out=act("mlp"), a=act("act"), b=act("up"))
            wd = self._w(p + "mlp.down_proj.weight")
            prog.matmul(out=act("proj"), a=act("mlp"), b=wd, transpose_b=True)
            prog.add(out=act(x_next), a=act(x), b=act("proj"))
            x, x_next = x_next, x
        readback = None
        if emit_token:
            last = act(x, rows=1, row=n - 1)
            prog.rmsnorm(out=act("final", 1), x=last, w=self._w("model.norm.weight"), eps=eps)
            head = self._w("lm_head.weight")
            prog.matmul(out=act("logits", 1), a=act("final", 1), b=head, transpose_b=True)
            out_id = Tensor(plan.slot(TOKENS), end * 4, (1,), DType.I32)
            prog.argmax(out=out_id, x=act("logits", 1))
            readback = Readback(TOKENS, end * 4, 4)
        return prog, readback

    def prefill(
        self, prompt_len: int, *, start_pos: int = 0, chunk: int | None = None
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
            steps.append(self.step(begin, n, emit_token=last, kind=StepKind.PREFILL, chunk=size))
        return steps

    def decode(self, position: int) -> Step:
        """The decode step for the token at ``position`` (read from ``tokens[position]``).

        The first decode step is compiled (and validated) in full and kept as a
        :class:`~npud.llm.template.DecodeTemplate`; later ones are that template patched to
        their position, the same bytes a full compile would give.

        Raises:
            InvalidArgument: ``position`` is past the KV cache.
        """
        self._check(position, 1)
        template = self._decode_template
        if template is None:
            prog, _ = self._program(position, 1, emit_token=True)
            template = DecodeTemplate(
                prog.instructions, prog.encode(validate=True), position, self.plan.slot(TOKENS)
            )
            self._decode_template = template
        return Step(
            StepKind.DECODE,
            position,
            1,
            template.at(position),
            self._bindings(),
            Readback(TOKENS, (position + 1) * 4, 4),
            "decode",
        )
