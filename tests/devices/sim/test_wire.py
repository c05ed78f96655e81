"""The device process's binary per-job messages survive a round trip and reject garbage."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npud.devices.base import CompletionStatus
from npud.devices.sim.wire import (
    DONE,
    RUN,
    DoneMessage,
    RunMessage,
    WireError,
    decode_done,
    decode_run,
    encode_done,
    encode_run,
)

U64 = st.integers(min_value=0, max_value=2**64 - 1)


@settings(max_examples=60)
@given(
    token=U64,
    command=U64,
    offset=U64,
    size=U64,
    slots=st.lists(st.tuples(U64, st.booleans(), U64), max_size=40),
    engine=st.integers(min_value=0, max_value=2**16 - 1),
    flags=st.integers(min_value=0, max_value=255),
)
def test_run_round_trips(
    token: int,
    command: int,
    offset: int,
    size: int,
    slots: list[tuple[int, bool, int]],
    engine: int,
    flags: int,
) -> None:
    """Every field of a run message comes back as sent, bindings (handle, use, size) in slot
    order."""
    handles = tuple(h for h, _, _ in slots)
    writable = tuple(w for _, w, _ in slots)
    sizes = tuple(n for _, _, n in slots)
    data = encode_run(
        token,
        command=command,
        offset=offset,
        size=size,
        bindings=handles,
        writable=writable,
        sizes=sizes,
        engine=engine,
        flags=flags,
    )
    assert data[:1] == RUN
    expected = RunMessage(token, command, offset, size, handles, writable, engine, flags, sizes)
    assert decode_run(data) == expected


@settings(max_examples=60)
@given(
    token=U64,
    status=st.sampled_from(list(CompletionStatus)),
    error=st.none() | st.text(st.characters(exclude_categories=("Cs",)), max_size=200),
    modelled=st.floats(allow_nan=False),
    compute=st.floats(min_value=0, allow_nan=False),
    read=U64,
    written=U64,
)
def test_done_round_trips(
    token: int,
    status: CompletionStatus,
    error: str | None,
    modelled: float,
    compute: float,
    read: int,
    written: int,
) -> None:
    """Every field of a done message comes back as sent; no error and an empty one differ."""
    msg = DoneMessage(token, status, error, modelled, compute, read, written)
    data = encode_done(msg)
    assert data[:1] == DONE
    assert decode_done(data) == msg


def test_malformed_packets_are_refused() -> None:
    """Short, truncated, mislabelled packets and unknown statuses raise WireError."""
    run = encode_run(
        1, command=2, offset=0, size=16, bindings=[3, 4], writable=[False, True], sizes=[8, 8]
    )
    done = encode_done(DoneMessage(1, CompletionStatus.OK, None, 1e-3, 2e-3, 8, 8))
    for bad in (b"", b"R", run[:-1], run + b"\0", b"{" + run[1:]):
        with pytest.raises(WireError):
            decode_run(bad)
    for bad in (b"", done[:-1], b"R" + done[1:], done[:9] + b"\xff" + done[10:]):
        with pytest.raises(WireError):
            decode_done(bad)


def test_values_that_do_not_fit_are_refused() -> None:
    """A negative handle or mismatched flags are a WireError, never a garbled packet."""
    with pytest.raises(WireError):
        encode_run(1, command=-2, offset=0, size=16, bindings=[], writable=[], sizes=[])
    with pytest.raises(WireError):
        encode_run(1, command=2, offset=0, size=16, bindings=[3], writable=[], sizes=[8])
    with pytest.raises(WireError):
        encode_run(1, command=2, offset=0, size=16, bindings=[3], writable=[True], sizes=[])
    with pytest.raises(WireError):
        encode_run(1, command=2, offset=0, size=16, bindings=[3], writable=[True], sizes=[-1])
    with pytest.raises(WireError):
        encode_run(
            1, command=2, offset=0, size=16, bindings=[], writable=[], sizes=[], engine=1 << 16
        )
    with pytest.raises(WireError):
        encode_done(DoneMessage(-1, CompletionStatus.OK, None, 0.0, 0.0, 0, 0))
