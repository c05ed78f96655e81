"""The LLM workload through a real npud daemon (a subprocess on a temporary socket)."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from npud.client import BufferUsage, Client, JobState, Persistence, SchedulingClass, connect
from npud.errors import JobTimedOut
from npud.isa import Program
from npud.llm.compiler import Step, StepKind
from npud.llm.daemon import KEY_PREFIX, DaemonBackend, DaemonTicket
from npud.llm.generator import Generator, StopReason
from npud.llm.model import Model
from npud.llm.tiny import make_tiny
from npud.llm.tokenizer import ByteTokenizer
from npud.llm.weights import WEIGHTS_FILE
from tests.llm.reference import ReferenceLlama

pytestmark = pytest.mark.slow

TOK = ByteTokenizer()
LONG = "The quick brown fox jumps over the lazy dog."  # 45 tokens: three prefill chunks


@pytest.fixture
def client(daemon: Path) -> Iterator[Client]:
    """A client connection to the test daemon."""
    with connect(daemon) as npu:
        yield npu


def _cli(
    socket: Path, model_dir: Path, prompt: str, tokens: int
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "npud.llm.cli",
            "run",
            "--socket",
            str(socket),
            "--model",
            str(model_dir),
            "--prompt",
            prompt,
            "--max-tokens",
            str(tokens),
            "--no-eos",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.parametrize("text", ["Hello, npud!", LONG])
@pytest.mark.parametrize("depth", [1, 2])
def test_tokens_through_the_daemon_match_the_reference(
    daemon: Path, tiny_model: Model, reference: ReferenceLlama, text: str, depth: int
) -> None:
    """Generation through npud equals the numpy reference, token for token, with each step
    waited for (depth 1) or pipelined on the submit stream (depth 2), for 20 ids and for 2."""
    prompt = TOK.encode(text)
    backend = DaemonBackend(socket_path=daemon)
    with Generator(tiny_model, backend, max_seq=128, depth=depth) as gen:
        result = gen.generate(prompt, 20, stop_at_eos=False)
        short = gen.generate(prompt, 2, stop_at_eos=False)
        stats = backend.statistics()
    assert list(result.tokens) == reference.generate(prompt, 20)
    assert list(short.tokens) == reference.generate(prompt, 2)
    assert result.stats.ttft_s > 0
    assert len(result.stats.inter_token_s) == 19
    assert stats.steps_submitted == stats.steps_completed
    assert gen.statistics().discarded == 0


@pytest.mark.parametrize("depth", [1, 2, 3])
def test_eos_through_the_daemon_drops_the_steps_past_it(
    daemon: Path, client: Client, tiny_model: Model, reference: ReferenceLlama, depth: int
) -> None:
    """Through npud, generation stops at EOS with the reference's ids; the depth - 1 steps
    pipelined past it have completed (none left running) when generate returns, and the next
    sequence on the same context is exact."""
    prompt = TOK.encode("Hello, npud!")
    expected = reference.generate(prompt, 8)
    eos = expected[4]
    config = dataclasses.replace(tiny_model.config, eos_token_id=eos)
    backend = DaemonBackend(client)
    with Generator(Model(config, tiny_model.tensors), backend, max_seq=64, depth=depth) as gen:
        result = gen.generate(prompt, 20)
        assert backend.context_id is not None
        decode = [j for j in client.jobs(backend.context_id) if j.kind == "decode"]
        again = gen.generate(TOK.encode(LONG), 6, stop_at_eos=False)
    assert list(result.tokens) == expected[: expected.index(eos) + 1]
    assert result.stop is StopReason.EOS
    assert len(decode) == len(result.tokens) - 1 + depth - 1
    assert {j.state for j in decode} == {JobState.COMPLETED}
    assert gen.statistics().discarded == depth - 1
    assert list(again.tokens) == reference.generate(TOK.encode(LONG), 6)


class _Watchdogged(DaemonBackend):
    """A daemon backend whose decode steps ``fail_at`` and ``fail_at + 1`` are 5 s BURNs: the
    first with a 0.3 s watchdog (it times out), the second with a generous one (it would run
    its 5 s unless cancelled)."""

    def __init__(self, client: Client, fail_at: int) -> None:
        super().__init__(client)
        self.fail_at = fail_at
        self.decode_steps = 0

    def submit(self, steps: Sequence[Step]) -> DaemonTicket:
        if len(steps) != 1 or steps[0].kind is not StepKind.DECODE:
            return super().submit(steps)
        self.decode_steps += 1
        n = self.decode_steps - self.fail_at
        if n not in (0, 1):
            return super().submit(steps)
        burn = dataclasses.replace(steps[0], command=Program().burn(5.0).encode())
        self.job_timeout_s = 0.3 if n == 0 else 9.0  # under the 10 s LATENCY ceiling
        try:
            return super().submit([burn])
        finally:
            self.job_timeout_s = 0.0


def test_watchdog_on_a_step_cancels_the_one_in_flight_behind_it(
    daemon: Path, client: Client, tiny_model: Model, reference: ReferenceLlama
) -> None:
    """A decode step npud's watchdog kills while the next step is in flight raises that
    step's JobTimedOut; the step behind it is cancelled (not left to run out its 5 s), no job
    of the context is left unfinished, and the same generator then runs a sequence exactly."""
    backend = _Watchdogged(client, fail_at=3)
    prompt = TOK.encode("Hello, npud!")
    with Generator(tiny_model, backend, max_seq=64, depth=2) as gen:
        failed_at = len(prompt) + 2  # the third decode step's input position
        with pytest.raises(JobTimedOut, match=f"decode@{failed_at}: JobTimedOut"):
            gen.generate(prompt, 10, stop_at_eos=False)
        assert backend.context_id is not None
        decode = [j for j in client.jobs(backend.context_id) if j.kind == "decode"]
        stats = backend.statistics()
        assert stats.steps_submitted == stats.steps_completed
        assert gen.statistics().discarded == 1
        again = gen.generate(prompt, 5, stop_at_eos=False)
    states = [j.state for j in sorted(decode, key=lambda j: int(j.label.split("@")[1]))]
    assert states == [
        JobState.COMPLETED,
        JobState.COMPLETED,
        JobState.TIMED_OUT,
        JobState.CANCELLED,
    ]
    assert list(again.tokens) == reference.generate(prompt, 5)


def test_jobs_and_buffers_have_the_right_classes(
    daemon: Path, client: Client, tiny_model: Model
) -> None:
    """Prefill chunks are THROUGHPUT jobs (kind tagged with the chunk size), decode steps
    LATENCY jobs; the KV cache is a STATE buffer and the weights PERSISTENT, keyed by content."""
    backend = DaemonBackend(client)
    with Generator(tiny_model, backend, max_seq=64) as gen:
        gen.generate(TOK.encode(LONG), 5, stop_at_eos=False)
        assert backend.context_id is not None
        jobs = client.jobs(backend.context_id)
        buffers = {b.buffer_id: b for b in client.buffers(backend.context_id)}
        plan_buffers = backend.buffers
    prefill = [j for j in jobs if j.kind == "prefill/16"]
    decode = [j for j in jobs if j.kind == "decode"]
    assert len(prefill) == 3
    assert len(decode) == 4
    assert {j.scheduling_class for j in prefill} == {SchedulingClass.THROUGHPUT}
    assert {j.scheduling_class for j in decode} == {SchedulingClass.LATENCY}
    assert {j.state for j in jobs} == {JobState.COMPLETED}
    kv = buffers[plan_buffers["kv"].buffer_id]
    assert kv.usage is BufferUsage.STATE
    weights = [
        buffers[b.buffer_id] for name, b in plan_buffers.items() if name.startswith("weights")
    ]
    assert len(weights) == 3
    for buf in weights:
        assert buf.persistence is Persistence.PERSISTENT
        assert buf.key.startswith(KEY_PREFIX + "sha256:")


def test_second_process_uploads_no_weight_bytes(
    daemon: Path, client: Client, tmp_path: Path
) -> None:
    """A second process running the same model attaches the persistent weights: 0 bytes, by
    the client's count and by the daemon's statistics (uploaded weight bytes unchanged,
    attaches up by one per weight pack)."""
    model_dir = make_tiny(tmp_path / "fresh", seed=4242)  # weights no earlier test uploaded
    before = client.stats().devices[0]
    first = _cli(daemon, model_dir, "shared weights", 8)
    assert first.returncode == 0, first.stderr
    after_first = client.stats().devices[0]
    second = _cli(daemon, model_dir, "shared weights", 8)
    assert second.returncode == 0, second.stderr
    after_second = client.stats().devices[0]
    one, two = json.loads(first.stdout), json.loads(second.stdout)
    assert one["weight_packs_uploaded"] == 3
    assert one["weight_bytes_uploaded"] > 1_000_000
    assert two["weight_bytes_uploaded"] == 0
    assert two["weight_packs_reused"] == 3
    # the daemon created three persistent buffers, and none for the second process
    assert after_first.persistent_buffers == before.persistent_buffers + 3
    assert after_second.persistent_buffers == after_first.persistent_buffers
    # the daemon's own statistics: the first process's weight bytes arrived, the second's not
    uploaded = after_first.residency.uploaded_weight_bytes - before.residency.uploaded_weight_bytes
    assert uploaded == one["weight_bytes_uploaded"]
    assert (
        after_second.residency.uploaded_weight_bytes == after_first.residency.uploaded_weight_bytes
    )
    assert after_second.residency.attaches == after_first.residency.attaches + 3
    assert two["token_ids"] == one["token_ids"]


def test_bad_model_leaves_the_daemon_unaffected(
    daemon: Path, client: Client, tiny_dir: Path, tmp_path: Path
) -> None:
    """A truncated model fails in the client naming file and tensor; npud keeps serving."""
    bad = tmp_path / "bad"
    shutil.copytree(tiny_dir, bad)
    (bad / WEIGHTS_FILE).write_bytes((bad / WEIGHTS_FILE).read_bytes()[:-5000])
    contexts_before = client.stats().devices[0].contexts
    failed = _cli(daemon, bad, "x", 4)
    assert failed.returncode == 2
    assert str(bad / WEIGHTS_FILE) in failed.stderr
    assert "tensor 'model." in failed.stderr
    assert client.stats().devices[0].contexts == contexts_before
    ok = _cli(daemon, tiny_dir, "still serving", 4)
    assert ok.returncode == 0, ok.stderr
    assert len(json.loads(ok.stdout)["token_ids"]) == 4
