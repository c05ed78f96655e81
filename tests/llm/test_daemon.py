"""The LLM workload through a real npud daemon (a subprocess on a temporary socket)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from npud.client import BufferUsage, Client, JobState, Persistence, SchedulingClass, connect
from npud.llm.daemon import KEY_PREFIX, DaemonBackend
from npud.llm.generator import Generator
from npud.llm.model import Model
from npud.llm.tiny import make_tiny
from npud.llm.tokenizer import ByteTokenizer
from npud.llm.weights import WEIGHTS_FILE
from tests.llm.reference import ReferenceLlama

pytestmark = pytest.mark.slow

TOK = ByteTokenizer()
LONG = "The quick brown fox jumps over the lazy dog."  # 45 tokens: three prefill chunks


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A daemon serving a simulated NPU on a private socket; yields the socket path."""
    tmp = tmp_path_factory.mktemp("npud")
    socket = tmp / "npud.sock"
    log = (tmp / "npud.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "npud.daemon.main", "--socket", str(socket), "--device", "sim"],
        env=dict(os.environ, NPUD_STATE_DIR=str(tmp / "state")),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while not socket.exists():
            assert proc.poll() is None, (tmp / "npud.log").read_text()
            assert time.monotonic() < deadline, "npud did not bind its socket in 30 s"
            time.sleep(0.05)
        yield socket
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


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
def test_tokens_through_the_daemon_match_the_reference(
    daemon: Path, tiny_model: Model, reference: ReferenceLlama, text: str
) -> None:
    """Generation through npud equals the numpy reference, token for token."""
    prompt = TOK.encode(text)
    with Generator(tiny_model, DaemonBackend(socket_path=daemon), max_seq=128) as gen:
        result = gen.generate(prompt, 20, stop_at_eos=False)
    assert list(result.tokens) == reference.generate(prompt, 20)
    assert result.stats.ttft_s > 0
    assert len(result.stats.inter_token_s) == 19


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
