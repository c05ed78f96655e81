"""Bad input and vanishing clients: a precise HTTP error or a clean cancel, and npud's contexts,
buffers and jobs back to their baseline afterwards (checked through npud's own API)."""

from __future__ import annotations

import json
import select
import socket
import time
from pathlib import Path

import httpx
import pytest

from npud.client import JobState, connect
from npud.testing.daemon import DaemonProcess
from npud.testing.gateway import GatewayProcess
from tests.gateway.conftest import MODEL
from tests.gateway.harness import wait_batcher

pytestmark = pytest.mark.slow

HUNDRED_MB = 100 * 1024 * 1024


def npud_state(sock: Path) -> list[tuple[str, int, int, int]]:
    """Every context of this user as npud reports it: label, buffers, bytes, live jobs."""
    with connect(sock) as npu:
        live = npu.jobs(states=(JobState.QUEUED, JobState.READY, JobState.RUNNING))
        by_ctx: dict[str, int] = {}
        for job in live:
            by_ctx[job.context_id] = by_ctx.get(job.context_id, 0) + 1
        return sorted(
            (c.label, c.buffers, c.memory_bytes, by_ctx.get(c.context_id, 0))
            for c in npu.contexts()
        )


def wait_for_baseline(sock: Path, baseline: list[tuple[str, int, int, int]]) -> None:
    """npud's state returns to ``baseline`` (releases are asynchronous: a few seconds)."""
    deadline = time.monotonic() + 30
    state = npud_state(sock)
    while state != baseline and time.monotonic() < deadline:
        time.sleep(0.1)
        state = npud_state(sock)
    assert state == baseline


@pytest.fixture(scope="module")
def baseline(gateway: GatewayProcess, npud: DaemonProcess) -> list[tuple[str, int, int, int]]:
    """npud's state with the gateway up and idle after one request."""
    body = {"model": MODEL, "prompt": "warm", "max_tokens": 2, "temperature": 0}
    assert httpx.post(gateway.url + "/v1/completions", json=body, timeout=60).status_code == 200
    state: list[tuple[str, int, int, int]] = []
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = npud_state(npud.socket)
        if all(live == 0 for *_, live in state) and state == npud_state(npud.socket):
            break
        time.sleep(0.1)
    assert any(label.startswith("npud-llm-serve/") for label, *_ in state)
    return state


def post(gateway: GatewayProcess, path: str, **kw: object) -> httpx.Response:
    return httpx.post(gateway.url + path, timeout=60, **kw)  # type: ignore[arg-type]


def chat(content: str, **extra: object) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


@pytest.mark.parametrize(
    ("body", "status", "param", "fragment"),
    [
        (b"{nope", 400, None, "not valid JSON"),
        (b"[1, 2]", 400, None, "JSON object"),
        (json.dumps({"model": MODEL}).encode(), 400, "messages", "messages"),
        (json.dumps(chat("hi", model="gpt-9")).encode(), 404, "model", "does not exist"),
        (json.dumps(chat("x" * 300)).encode(), 400, "messages", "context holds 128"),
        (json.dumps(chat("hi", max_tokens=0)).encode(), 400, "max_tokens", "at least 1"),
        (json.dumps(chat("hi", max_tokens=-5)).encode(), 400, "max_tokens", "at least 1"),
        (json.dumps(chat("hi", temperature=-1)).encode(), 400, "temperature", "temperature"),
        (json.dumps(chat("hi", n=3)).encode(), 400, "n", "n"),
        (json.dumps(chat("hi", service_tier="gold")).encode(), 400, "service_tier", "gold"),
    ],
)
def test_bad_requests_get_openai_errors_and_change_nothing(
    gateway: GatewayProcess,
    npud: DaemonProcess,
    baseline: list[tuple[str, int, int, int]],
    body: bytes,
    status: int,
    param: str | None,
    fragment: str,
) -> None:
    """Malformed JSON, a missing field, an unknown model, a prompt longer than the context, a
    non-positive max_tokens and out-of-range options each get their status and OpenAI's error
    object naming the field; npud's state is untouched."""
    reply = post(
        gateway, "/v1/chat/completions", content=body, headers={"Content-Type": "application/json"}
    )
    assert reply.status_code == status
    error = reply.json()["error"]
    assert fragment in error["message"]
    assert error["param"] == param
    assert error["type"] == "invalid_request_error"
    assert npud_state(npud.socket) == baseline


def _response_status(sock: socket.socket) -> int:
    data = b""
    while b"\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return int(data.split(b" ", 2)[1])


def test_a_100_mb_body_is_refused_before_it_is_read(gateway: GatewayProcess) -> None:
    """A Content-Length of 100 MB is answered 413 after a few bytes of the body, without the
    gateway waiting for (or buffering) the rest."""
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {HUNDRED_MB}\r\n\r\n".encode()
            + b'{"model": "tiny", "messages": ['
        )
        assert _response_status(sock) == 413


def test_a_chunked_100_mb_body_is_cut_off_at_the_limit(gateway: GatewayProcess) -> None:
    """A chunked body without a length is read only up to the limit (1 MiB), then 413: the
    sender gets the answer long before it could send 100 MB."""
    piece = b" " * 65536
    frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    sent = 0
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        while sent < HUNDRED_MB:
            readable, _, _ = select.select([sock], [], [], 0)
            if readable:
                break
            try:
                sock.sendall(frame)
            except OSError:  # the gateway answered and closed
                break
            sent += len(piece)
        assert _response_status(sock) == 413
    assert sent < 16 * 1024 * 1024


def test_a_client_that_disconnects_mid_stream_is_cancelled_and_freed(
    gateway: GatewayProcess, npud: DaemonProcess, baseline: list[tuple[str, int, int, int]]
) -> None:
    """Closing the connection after a few streamed tokens cancels the sequence: no more
    decode steps for it, its buffers released; npud returns to the baseline."""
    body = chat("keep talking", max_tokens=120, temperature=0, stream=True)
    with httpx.Client(timeout=60) as client:
        with client.stream("POST", gateway.url + "/v1/chat/completions", json=body) as reply:
            assert reply.status_code == 200
            events = 0
            for line in reply.iter_lines():
                if line.startswith("data: "):
                    events += 1
                if events == 4:
                    break
    wait_for_baseline(npud.socket, baseline)
    health = httpx.get(gateway.url + "/health", timeout=30).json()
    assert health["batcher"]["cancelled"] >= 1
    assert health["batcher"]["decoding"] == 0


def test_a_client_that_disconnects_before_the_answer_is_cancelled(
    gateway: GatewayProcess, npud: DaemonProcess, baseline: list[tuple[str, int, int, int]]
) -> None:
    """A non-streamed request whose client goes away while it is generating is cancelled
    too."""
    before = httpx.get(gateway.url + "/health", timeout=30).json()["batcher"]["cancelled"]
    body = json.dumps(chat("y" * 20, max_tokens=90, temperature=0)).encode()
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=30) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body
        )
        wait_batcher(gateway, lambda b: b["cancelled"] > before or b["decoding"] >= 1)
    wait_for_baseline(npud.socket, baseline)
    assert httpx.get(gateway.url + "/health", timeout=30).json()["batcher"]["cancelled"] > before
    # and the gateway still serves
    ok = post(gateway, "/v1/completions", json={"model": MODEL, "prompt": "a", "max_tokens": 2})
    assert ok.status_code == 200
