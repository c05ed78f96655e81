"""Requests that are not valid protobuf end INVALID_ARGUMENT, not UNKNOWN or INTERNAL.

grpc deserializes a request before any servicer code runs. When the bytes do not parse,
grpc.aio ends a unary rpc UNKNOWN ("Unexpected error"), and a client stream raises the parse
error inside the servicer's ``async for``, which npud's error decorators can only call a bug
(INTERNAL). Neither tells the client that its request was at fault.

:class:`DecodeGuard` is a server interceptor that wraps each method's deserializer: bytes that
do not parse become an :class:`Undecodable` marker instead of an exception, and the wrapped
behaviour turns the marker into INVALID_ARGUMENT naming the rpc and the message type (the bytes
are not echoed), set as the rpc's status (see :func:`npud.api.status.set_error` for why not
``context.abort()``). Decodable requests pass through untouched.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from npud.api.status import set_error
from npud.errors import InvalidArgument


@dataclass(frozen=True, slots=True)
class Undecodable:
    """Stands for a request whose bytes did not parse."""

    reason: str


def _guarded(deserializer: Callable[[bytes], Any]) -> Callable[[bytes], Any]:
    def deserialize(data: bytes) -> Any:
        try:
            return deserializer(data)
        except (DecodeError, ValueError, TypeError) as exc:
            return Undecodable(str(exc)[:200] or type(exc).__name__)

    return deserialize


def _error(method: str, bad: Undecodable) -> InvalidArgument:
    return InvalidArgument(
        f"the request to {method} is not a valid protobuf message of its type ({bad.reason})"
    )


async def _checked(method: str, requests: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """The request stream, raising InvalidArgument at the first message that did not parse.

    Closing it closes grpc's reader of the stream too (see the comment below).
    """
    # Why the reader is closed: grpc.aio's request reader and the async generator it reads with
    # refer to each other, and a generator left suspended (a servicer that stops reading at an
    # error) keeps the last message it read, up to the 64 MiB message limit, until the cyclic
    # collector's next full pass. Closed, it lets go of the message now.
    stream = requests.__aiter__()
    try:
        async for request in stream:
            if isinstance(request, Undecodable):
                raise _error(method, request)
            yield request
    finally:
        aclose = getattr(stream, "aclose", None)
        if aclose is not None:
            await aclose()


def _guard_handler(method: str, handler: Any) -> Any:
    """``handler`` with its deserializer and behaviour wrapped (see the module docstring).

    grpc.aio tells an async-generator behaviour (responses yielded) from a coroutine one
    (responses written with ``context.write``) by inspecting the function, so each wrapper has
    the same form as the behaviour it wraps; a behaviour of neither form is left alone.
    """
    deserializer = handler.request_deserializer
    if deserializer is None:
        return handler
    kind, inner = next(
        (k, getattr(handler, k))
        for k in ("unary_unary", "unary_stream", "stream_unary", "stream_stream")
        if getattr(handler, k) is not None
    )
    streamed = kind.startswith("stream_")

    def arguments(request: Any) -> Any:
        if streamed:
            return _checked(method, request)
        if isinstance(request, Undecodable):
            raise _error(method, request)
        return request

    wrapped: Callable[..., Any]
    if inspect.isasyncgenfunction(inner):

        async def generator(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                checked = arguments(request)
            except InvalidArgument as exc:
                set_error(context, exc)
                return
            responses = inner(checked, context)
            try:
                async for response in responses:
                    yield response
            finally:
                # closed now, not when collected: a cancelled stream's cleanup (its session,
                # its reader task, its event feed) must run when the client goes
                await responses.aclose()
                if streamed:
                    await checked.aclose()

        wrapped = generator
    elif inspect.iscoroutinefunction(inner):

        async def coroutine(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            try:
                checked = arguments(request)
            except InvalidArgument as exc:
                set_error(context, exc)
                return None
            try:
                return await inner(checked, context)
            finally:
                if streamed:
                    await checked.aclose()

        wrapped = coroutine
    else:
        return handler
    return handler._replace(request_deserializer=_guarded(deserializer), **{kind: wrapped})


class DecodeGuard(grpc.aio.ServerInterceptor):
    """Makes undecodable requests INVALID_ARGUMENT for every method of the server."""

    def __init__(self) -> None:
        self._cache: dict[str, Any] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        """The method's handler, wrapped once per method and then reused."""
        method: str = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None:
            return None  # an unknown method: grpc answers UNIMPLEMENTED
        cached = self._cache.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        guarded = _guard_handler(method, handler)
        self._cache[method] = (handler, guarded)
        return guarded
