"""The memory plan and the compiler: layout, content keys, and what each step touches."""

from __future__ import annotations

import numpy as np
import pytest

from npud.errors import InvalidArgument
from npud.isa import accesses, decode
from npud.llm.compiler import Access, Compiler, StepKind
from npud.llm.model import Model
from npud.llm.plan import GLOBAL, KV, SCRATCH, TOKENS, BufferKind, layer_buffer, plan_memory


def test_slots_are_fixed_and_weights_packed_per_layer(tiny_model: Model) -> None:
    """Slots: tokens, kv, scratch, global weights, then one weights buffer per layer."""
    plan = plan_memory(tiny_model, max_seq=64)
    names = [spec.name for spec in plan.buffers]
    assert names == [TOKENS, KV, SCRATCH, GLOBAL, layer_buffer(0), layer_buffer(1)]
    kinds = [spec.kind for spec in plan.buffers]
    assert kinds[:3] == [BufferKind.STATE, BufferKind.STATE, BufferKind.SCRATCH]
    assert all(kind is BufferKind.WEIGHTS for kind in kinds[3:])
    cfg = tiny_model.config
    assert plan.buffers[1].size == 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * 64 * 32 * 4
    assert plan.weight_bytes >= 4 * tiny_model.parameter_count


def test_packs_hold_the_tensors_bit_exact(tiny_model: Model) -> None:
    """Every tensor can be read back from its pack at its planned offset, bit-exact (f32)."""
    plan = plan_memory(tiny_model)
    packs = {p.name: p for p in plan.packs()}
    for name, placed in plan.weights.items():
        data = packs[placed.buffer].data
        count = int(np.prod(placed.shape))
        got = np.frombuffer(data, "<f4", count=count, offset=placed.offset).reshape(placed.shape)
        np.testing.assert_array_equal(got, tiny_model.tensors[name])
        assert placed.offset % 64 == 0


def test_keys_are_content_hashes(tiny_model: Model) -> None:
    """Equal weights give equal keys; changing one layer changes only that layer's key."""
    first = {p.name: p.key for p in plan_memory(tiny_model).packs()}
    again = {p.name: p.key for p in plan_memory(tiny_model, max_seq=32, chunk=4).packs()}
    assert first == again
    tensors = dict(tiny_model.tensors)
    name = "model.layers.1.mlp.up_proj.weight"
    tensors[name] = tensors[name].copy()
    tensors[name][0, 0] += 1.0
    changed = {p.name: p.key for p in plan_memory(Model(tiny_model.config, tensors)).packs()}
    assert changed[layer_buffer(1)] != first[layer_buffer(1)]
    assert {k: v for k, v in changed.items() if k != layer_buffer(1)} == {
        k: v for k, v in first.items() if k != layer_buffer(1)
    }
    f16 = {p.name: p.key for p in plan_memory(tiny_model, weight_dtype="f16").packs()}
    assert set(f16.values()).isdisjoint(first.values())


@pytest.mark.parametrize(("n", "emit"), [(16, False), (5, True), (1, True)])
def test_steps_validate_and_never_write_weights(tiny_model: Model, n: int, emit: bool) -> None:
    """Each step decodes against the plan's buffer sizes and writes only state and scratch."""
    plan = plan_memory(tiny_model, max_seq=64)
    compiler = Compiler(tiny_model.config, plan)
    step = compiler.step(3, n, emit_token=emit, kind=StepKind.PREFILL)
    instructions = decode(step.command, [spec.size for spec in plan.buffers])
    written = {a.tensor.slot for ins in instructions for a in accesses(ins) if a.write}
    assert written <= {plan.slot(TOKENS), plan.slot(KV), plan.slot(SCRATCH)}
    for slot, (name, access) in enumerate(step.bindings):
        assert name == plan.buffers[slot].name
        assert (access is Access.READ) == (plan.buffers[slot].kind is BufferKind.WEIGHTS)
    if emit:
        assert step.readback is not None
        assert step.readback.offset == (3 + n) * 4
        assert instructions[-1].op.name == "ARGMAX"
    else:
        assert step.readback is None


def test_prefill_chunks_cover_the_prompt(tiny_model: Model) -> None:
    """A 37-token prompt in chunks of 16 is 16+16+5 tokens; only the last emits a token."""
    compiler = Compiler(tiny_model.config, plan_memory(tiny_model, max_seq=64, chunk=16))
    steps = compiler.prefill(37)
    assert [(s.start_pos, s.n_tokens) for s in steps] == [(0, 16), (16, 16), (32, 5)]
    assert [s.readback is not None for s in steps] == [False, False, True]
    assert [s.label for s in steps] == ["prefill[0:16]", "prefill[16:32]", "prefill[32:37]"]
    assert compiler.decode(37).label == "decode@37"
    assert compiler.decode(37).kind is StepKind.DECODE


def test_steps_that_do_not_fit_are_refused(tiny_model: Model) -> None:
    """Steps past the cache or larger than a chunk, and bad plans, are InvalidArgument."""
    compiler = Compiler(tiny_model.config, plan_memory(tiny_model, max_seq=32, chunk=8))
    with pytest.raises(InvalidArgument, match="KV cache"):
        compiler.decode(32)
    with pytest.raises(InvalidArgument, match=r"1\.\.8 tokens"):
        compiler.step(0, 9, emit_token=False, kind=StepKind.PREFILL)
    with pytest.raises(InvalidArgument, match="max_position_embeddings"):
        plan_memory(tiny_model, max_seq=10_000)
    with pytest.raises(InvalidArgument, match="chunk"):
        plan_memory(tiny_model, chunk=0)
