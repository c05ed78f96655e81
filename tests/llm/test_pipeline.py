"""Pipelined decode on the direct backend: steps in flight, and failures while one is in flight."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from npud.errors import DeviceLost, InvalidArgument, JobFailed
from npud.llm.compiler import Step, StepKind
from npud.llm.direct import DirectBackend, DirectTicket
from npud.llm.generator import DEFAULT_DEPTH, Generator
from npud.llm.model import Model
from npud.llm.tokenizer import ByteTokenizer
from tests.llm.reference import ReferenceLlama

TOK = ByteTokenizer()
PROMPT = TOK.encode("Hello, npud!")  # 13 tokens: one prefill chunk


class _Recording(DirectBackend):
    """A direct backend that records how many decode steps were in flight at each submit."""

    def __init__(self) -> None:
        inner = DirectBackend.on_sim()
        super().__init__(inner.device, clock=inner.clock)
        self._owned = True  # close the simulated device with the backend
        self.pending: set[int] = set()
        self.in_flight_at_submit: list[int] = []
        self.order: list[str] = []  # "submit p" / "wait p" / "abandon p" for decode steps

    def submit(self, steps: Sequence[Step]) -> DirectTicket:
        ticket = super().submit(steps)
        for step in steps:
            if step.kind is StepKind.DECODE:
                self.pending.add(id(ticket))
                self.in_flight_at_submit.append(len(self.pending))
                self.order.append(f"submit {step.start_pos}")
        return ticket

    def wait(self, ticket: DirectTicket) -> bytes | None:
        self._forget(ticket, "wait")
        return super().wait(ticket)

    def abandon(self, tickets: Sequence[DirectTicket], *, cancel: bool) -> None:
        for ticket in tickets:
            self._forget(ticket, "abandon")
        super().abandon(tickets, cancel=cancel)

    def _forget(self, ticket: DirectTicket, verb: str) -> None:
        if id(ticket) in self.pending:
            self.pending.discard(id(ticket))
            self.order.append(f"{verb} {ticket.steps[0].start_pos}")


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_depth_steps_are_kept_in_flight(
    tiny_model: Model, reference: ReferenceLlama, depth: int
) -> None:
    """At depth d the generator submits step p+d-1 before waiting for step p's id (never more
    than d in flight), waits in submission order, and still produces the reference's ids."""
    backend = _Recording()
    with Generator(tiny_model, backend, max_seq=64, depth=depth) as gen:
        result = gen.generate(PROMPT, 8, stop_at_eos=False)
    assert list(result.tokens) == reference.generate(PROMPT, 8)
    assert max(backend.in_flight_at_submit) == depth
    assert len(backend.in_flight_at_submit) == 7  # decode steps: one per id after the first
    positions = range(len(PROMPT), len(PROMPT) + 7)
    waits = [e for e in backend.order if e.startswith("wait")]
    assert waits == [f"wait {p}" for p in positions]
    # step p+depth is submitted only after step p's id is back
    for p in positions:
        if p + depth in positions:
            assert backend.order.index(f"wait {p}") < backend.order.index(f"submit {p + depth}")
        if p + depth - 1 in positions:
            assert backend.order.index(f"submit {p + depth - 1}") < backend.order.index(f"wait {p}")


def test_default_depth_is_two(tiny_model: Model) -> None:
    """Without a depth, a generator keeps two decode steps in flight."""
    backend = _Recording()
    with Generator(tiny_model, backend, max_seq=64) as gen:
        gen.generate(PROMPT, 5, stop_at_eos=False)
        assert gen.statistics().depth == DEFAULT_DEPTH == 2
    assert max(backend.in_flight_at_submit) == 2


@pytest.mark.parametrize("depth", [0, -1, 1.5, True])
def test_bad_depths_are_refused(tiny_model: Model, depth: Any) -> None:
    """A depth that is not an integer >= 1 is refused, at construction and per call."""
    with pytest.raises(InvalidArgument, match="depth"):
        Generator(tiny_model, DirectBackend.on_sim(), max_seq=64, depth=depth)
    with (
        Generator(tiny_model, DirectBackend.on_sim(), max_seq=64) as gen,
        pytest.raises(InvalidArgument, match="depth"),
    ):
        gen.generate(PROMPT, 4, depth=depth)
    assert gen.statistics().steps == 0


def test_failed_step_cancels_the_step_behind_it(
    tiny_model: Model, reference: ReferenceLlama
) -> None:
    """A decode step the device fails while the next is in flight raises that step's
    JobFailed; the step behind it is aborted and has ended when generate raises, and the
    generator runs the next sequence exactly."""
    backend = DirectBackend.on_sim()
    device: Any = backend.device
    with Generator(tiny_model, backend, max_seq=64, depth=2) as gen:
        before = device.statistics()

        seen: list[int] = []

        def fail_first_decode_step(token: int) -> None:
            seen.append(token)
            if len(seen) == 1:  # the prefill's id: no decode step submitted yet
                device.inject_job_error(message="parity error")

        with pytest.raises(JobFailed, match=rf"decode@{len(PROMPT)}: error: parity error"):
            gen.generate(PROMPT, 8, stop_at_eos=False, on_token=fail_first_decode_step)
        after = device.statistics()
        assert after.failed - before.failed == 1
        assert after.aborted - before.aborted == 1  # the step behind the failed one
        assert after.in_flight == 0
        stats = backend.statistics()
        assert stats.steps_submitted == stats.steps_completed
        assert gen.statistics().discarded == 1
        assert len(seen) == 1
        again = gen.generate(PROMPT, 6, stop_at_eos=False)
    assert list(again.tokens) == reference.generate(PROMPT, 6)


def test_device_loss_mid_pipeline_raises_device_lost(tiny_model: Model) -> None:
    """Losing the device with a decode step in flight raises DeviceLost and leaves no step
    pending on the backend (nothing to hang on)."""
    backend = DirectBackend.on_sim()
    device: Any = backend.device
    seen: list[int] = []

    def lose_after_first_decoded_id(token: int) -> None:
        seen.append(token)
        if len(seen) == 2:  # step 1's id is back, step 2 is in flight
            device.lose("unplugged")

    with Generator(tiny_model, backend, max_seq=64, depth=2) as gen:
        with pytest.raises(DeviceLost):
            gen.generate(PROMPT, 8, stop_at_eos=False, on_token=lose_after_first_decoded_id)
        stats = backend.statistics()
        assert stats.steps_submitted == stats.steps_completed
        assert gen.statistics().discarded >= 1
    assert len(seen) == 2
