"""The device process's per-job messages: fixed binary layouts instead of JSON.

Every job crosses the daemon/device-process boundary twice: a ``run`` message down and a
``done`` message up (:mod:`npud.devices.sim.host`, :mod:`npud.devices.sim.firmware`). They are
the hot path of the simulated NPU, so they are packed with :mod:`struct` (a few microseconds
per job less than ``json`` on each side); the rare control messages (hello, map, unmap, exit)
stay JSON objects. The first byte tells them apart: ``{`` starts JSON, :data:`RUN` and
:data:`DONE` start the binary ones. All integers are little-endian.

- run:  ``b"R"``, token u64, command handle u64, offset u64, size u64, engine u16, flags u8
  (:data:`RUN_HANG`), binding count u16, then per binding its handle u64, then per binding the
  bytes the job may touch u64 (the buffer's own size, which its page-rounded allocation may
  exceed), then per binding a writable flag u8.
- done: ``b"D"``, token u64, status u8 (index in :data:`STATUSES`), has-error u8, modelled_s
  f64, compute_s f64, bytes_read u64, bytes_written u64, then the error text (UTF-8, the rest
  of the packet).
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from npud.devices.base import CompletionStatus

RUN = b"R"
DONE = b"D"
STATUSES = tuple(CompletionStatus)
_STATUS_INDEX = {status: i for i, status in enumerate(STATUSES)}

RUN_HANG = 0x01  # flags: the job hangs on its engine until cancelled (fault injection)

_RUN = struct.Struct("<cQQQQHBH")
MAX_MESSAGE = 1 << 16
"""The largest packet either side receives (the device process's receive buffer)."""
_PER_BINDING = 8 + 8 + 1
MAX_BINDINGS = (MAX_MESSAGE - _RUN.size) // _PER_BINDING
"""Bindings a run packet carries within :data:`MAX_MESSAGE` (a u64 handle, a u64 size and a
flag each)."""
_DONE = struct.Struct("<cQBBddQQ")


class WireError(ValueError):
    """A packet that is not a well-formed run or done message."""


@dataclass(frozen=True, slots=True)
class RunMessage:
    """One job to execute on an engine: its command range and its bindings' handles, sizes
    and uses in slot order."""

    token: int
    command: int
    offset: int
    size: int
    bindings: tuple[int, ...]
    writable: tuple[bool, ...]
    engine: int = 0
    flags: int = 0
    sizes: tuple[int, ...] = ()  # bytes per binding the job may touch (empty: whole mappings)


@dataclass(frozen=True, slots=True)
class DoneMessage:
    """How one job ended in the device process."""

    token: int
    status: CompletionStatus
    error: str | None
    modelled_s: float
    compute_s: float
    bytes_read: int
    bytes_written: int


def encode_run(
    token: int,
    *,
    command: int,
    offset: int,
    size: int,
    bindings: Sequence[int],
    writable: Sequence[bool],
    sizes: Sequence[int],
    engine: int = 0,
    flags: int = 0,
) -> bytes:
    """A run packet.

    Raises:
        WireError: ``bindings``, ``writable`` and ``sizes`` differ in length, more than
            :data:`MAX_BINDINGS` bindings, or a field does not fit.
    """
    n = len(bindings)
    if len(writable) != n or len(sizes) != n:
        raise WireError(f"{n} bindings but {len(writable)} writable flags and {len(sizes)} sizes")
    if n > MAX_BINDINGS:
        raise WireError(f"{n} bindings do not fit a run message (at most {MAX_BINDINGS})")
    try:
        return b"".join(
            (
                _RUN.pack(RUN, token, command, offset, size, engine, flags, n),
                struct.pack(f"<{n}Q", *bindings),
                struct.pack(f"<{n}Q", *sizes),
                bytes(bool(w) for w in writable),
            )
        )
    except struct.error as exc:
        raise WireError(f"run message does not fit its layout: {exc}") from None


def decode_run(data: bytes) -> RunMessage:
    """Parse a run packet.

    Raises:
        WireError: a short, long or mislabelled packet.
    """
    head = _RUN.size
    if len(data) < head or data[:1] != RUN:
        raise WireError("not a run message")
    _, token, command, offset, size, engine, flags, n = _RUN.unpack_from(data)
    if len(data) != head + _PER_BINDING * n:
        raise WireError(f"run message of {len(data)} bytes for {n} bindings")
    bindings = struct.unpack_from(f"<{n}Q", data, head)
    sizes = struct.unpack_from(f"<{n}Q", data, head + 8 * n)
    writable = tuple(b != 0 for b in data[head + 16 * n :])
    return RunMessage(token, command, offset, size, bindings, writable, engine, flags, sizes)


def encode_done(msg: DoneMessage) -> bytes:
    """A done packet.

    Raises:
        WireError: a field does not fit its layout.
    """
    try:
        head = _DONE.pack(
            DONE,
            msg.token,
            _STATUS_INDEX[msg.status],
            msg.error is not None,
            msg.modelled_s,
            msg.compute_s,
            msg.bytes_read,
            msg.bytes_written,
        )
    except struct.error as exc:
        raise WireError(f"done message does not fit its layout: {exc}") from None
    if msg.error is None:
        return head
    return head + msg.error.encode("utf-8", "replace")


def decode_done(data: bytes) -> DoneMessage:
    """Parse a done packet.

    Raises:
        WireError: a short or mislabelled packet, an unknown status.
    """
    if len(data) < _DONE.size or data[:1] != DONE:
        raise WireError("not a done message")
    _, token, status, has_error, modelled, compute, read, written = _DONE.unpack_from(data)
    if status >= len(STATUSES):
        raise WireError(f"unknown completion status {status}")
    error = data[_DONE.size :].decode("utf-8", "replace") if has_error else None
    return DoneMessage(token, STATUSES[status], error, modelled, compute, read, written)
