"""The official ``openai`` package and ``curl`` against ``npud-llm serve`` on the tiny model."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess

import openai
import pytest

from npud.gateway.text import ByteCodec
from npud.llm.tokenizer import ByteTokenizer
from npud.testing.gateway import GatewayProcess
from tests.gateway.conftest import MODEL
from tests.llm.reference import ReferenceLlama

pytestmark = pytest.mark.slow

TOK = ByteTokenizer()
CODEC = ByteCodec()


def expected_text(reference: ReferenceLlama, prompt: list[int], n: int) -> str:
    """The reference's greedy continuation as text, cut at EOS (as the gateway stops)."""
    ids = reference.generate(prompt, n)
    if TOK.eos_id in ids:
        ids = ids[: ids.index(TOK.eos_id)]
    return TOK.decode(ids)


def client(gateway: GatewayProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="test-key", max_retries=0)


def test_model_list(gateway: GatewayProcess) -> None:
    """``models.list()`` returns the one served model."""
    models = client(gateway).models.list()
    assert [m.id for m in models.data] == [MODEL]
    assert client(gateway).models.retrieve(MODEL).id == MODEL


def test_chat_not_streamed_equals_the_reference(
    gateway: GatewayProcess, reference: ReferenceLlama
) -> None:
    """A greedy chat completion is the reference's continuation of the rendered chat, with
    usage counting the prompt and the generated ids."""
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hello there"},
    ]
    reply = client(gateway).chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=12,
        temperature=0,  # type: ignore[arg-type]
    )
    prompt = CODEC.chat([(m["role"], m["content"]) for m in messages])
    assert reply.choices[0].message.content == expected_text(reference, prompt, 12)
    assert reply.choices[0].message.role == "assistant"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == len(prompt)
    assert reply.choices[0].finish_reason in {"length", "stop"}
    if reply.choices[0].finish_reason == "length":
        assert reply.usage.completion_tokens == 12


def test_chat_streamed_equals_not_streamed(gateway: GatewayProcess) -> None:
    """Streamed deltas concatenate to the non-streamed text; the last chunk has usage when
    asked for."""
    args = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Stream this"}],
        "max_tokens": 16,
        "temperature": 0,
    }
    whole = client(gateway).chat.completions.create(**args)  # type: ignore[call-overload]
    stream = client(gateway).chat.completions.create(
        **args, stream=True, stream_options={"include_usage": True}
    )  # type: ignore[call-overload]
    pieces, reasons, usage = [], [], None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            reasons.append(choice.finish_reason)
    assert "".join(pieces) == whole.choices[0].message.content
    assert reasons[-1] == whole.choices[0].finish_reason
    assert usage is not None
    assert usage.completion_tokens == whole.usage.completion_tokens  # type: ignore[union-attr]


def test_completions_streamed_and_not(gateway: GatewayProcess, reference: ReferenceLlama) -> None:
    """The legacy completions endpoint continues a plain prompt, streamed or not."""
    c = client(gateway)
    whole = c.completions.create(model=MODEL, prompt="Once upon", max_tokens=10, temperature=0)
    assert whole.choices[0].text == expected_text(reference, TOK.encode("Once upon"), 10)
    streamed = c.completions.create(
        model=MODEL, prompt="Once upon", max_tokens=10, temperature=0, stream=True
    )
    assert "".join(chunk.choices[0].text for chunk in streamed) == whole.choices[0].text


def test_stop_strings_cut_the_text(gateway: GatewayProcess) -> None:
    """A stop string ends the text just before it, streamed or not, with finish_reason stop."""
    c = client(gateway)
    full = c.completions.create(model=MODEL, prompt="abc", max_tokens=24, temperature=0)
    text = full.choices[0].text
    stop = text[5:7]
    assert len(stop) == 2
    cut = c.completions.create(model=MODEL, prompt="abc", max_tokens=24, temperature=0, stop=stop)
    assert cut.choices[0].text == text[: text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = c.completions.create(
        model=MODEL, prompt="abc", max_tokens=24, temperature=0, stop=[stop], stream=True
    )
    assert "".join(ch.choices[0].text for ch in streamed) == cut.choices[0].text


def test_seeded_sampling_is_reproducible(gateway: GatewayProcess) -> None:
    """temperature/top_p/seed: the same seed gives the same text; another seed another."""
    c = client(gateway)

    def ask(seed: int) -> str:
        reply = c.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Pick"}],
            max_tokens=16,
            temperature=1.0,
            top_p=0.9,
            seed=seed,
        )
        return reply.choices[0].message.content or ""

    assert ask(11) == ask(11)
    assert ask(11) != ask(12)


def test_eight_concurrent_streaming_chats_equal_each_alone(gateway: GatewayProcess) -> None:
    """Eight streaming chats at once all complete, and each greedy text equals the same
    request alone: batching changes no output."""
    prompts = [f"Chat number {i}: " + "tell me something " * (i % 3) for i in range(8)]

    async def one(c: openai.AsyncOpenAI, prompt: str) -> str:
        stream = await c.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": prompt}],
            max_tokens=20,
            temperature=0,
            stream=True,
        )
        return "".join([ch.choices[0].delta.content or "" async for ch in stream if ch.choices])

    async def main() -> tuple[list[str], list[str]]:
        async with openai.AsyncOpenAI(
            base_url=gateway.url + "/v1", api_key="k", max_retries=0
        ) as c:
            together = await asyncio.gather(*(one(c, p) for p in prompts))
            alone = [await one(c, p) for p in prompts]
            return list(together), alone

    together, alone = asyncio.run(main())
    assert together == alone
    assert all(together)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_streams_server_sent_events_ending_with_done(gateway: GatewayProcess) -> None:
    """curl -N gets ``data:`` events with chat chunks, the last one ``data: [DONE]``."""
    body = json.dumps(
        {
            "model": MODEL,
            "messages": [{"role": "user", "content": "curl"}],
            "max_tokens": 6,
            "temperature": 0,
            "stream": True,
        }
    )
    out = subprocess.run(
        [
            "curl",
            "-sSN",
            "--fail-with-body",
            gateway.url + "/v1/chat/completions",
            "-H",
            "Content-Type: application/json",
            "-d",
            body,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    events = [line[len("data: ") :] for line in out.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] in {"length", "stop"}


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_models_and_errors(gateway: GatewayProcess) -> None:
    """curl sees the model list and OpenAI's error JSON with the HTTP status."""

    def curl(*args: str) -> tuple[int, dict[str, object]]:
        out = subprocess.run(
            ["curl", "-sS", "-w", "\n%{http_code}", *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        body, _, code = out.rpartition("\n")
        return int(code), json.loads(body)

    status, models = curl(gateway.url + "/v1/models")
    assert status == 200
    assert models["data"][0]["id"] == MODEL  # type: ignore[index]
    status, err = curl(
        gateway.url + "/v1/completions", "-H", "Content-Type: application/json", "-d", "{nope"
    )
    assert status == 400
    assert err["error"]["type"] == "invalid_request_error"  # type: ignore[index]
