"""Length-prefixed frames: a byte stream cut anywhere still yields exactly the bodies sent."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from npud.vocab.frames import HEADER, FrameReader, FrameTooLarge, frame

LIMIT = 1 << 10

bodies = st.lists(st.binary(max_size=300), max_size=12)


def _cut(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` split at the offsets ``cuts`` (any order, repeats allowed)."""
    points = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    return [data[a:b] for a, b in itertools.pairwise(points)]


@given(bodies, st.lists(st.integers(min_value=0, max_value=1 << 16), max_size=40))
def test_bodies_come_out_in_order_however_the_stream_is_cut(
    sent: list[bytes], cuts: list[int]
) -> None:
    """Frames concatenated and fed in pieces cut at arbitrary points (one byte, several
    frames, a header split in two) yield exactly the bodies sent, in order, and nothing
    stays buffered once the last piece is in."""
    stream = b"".join(frame(b) for b in sent)
    reader = FrameReader(LIMIT)
    got: list[bytes] = []
    for piece in _cut(stream, cuts):
        got.extend(reader.feed(piece))
    assert got == sent
    assert reader.buffered == 0


@given(bodies)
def test_one_byte_at_a_time(sent: list[bytes]) -> None:
    """The stream fed a byte at a time yields each body exactly when its last byte
    arrives."""
    stream = b"".join(frame(b) for b in sent)
    ends: dict[int, bytes] = {}
    pos = 0
    for body in sent:
        pos += HEADER.size + len(body)
        ends[pos] = body
    reader = FrameReader(LIMIT)
    for i in range(len(stream)):
        out = reader.feed(stream[i : i + 1])
        assert out == ([ends[i + 1]] if i + 1 in ends else [])
    assert reader.buffered == 0


@given(
    bodies,
    st.integers(min_value=LIMIT + 1, max_value=(1 << 32) - 1),
    st.integers(min_value=0, max_value=HEADER.size - 1),
)
def test_a_header_over_the_limit_is_refused_before_its_body(
    before: list[bytes], size: int, split: int
) -> None:
    """A header announcing more than the limit raises FrameTooLarge (naming the size and the
    limit) as soon as its last byte arrives, though none of its body has: the frames ahead of
    it came out first, and nothing beyond the header's bytes was ever buffered."""
    reader = FrameReader(LIMIT)
    got: list[bytes] = []
    head = HEADER.pack(size)
    got.extend(reader.feed(b"".join(frame(b) for b in before) + head[:split]))
    assert got == before
    assert reader.buffered == split
    with pytest.raises(FrameTooLarge) as info:
        reader.feed(head[split:])
    assert (info.value.size, info.value.limit) == (size, LIMIT)
    assert str(size) in str(info.value)
    assert reader.buffered <= HEADER.size


def test_a_frame_of_exactly_the_limit_is_accepted() -> None:
    """The limit is inclusive: a body of exactly ``limit`` bytes comes out, one more does
    not."""
    reader = FrameReader(LIMIT)
    assert reader.feed(frame(b"x" * LIMIT)) == [b"x" * LIMIT]
    with pytest.raises(FrameTooLarge):
        FrameReader(LIMIT).feed(frame(b"x" * (LIMIT + 1)))


@given(bodies, st.binary(min_size=1, max_size=300), st.integers(min_value=0))
def test_buffered_counts_what_is_pending(sent: list[bytes], last: bytes, keep: int) -> None:
    """After whole frames and part of one more, ``buffered`` is exactly the bytes of the
    partial frame (its header included); the rest of it completes it."""
    partial = frame(last)
    keep %= len(partial)
    reader = FrameReader(LIMIT)
    got = reader.feed(b"".join(frame(b) for b in sent) + partial[:keep])
    assert got == sent
    assert reader.buffered == keep
    assert reader.feed(partial[keep:]) == [last]
    assert reader.buffered == 0


def test_raising_the_limit_between_frames_takes_effect_for_the_next() -> None:
    """The limit may change between frames (the daemon's handshake limit, then its request
    limit): a frame over the old limit is taken once the limit is raised."""
    reader = FrameReader(8)
    assert reader.feed(frame(b"hello")) == [b"hello"]
    reader.limit = LIMIT
    assert reader.feed(frame(b"y" * 100)) == [b"y" * 100]
