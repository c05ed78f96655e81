"""Persistent weights under attack: another uid tries to overwrite or squat the weights an
``npud-llm`` victim decodes with, and the victim's tokens stay the reference's.

The victim is this (root) process running the tiny model through the daemon backend; the
attacker is an unprivileged actor (uid 65534) that knows the model too (its content keys are
a pure function of the public weights).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import npud.client
from npud.client import BufferUsage, Persistence
from npud.errors import AlreadyExists
from npud.llm.daemon import KEY_PREFIX, DaemonBackend
from npud.llm.generator import Generator
from npud.llm.model import load_model
from npud.llm.plan import plan_memory
from npud.llm.tiny import make_tiny
from npud.llm.tokenizer import ByteTokenizer
from npud.testing.daemon import DaemonProcess
from tests.llm.reference import ReferenceLlama
from tests.reliability.harness import (
    NOBODY,
    Actor,
    launch,
    own_daemon,
    restart,
    world_reachable_dir,
)

pytestmark = pytest.mark.slow

PROMPT = ByteTokenizer().encode("tenants")
TOKENS = 6


@pytest.fixture(scope="module")
def own() -> Iterator[DaemonProcess]:
    """A daemon of this module alone: the weights these tests seal stay warm in it, and must
    not change what other tests' allocations find."""
    with own_daemon("npud-share-") as daemon:
        yield daemon


@pytest.fixture
def root(own: DaemonProcess) -> Iterator[npud.client.Client]:
    """A root client of the module's daemon."""
    with npud.client.connect(own.socket) as client:
        yield client


@pytest.fixture
def attacker(own: DaemonProcess) -> Iterator[Actor]:
    actor = Actor(own.socket, NOBODY)
    yield actor
    actor.close()


def _decode(socket: Path, model_dir: Path) -> tuple[list[int], int]:
    """The victim's run: its token ids and the weight bytes it uploaded."""
    backend = DaemonBackend(socket_path=socket)
    with Generator(load_model(model_dir), backend, max_seq=32) as gen:
        tokens = list(gen.generate(PROMPT, TOKENS, stop_at_eos=False).tokens)
        uploaded = backend.statistics().weight_bytes_uploaded
    return tokens, uploaded


def _packs(model_dir: Path) -> dict[str, int]:
    """The model's weight keys as npud-llm names them, and their sizes."""
    plan = plan_memory(load_model(model_dir), max_seq=32)
    return {KEY_PREFIX + s.pack.key: s.size for s in plan.buffers if s.pack is not None}


def test_another_user_cannot_overwrite_sealed_weights(
    own: DaemonProcess, attacker: Actor, tmp_path: Path
) -> None:
    """After the victim's first run the attacker opens every weight key and writes zeros: each
    write is refused (FAILED_PRECONDITION, sealed) and the victim's second run attaches the
    weights (0 bytes uploaded) and decodes the reference's ids again."""
    model_dir = make_tiny(tmp_path / "model", seed=2101)
    expected = ReferenceLlama(model_dir).generate(PROMPT, TOKENS)
    first, uploaded = _decode(own.socket, model_dir)
    assert first == expected
    assert uploaded > 0
    ctx = attacker.ok("create_context", label="attacker")["context_id"]
    writes = {}
    for key, size in _packs(model_dir).items():
        buf = attacker.ok("open_persistent", ctx, key)
        writes[key] = attacker.call(
            "write_buffer", ctx, buf["buffer_id"], "hex:" + bytes(size).hex()
        )
    again, uploaded_again = _decode(own.socket, model_dir)
    assert again == expected, f"the victim decoded {again} after the attacker's writes {writes}"
    assert uploaded_again == 0
    for key, reply in writes.items():
        assert reply.get("kind") == "FailedPrecondition", f"overwrote {key}: {reply}"
        assert "sealed" in reply["message"]


def test_another_user_cannot_squat_the_victims_keys(
    own: DaemonProcess, root: npud.client.Client, attacker: Actor, tmp_path: Path
) -> None:
    """Before the victim ever runs, the attacker creates every weight key of its model and
    fills it with zeros: the attacker's seal is refused (INVALID_ARGUMENT: the bytes do not
    hash to the key), and the victim then uploads, seals and decodes the reference's ids. A
    free-form key the attacker holds does not stop the victim creating the same name."""
    model_dir = make_tiny(tmp_path / "model", seed=2102)
    expected = ReferenceLlama(model_dir).generate(PROMPT, TOKENS)
    ctx = attacker.ok("create_context", label="squatter")["context_id"]
    seals = {}
    for key, size in _packs(model_dir).items():
        buf = attacker.ok(
            "create_buffer", ctx, size, usage="weights", persistence="persistent", key=key
        )
        reply = attacker.call(
            "write_buffer", ctx, buf["buffer_id"], "hex:" + bytes(size).hex(), seal=True
        )
        seals[key] = reply
    tokens, uploaded = _decode(own.socket, model_dir)
    assert tokens == expected, f"the victim decoded {tokens} after the attacker's seals {seals}"
    for key, reply in seals.items():
        assert reply.get("kind") == "InvalidArgument", f"sealed zeros as {key}: {reply}"
    assert uploaded == sum(_packs(model_dir).values())

    attacker.ok("create_buffer", ctx, 64, usage="weights", persistence="persistent", key="team@1")
    mine = root.create_context(label="victim")
    try:
        buf = root.create_buffer(
            mine, 64, usage=BufferUsage.WEIGHTS, persistence=Persistence.PERSISTENT, key="team@1"
        )
    except AlreadyExists as exc:
        pytest.fail(f"the attacker's unsealed team@1 blocks the victim's: {exc}")
    sealed = root.write_buffer(mine, buf, b"v" * 64, seal=True)
    assert sealed.sealed
    root.destroy_context(mine)


def test_sealed_weights_survive_a_daemon_restart(tmp_path: Path) -> None:
    """npud-llm's sealed weights are recorded in the daemon's state directory, where no other
    local user can read them (uid 65534 opens none of its files); after a SIGTERM and a
    restart on the same state, a new run attaches them (0 bytes uploaded, by the client's
    count and the daemon's) and decodes the same ids."""
    model_dir = make_tiny(tmp_path / "model", seed=2103)
    with world_reachable_dir("npud-seal-") as work:
        daemon = launch(work)
        try:
            first, uploaded = _decode(daemon.socket, model_dir)
            assert uploaded == sum(_packs(model_dir).values())
            exposed = _readable_by_another_user(work / "state")
            assert daemon.stop() == 0, daemon.log()[-4000:]
            daemon = restart(daemon, work)
            again, uploaded_again = _decode(daemon.socket, model_dir)
            with npud.client.connect(daemon.socket) as npu:
                daemon_uploaded = npu.stats().devices[0].residency.uploaded_weight_bytes
        finally:
            if daemon.proc.poll() is None:
                assert daemon.stop() == 0, daemon.log()[-4000:]
    assert again == first == ReferenceLlama(model_dir).generate(PROMPT, TOKENS)
    assert uploaded_again == 0
    assert daemon_uploaded == 0
    assert exposed == [], f"uid {NOBODY} could read the stored weights: {exposed}"


def _readable_by_another_user(state: Path) -> list[str]:
    """Files under the daemon's state directory that uid 65534 can open, and the modes seen
    (directories 0700, files 0600 expected)."""
    files = [p for p in sorted(state.rglob("*")) if p.is_file()]
    assert any(p.parent.name == "blobs" for p in files), files
    probe = (
        "import sys\n"
        "for p in sys.argv[1:]:\n"
        "    try:\n"
        "        open(p, 'rb').close()\n"
        "        print(p)\n"
        "    except OSError:\n"
        "        pass\n"
    )
    out = subprocess.run(
        ["/usr/bin/python3", "-c", probe, *map(str, files)],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    ).stdout.split()
    modes = {str(p): oct(p.stat().st_mode & 0o777) for p in [state, *state.rglob("*")]}
    return [f"{p} {modes[p]}" for p in out]
