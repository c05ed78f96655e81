"""Decode templates: a patched decode step is byte for byte the step a full compile gives."""

from __future__ import annotations

import pytest

from npud.errors import InvalidArgument
from npud.isa import Program
from npud.isa.decode import decode
from npud.llm.compiler import Compiler, StepKind
from npud.llm.model import Model
from npud.llm.plan import TOKENS, plan_memory
from npud.llm.template import DecodeTemplate


@pytest.mark.parametrize("first", [0, 7, 63])
def test_every_position_equals_a_full_compile(tiny_model: Model, first: int) -> None:
    """Whatever position the template was made at, the decode step at every position of the
    cache equals Compiler.step's full compile of it (command, readback, bindings, tag)."""
    plan = plan_memory(tiny_model, max_seq=64)
    templated, full = Compiler(tiny_model.config, plan), Compiler(tiny_model.config, plan)
    templated.decode(first)
    for position in range(plan.max_seq):
        got = templated.decode(position)
        want = full.step(position, 1, emit_token=True, kind=StepKind.DECODE)
        assert got == want, position


def test_patched_steps_pass_the_validating_decoder(tiny_model: Model) -> None:
    """A patched step is a valid stream whose operands lie inside the plan's buffers: the
    device's validating decoder accepts it at the cache's first, middle and last position."""
    plan = plan_memory(tiny_model, max_seq=64)
    sizes = [spec.size for spec in plan.buffers]
    compiler = Compiler(tiny_model.config, plan)
    compiler.decode(3)
    for position in (0, 31, 63):
        assert len(decode(compiler.decode(position).command, sizes)) > 0


def test_positions_past_the_cache_are_refused(tiny_model: Model) -> None:
    """The template does not bypass the bounds check: a position past the cache is refused."""
    plan = plan_memory(tiny_model, max_seq=64)
    compiler = Compiler(tiny_model.config, plan)
    compiler.decode(0)
    with pytest.raises(InvalidArgument, match="KV cache"):
        compiler.decode(64)


def test_a_command_that_is_not_the_instructions_is_refused(tiny_model: Model) -> None:
    """A template whose bytes disagree with its instructions' layout is refused, not patched."""
    prog = Program().burn(1.0)
    command = prog.encode()
    with pytest.raises(InvalidArgument, match="layout"):
        DecodeTemplate(
            prog.instructions, command + b"\0" * 4, 0, plan_memory(tiny_model).slot(TOKENS)
        )
