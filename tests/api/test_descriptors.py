"""The descriptor socket on a real daemon: uploads and read-backs without copies, bad input,
and the gRPC fallback. (Attacks from another uid: tests/reliability/test_descriptors.py.)"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

import npud.client
from npud.client import Access, Bind, BufferUsage, JobSpec, JobState, Persistence
from npud.client.descriptors import DescriptorChannel, sealed_memfd
from npud.config import descriptor_socket_for
from npud.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    Unauthenticated,
    Unavailable,
)
from npud.isa import Program, Tensor
from npud.testing.daemon import DaemonProcess, start_daemon

MiB = 1 << 20
WEIGHTS = 1  # npud.v1 BUFFER_USAGE_WEIGHTS


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = start_daemon(tmp_path_factory.mktemp("descriptors"))
    yield d
    assert d.stop() == 0, d.log()[-4000:]


@pytest.fixture
def npu(daemon: DaemonProcess) -> Iterator[npud.client.Client]:
    with npud.client.connect(daemon.socket) as client:
        yield client


def _uploaded(client: npud.client.Client) -> int:
    return client.stats().devices[0].residency.uploaded_bytes


def _recorded(daemon: DaemonProcess, stored: str) -> dict[str, object] | None:
    """The state directory's registration of ``stored``, waiting (bounded) for it."""
    manifest = daemon.socket.parent / "state" / "sim0" / "registrations.json"
    deadline = time.monotonic() + 30.0
    while time.monotonic() < deadline:
        if manifest.exists():
            for entry in json.loads(manifest.read_text()).get("registrations", []):
                if entry.get("key") == stored:
                    return dict(entry)
        time.sleep(0.05)
    return None


def test_upload_by_descriptor_copies_nothing_in_the_daemon(
    daemon: DaemonProcess, npu: npud.client.Client
) -> None:
    """A sealed upload through a memfd reads back bit-exact over gRPC (an independent path),
    and the daemon's upload counter does not move (it copied no byte), where the same upload
    over gRPC counts every byte. The state directory records it (behind the reply) with the
    contents' sha256, so a restarted daemon offers it too."""
    data = os.urandom(3 * MiB + 123)
    ctx = npu.create_context(label="upload")
    before = _uploaded(npu)
    buf = npu.upload(ctx, data, key="model@1")
    assert (buf.sealed, buf.size, buf.key) == (True, len(data), "model@1")
    assert _uploaded(npu) == before
    with npud.client.connect(npu.socket_path, descriptors=False) as plain:
        assert plain.read_buffer(ctx, buf) == data
        ctx2 = plain.create_context(label="upload-grpc")
        plain.upload(ctx2, data, key="model@2")
        assert _uploaded(plain) == before + len(data)
    entry = _recorded(daemon, "~0/model@1")
    assert entry is not None, "the imported buffer was never recorded in the state directory"
    assert entry["sha256"] == hashlib.sha256(data).hexdigest()


def test_content_key_upload_is_checked_and_deduplicated(npu: npud.client.Client) -> None:
    """A content key is verified against the memfd's bytes: a wrong one is INVALID_ARGUMENT
    and leaves no buffer; the right one seals, and a second upload of the same contents is
    attached to the first buffer."""
    data = os.urandom(MiB)
    key = "sha256:" + hashlib.sha256(data).hexdigest()
    ctx = npu.create_context(label="content")
    wrong = "sha256:" + hashlib.sha256(b"other").hexdigest()
    with pytest.raises(InvalidArgument, match="hash to"):
        npu.upload(ctx, data, key=wrong)
    assert npu.buffers(ctx) == []
    first = npu.upload(ctx, data, key=key)
    other = npu.create_context(label="content-2")
    second = npu.upload(other, data)
    assert second.buffer_id == first.buffer_id
    assert npu.read_buffer(other, second) == data


def test_imports_of_memory_that_can_still_change_are_refused(
    daemon: DaemonProcess, npu: npud.client.Client
) -> None:
    """The daemon takes only memfds sealed against writes and resizing, holding the whole
    size: anything else is INVALID_ARGUMENT naming what is missing, and creates nothing."""
    ctx = npu.create_context(label="refusals")
    channel = DescriptorChannel(daemon.socket, npu.identity.token)
    try:
        unsealed = os.memfd_create("u", os.MFD_ALLOW_SEALING)
        os.ftruncate(unsealed, MiB)
        with pytest.raises(InvalidArgument, match="F_SEAL_WRITE"):
            channel.import_sealed(ctx.context_id, unsealed, MiB, usage=WEIGHTS)
        fcntl.fcntl(unsealed, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE)
        with pytest.raises(InvalidArgument, match="F_SEAL_SHRINK"):
            channel.import_sealed(ctx.context_id, unsealed, MiB, usage=WEIGHTS)
        os.close(unsealed)
        small = sealed_memfd(b"x" * 4096)
        with pytest.raises(InvalidArgument, match="holds 4096 bytes"):
            channel.import_sealed(ctx.context_id, small, MiB, usage=WEIGHTS)
        with Path("/dev/null").open("rb") as devnull, pytest.raises(InvalidArgument, match="memfd"):
            channel.import_sealed(ctx.context_id, devnull.fileno(), 4096, usage=WEIGHTS)
        with pytest.raises(InvalidArgument, match="exactly one descriptor"):
            channel.request({"op": "import", "context_id": ctx.context_id, "size": 4096})
        with pytest.raises(InvalidArgument, match="unknown op"):
            channel.request({"op": "steal"})
        npu.upload(ctx, b"y" * 4096, key="taken@1")
        with pytest.raises(AlreadyExists):
            channel.import_sealed(ctx.context_id, small, 4096, usage=WEIGHTS, key="taken@1")
        os.close(small)
        assert [b.key for b in npu.buffers(ctx)] == ["taken@1"]
    finally:
        channel.close()


def test_a_forged_token_is_unauthenticated(daemon: DaemonProcess) -> None:
    """A token the daemon never issued opens nothing on the descriptor socket."""
    channel = DescriptorChannel(daemon.socket, "A" * 43)
    try:
        with pytest.raises(Unauthenticated, match="session token"):
            channel.map("ctx-0", "buf-0")
    finally:
        channel.close()


def test_a_packet_that_is_not_one_json_object_is_refused_and_the_connection_serves_on(
    daemon: DaemonProcess, npu: npud.client.Client
) -> None:
    """Garbage, a JSON array and 4 KiB of nested brackets (deeper than the JSON parser
    recurses) are each answered InvalidArgument on the same connection, which then still
    answers a well-formed request."""
    path = descriptor_socket_for(daemon.socket)
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.settimeout(10)
        sock.connect(str(path))
        for packet in (b"\xff\xfe not json", b"[1, 2]", b"[" * 4000):
            sock.send(packet)
            reply = json.loads(sock.recv(65536))
            assert reply["ok"] is False
            assert reply["error"] == "InvalidArgument"
            assert "one JSON object" in reply["message"]
        sock.send(json.dumps({"op": "release", "lease": 999}).encode())
        assert json.loads(sock.recv(65536)) == {"ok": True}
    assert npu.version()


def test_large_ephemeral_writes_and_reads_go_through_the_mapping(npu: npud.client.Client) -> None:
    """write_buffer and read_buffer of a few MiB use the mapping when the daemon is local
    (the upload counter does not move) and the bytes are what gRPC reads; a persistent
    buffer not sealed yet has no descriptor (FAILED_PRECONDITION) and goes over gRPC."""
    ctx = npu.create_context(label="inplace")
    buf = npu.create_buffer(ctx, 4 * MiB, persistence=Persistence.EPHEMERAL)
    data = os.urandom(4 * MiB)
    before = _uploaded(npu)
    npu.write_buffer(ctx, buf, data)
    assert _uploaded(npu) == before
    assert npu.read_buffer(ctx, buf) == data
    with npud.client.connect(npu.socket_path, descriptors=False) as plain:
        assert plain.read_buffer(ctx, buf, offset=MiB, size=MiB) == data[MiB : 2 * MiB]
    unsealed = npu.create_buffer(ctx, 2 * MiB, persistence=Persistence.PERSISTENT, key="draft@1")
    with pytest.raises(FailedPrecondition, match="not sealed"):
        npu.map_buffer(ctx, unsealed)
    npu.write_buffer(ctx, unsealed, data[: 2 * MiB], seal=True)
    assert npu.read_buffer(ctx, unsealed) == data[: 2 * MiB]


def test_without_the_descriptor_socket_the_client_falls_back_to_grpc(
    tmp_path: Path,
) -> None:
    """A daemon whose descriptor socket is gone (a remote or older npud) still takes uploads
    and reads: the client falls back to gRPC bytes on its own, and insists only when told."""
    d = start_daemon(tmp_path)
    try:
        descriptor_socket_for(d.socket).unlink()
        data = os.urandom(2 * MiB)
        with npud.client.connect(d.socket) as npu:
            ctx = npu.create_context(label="fallback")
            buf = npu.upload(ctx, data, key="m@1")
            assert npu.read_buffer(ctx, buf) == data
            assert _uploaded(npu) == len(data)
        with npud.client.connect(d.socket, descriptors=True) as strict:
            ctx = strict.create_context(label="strict")
            with pytest.raises(Unavailable, match="no descriptor socket"):
                strict.upload(ctx, data, key="m@2")
    finally:
        assert d.stop() == 0


def test_jobs_compute_on_imported_weights_and_in_place_inputs(npu: npud.client.Client) -> None:
    """The device process computes on the pages a client handed over (weights imported as a
    sealed memfd, an input written through a writable mapping): a MATMUL's result, read back
    through a read-only mapping, equals numpy's on the same values."""
    rng = np.random.default_rng(7)
    w = rng.integers(-3, 4, size=(256, 256)).astype(np.float32)
    x = rng.integers(-3, 4, size=(1, 256)).astype(np.float32)
    ctx = npu.create_context(label="compute")
    q = npu.create_queue(ctx)
    weights = npu.upload(ctx, w.tobytes(), key="matmul-weights@1")
    xb = npu.create_buffer(ctx, x.nbytes, usage=BufferUsage.STATE)
    with npu.map_buffer(ctx, xb, writable=True) as mapped:
        mapped.view[:] = x.tobytes()
    out = npu.create_buffer(ctx, x.nbytes, usage=BufferUsage.STATE)
    prog = Program().matmul(
        Tensor(2, 0, (1, 256)), Tensor(0, 0, (1, 256)), Tensor(1, 0, (256, 256))
    )
    job = npu.wait(
        ctx,
        npu.submit(
            ctx,
            JobSpec(
                q,
                prog.encode(),
                (Bind(xb), Bind(weights), Bind(out, Access.WRITE)),
            ),
        ),
    )
    assert job.state is JobState.COMPLETED, job
    with npu.map_buffer(ctx, out) as mapped:
        got = np.frombuffer(bytes(mapped.view), dtype=np.float32)
    np.testing.assert_array_equal(got, (x @ w)[0])
