"""npud refusing or missing: 429 when its admission or quotas refuse, 503 while it is down,
and service again once it is back, without restarting the gateway."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import httpx
import openai
import pytest

from npud.llm.compiler import decode_scratch
from npud.llm.model import load_model
from npud.llm.plan import KV, TOKENS, BufferKind, plan_memory
from npud.testing.gateway import start_gateway
from tests.cli.harness import start_daemon
from tests.gateway.conftest import MODEL
from tests.gateway.harness import until_batcher, wait_healthy

pytestmark = pytest.mark.slow

PAGE = 4096


def _pages(n: int) -> int:
    return (n + PAGE - 1) // PAGE * PAGE


def chat(content: str, **extra: object) -> dict[str, object]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}


def test_npud_down_is_503_and_its_return_is_noticed(tmp_path: Path, tiny_dir: Path) -> None:
    """With npud stopped, requests and /health get 503 with npud's reason (the openai
    package raises InternalServerError); with npud started again, the gateway serves."""
    daemon = start_daemon(tmp_path / "npud")
    gateway = start_gateway(
        daemon.socket, tmp_path, "--model", str(tiny_dir), "--served-model-name", MODEL
    )
    try:
        ok = httpx.post(gateway.url + "/v1/chat/completions", json=chat("a", max_tokens=2))
        assert ok.status_code == 200
        daemon.stop()
        reply = httpx.post(gateway.url + "/v1/chat/completions", json=chat("a"), timeout=30)
        assert reply.status_code == 503
        assert reply.json()["error"]["type"] == "service_unavailable"
        health = httpx.get(gateway.url + "/health", timeout=30)
        assert health.status_code == 503
        c = openai.OpenAI(base_url=gateway.url + "/v1", api_key="k", max_retries=0)
        with pytest.raises(openai.InternalServerError):
            c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a"}])
        (tmp_path / "npud" / "notify.sock").unlink()
        daemon = start_daemon(tmp_path / "npud")  # the same socket path
        wait_healthy(gateway)
        again = httpx.post(gateway.url + "/v1/chat/completions", json=chat("a", max_tokens=2))
        assert again.status_code == 200
    finally:
        gateway.stop()
        daemon.stop()


def test_npud_quota_refusal_is_429(tmp_path: Path, tiny_dir: Path) -> None:
    """When npud's context memory quota cannot hold another sequence's KV cache, that request
    gets 429 (the openai package's RateLimitError) while the one holding the memory completes;
    afterwards a new request fits again."""
    model = load_model(tiny_dir)
    plan = plan_memory(model, max_seq=128)
    sizes = {spec.name: _pages(spec.size) for spec in plan.buffers}
    weights = sum(_pages(s.size) for s in plan.buffers if s.kind is BufferKind.WEIGHTS)
    rows = 8 + plan.chunk  # the decode scratch holds max_batch rows and one joining chunk
    base = weights + _pages(decode_scratch(model.config, rows).size) + 2 * sizes["scratch"]
    per_sequence = sizes[TOKENS] + sizes[KV]
    quota = base + per_sequence + per_sequence // 2
    daemon = start_daemon_with(tmp_path / "npud", NPUD_QUOTAS__CONTEXT_MEMORY_BYTES=str(quota))
    gateway = start_gateway(
        daemon.socket,
        tmp_path,
        "--model",
        str(tiny_dir),
        "--served-model-name",
        MODEL,
        "--max-seq",
        "128",
    )
    try:

        async def main() -> list[httpx.Response]:
            async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as c:
                first = asyncio.ensure_future(
                    c.post("/v1/chat/completions", json=chat("hold", max_tokens=60))
                )
                await until_batcher(c, lambda b: b["decoding"] >= 1)  # it holds the memory
                second = await c.post("/v1/chat/completions", json=chat("no room"))
                return [await first, second]

        first, second = asyncio.run(main())
        assert first.status_code == 200
        assert second.status_code == 429, second.text
        assert second.json()["error"]["code"] == "QuotaExceeded"
        c = openai.OpenAI(base_url=gateway.url + "/v1", api_key="k", max_retries=0)
        reply = c.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "fits"}], max_tokens=2
        )
        assert reply.choices[0].message.content is not None
    finally:
        gateway.stop()
        daemon.stop()


def test_a_full_waiting_room_is_429(tmp_path: Path, tiny_dir: Path) -> None:
    """With every slot taken and the waiting room full, a request is refused with 429 at
    once rather than queued without bound."""
    daemon = start_daemon(tmp_path / "npud")
    gateway = start_gateway(
        daemon.socket,
        tmp_path,
        "--model",
        str(tiny_dir),
        "--served-model-name",
        MODEL,
        "--max-batch",
        "1",
        "--max-waiting",
        "1",
    )
    try:

        async def main() -> list[int]:
            async with httpx.AsyncClient(base_url=gateway.url, timeout=300) as c:
                body = {"model": MODEL, "prompt": "one", "max_tokens": 250}
                first = asyncio.ensure_future(c.post("/v1/completions", json=body))
                await until_batcher(c, lambda b: b["decoding"] >= 1)
                second = asyncio.ensure_future(c.post("/v1/completions", json=body))
                await until_batcher(c, lambda b: b["waiting"] >= 1)
                third = await c.post("/v1/completions", json={"model": MODEL, "prompt": "3"})
                assert "wait for one of 1" in third.json()["error"]["message"]
                return [third.status_code, (await first).status_code, (await second).status_code]

        assert asyncio.run(main()) == [429, 200, 200]
    finally:
        gateway.stop()
        daemon.stop()


def start_daemon_with(tmp: Path, **env: str):  # type: ignore[no-untyped-def]
    """start_daemon with extra environment for npud."""
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        return start_daemon(tmp)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
