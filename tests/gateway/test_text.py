"""Stop strings, incremental detokenising and request checks, without a server."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from npud.errors import (
    DeviceLost,
    InvalidArgument,
    JobTimedOut,
    QueueFull,
    QuotaExceeded,
    TimeSliceExceeded,
    Unavailable,
)
from npud.gateway.failures import from_npud
from npud.gateway.schema import BadRequest, parse_chat, parse_completion
from npud.gateway.text import ByteCodec, StopScanner
from npud.llm.batcher import Tier

TEXT = st.text(alphabet="ab\u00e9\U0001f600", max_size=30)


@given(
    text=TEXT,
    stops=st.lists(st.text(alphabet="ab\u00e9", min_size=1, max_size=3), max_size=4),
    cuts=st.lists(st.integers(0, 30), max_size=6),
)
def test_stop_scanner_releases_exactly_the_text_before_the_first_stop(
    text: str, stops: list[str], cuts: list[int]
) -> None:
    """Whatever the pieces the text arrives in, the released text is the text up to the
    earliest stop string (all of it when none occurs), and nothing of a stop is released."""
    scanner = StopScanner(stops)
    bounds = sorted({0, len(text), *(c for c in cuts if c <= len(text))})
    out = "".join(scanner.push(text[a:b]) for a, b in itertools.pairwise(bounds))
    out += scanner.flush()
    hits = [i for i in (text.find(s) for s in stops) if i >= 0]
    expected = text[: min(hits)] if hits else text
    assert out == expected
    assert scanner.stopped == bool(hits)


@given(text=st.text(max_size=40))
def test_byte_detokenizer_streams_what_a_whole_decode_gives(text: str) -> None:
    """Feeding ids one by one gives the UTF-8 text of their bytes, characters never split."""
    codec = ByteCodec()
    ids = codec.encode(text)
    detok = codec.detokenizer()
    pieces = [detok.feed(i) for i in ids] + [detok.flush()]
    assert "".join(pieces) == text


def test_requests_are_checked_with_the_field_named() -> None:
    """Bad fields raise BadRequest naming them; tiers map from service_tier and priority."""
    good = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    _, opts = parse_chat(good)
    assert opts.tier is Tier.INTERACTIVE
    assert opts.max_tokens is None
    assert parse_chat({**good, "service_tier": "flex"})[1].tier is Tier.BATCH
    assert parse_chat({**good, "priority": 5})[1].tier is Tier.BATCH
    assert parse_chat({**good, "max_completion_tokens": 7})[1].max_tokens == 7
    for bad, param in (
        ({**good, "max_tokens": 0}, "max_tokens"),
        ({**good, "top_p": 0}, "top_p"),
        ({**good, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({**good, "messages": []}, "messages"),
        ({**good, "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        (
            {**good, "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages.0.content",
        ),
    ):
        with pytest.raises(BadRequest) as info:
            parse_chat(bad)
        assert info.value.param == param
    with pytest.raises(BadRequest, match="one prompt"):
        parse_completion({"model": "m", "prompt": ["a", "b"]})
    assert parse_completion({"model": "m", "prompt": "a"})[1].max_tokens == 16


def test_npud_errors_map_to_openai_statuses() -> None:
    """npud's refusals are 429, its absence 503, bad arguments 400, failures 500."""
    assert from_npud(InvalidArgument("x")).status == 400
    for refusal in (QueueFull("x"), QuotaExceeded("x"), TimeSliceExceeded("x")):
        assert from_npud(refusal).status == 429
    assert from_npud(Unavailable("x")).status == 503
    assert from_npud(DeviceLost("x")).status == 503
    assert from_npud(JobTimedOut("x")).status == 500
    assert from_npud(QuotaExceeded("over")).body()["error"]["code"] == "QuotaExceeded"  # type: ignore[index]
