"""The client's gRPC channel to npud: its target, its message limits, and how an rpc's failure
becomes npud's own exception.

Both client libraries (the synchronous one and the asyncio one) open their channel from here,
so they accept what the daemon sends: the daemon's limit is 64 MiB a message, and a readback of
a few MiB in one SubmitStream answer must not hit gRPC's 4 MiB default on the client's side.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import grpc

from npud.client.errors import from_rpc_error

T = TypeVar("T")

MAX_MESSAGE_BYTES = 64 << 20
"""The largest gRPC message either side accepts (the daemon's limit)."""

CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)


def channel_target(socket_path: Path) -> str:
    """The grpc target for a Unix socket path."""
    return f"unix:{socket_path}"


def call(fn: Callable[[], T]) -> T:
    """Run one unary rpc.

    Raises:
        NpudError: the rpc failed; the subclass follows its status (``from_rpc_error``).
    """
    try:
        return fn()
    except grpc.RpcError as exc:
        raise from_rpc_error(exc) from None


def stream(iterator: Iterator[T]) -> Iterator[T]:
    """Yield a server stream's items; a stream the client cancelled ends quietly.

    Raises:
        NpudError: the stream failed for any other reason.
    """
    try:
        yield from iterator
    except grpc.RpcError as exc:
        code = getattr(exc, "code", None)
        if callable(code) and code() is grpc.StatusCode.CANCELLED:
            return
        raise from_rpc_error(exc) from None
