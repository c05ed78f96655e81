"""BufferService: create, fill, read, share, pin and release buffers through a context."""

# ruff: noqa: N802 - servicer methods carry the rpc names of the .proto

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from npud.api.convert import (
    buffer_to_wire,
    persistence_from_wire,
    preference_from_wire,
    usage_from_wire,
)
from npud.api.state import ApiState
from npud.api.status import streaming, unary
from npud.core.ids import BufferId, ContextId
from npud.errors import InvalidArgument, PermissionDenied
from npud.v1 import buffer_pb2, buffer_pb2_grpc
from npud.vocab import Persistence


class BufferServicer(buffer_pb2_grpc.BufferServiceServicer):
    """Every buffer operation goes through core (and its residency manager)."""

    def __init__(self, state: ApiState) -> None:
        self._state = state

    @unary
    async def CreateBuffer(
        self, request: buffer_pb2.CreateBufferRequest, context: Any
    ) -> buffer_pb2.CreateBufferResponse:
        """Allocate a buffer in a context."""
        state = self._state
        caller = state.caller(context)
        state.require_serving()
        persistence = persistence_from_wire(request.persistence)
        if persistence is Persistence.EPHEMERAL and request.key:
            raise InvalidArgument("key: only PERSISTENT buffers have a key")
        buf = state.core.create_buffer(
            caller.owner,
            ContextId(request.context_id),
            request.size,
            usage=usage_from_wire(request.usage),
            persistence=persistence,
            tier=preference_from_wire(request.tier_preference),
            key=request.key or None,
        )
        return buffer_pb2.CreateBufferResponse(buffer=buffer_to_wire(buf, request.context_id))

    @unary
    async def WriteBuffer(
        self, request_iterator: Any, context: Any
    ) -> buffer_pb2.WriteBufferResponse:
        """Write a stream of chunks (ids on the first chunk), then seal if asked."""
        state = self._state
        caller = state.caller(context)
        core = state.core
        ctx_id = buf_id = ""
        written = 0
        seal = False
        async for chunk in request_iterator:
            if not ctx_id:
                ctx_id, buf_id = chunk.context_id, chunk.buffer_id
                if not ctx_id or not buf_id:
                    raise InvalidArgument(
                        "the first WriteBuffer chunk must carry context_id and buffer_id"
                    )
            seal = seal or chunk.seal
            if chunk.data:
                core.write_buffer(
                    caller.owner, ContextId(ctx_id), BufferId(buf_id), chunk.offset, chunk.data
                )
                written += len(chunk.data)
        if not ctx_id:
            raise InvalidArgument("WriteBuffer needs at least one chunk naming the buffer")
        if seal:
            buf = core.seal_buffer(caller.owner, ContextId(ctx_id), BufferId(buf_id))
        else:
            buf = core.buffer(caller.owner, ContextId(ctx_id), BufferId(buf_id))
        return buffer_pb2.WriteBufferResponse(
            bytes_written=written, buffer=buffer_to_wire(buf, ctx_id)
        )

    @streaming
    async def ReadBuffer(
        self, request: buffer_pb2.ReadBufferRequest, context: Any
    ) -> AsyncIterator[buffer_pb2.ReadBufferResponse]:
        """Stream a byte range back in chunks."""
        state = self._state
        caller = state.caller(context)
        ctx_id, buf_id = ContextId(request.context_id), BufferId(request.buffer_id)
        buf = state.core.buffer(caller.owner, ctx_id, buf_id)
        size = request.size or max(0, buf.size - request.offset)
        if request.offset + size > buf.size or size == 0:
            raise InvalidArgument(
                f"range [{request.offset}, {request.offset + size}) is empty or outside "
                f"buffer {buf_id} ({buf.size} bytes)"
            )
        chunk = request.chunk_size or state.defaults.read_chunk_bytes
        pos = request.offset
        end = request.offset + size
        while pos < end:
            n = min(chunk, end - pos)
            data = state.core.read_buffer(caller.owner, ctx_id, buf_id, pos, n)
            yield buffer_pb2.ReadBufferResponse(offset=pos, data=data)
            pos += n

    @unary
    async def OpenPersistentBuffer(
        self, request: buffer_pb2.OpenPersistentBufferRequest, context: Any
    ) -> buffer_pb2.OpenPersistentBufferResponse:
        """Attach a persistent buffer by key (uploads nothing)."""
        state = self._state
        caller = state.caller(context)
        state.require_serving()
        if not request.key:
            raise InvalidArgument("key: a persistent buffer is opened by its key; got none")
        buf = state.core.open_persistent(caller.owner, ContextId(request.context_id), request.key)
        return buffer_pb2.OpenPersistentBufferResponse(
            buffer=buffer_to_wire(buf, request.context_id)
        )

    @unary
    async def PinBuffer(
        self, request: buffer_pb2.PinBufferRequest, context: Any
    ) -> buffer_pb2.PinBufferResponse:
        """Keep a buffer resident."""
        caller = self._state.caller(context)
        core = self._state.core
        ctx_id, buf_id = ContextId(request.context_id), BufferId(request.buffer_id)
        core.pin_buffer(caller.owner, ctx_id, buf_id)
        buf = core.buffer(caller.owner, ctx_id, buf_id)
        return buffer_pb2.PinBufferResponse(buffer=buffer_to_wire(buf, ctx_id))

    @unary
    async def UnpinBuffer(
        self, request: buffer_pb2.UnpinBufferRequest, context: Any
    ) -> buffer_pb2.UnpinBufferResponse:
        """Drop one pin."""
        caller = self._state.caller(context)
        core = self._state.core
        ctx_id, buf_id = ContextId(request.context_id), BufferId(request.buffer_id)
        core.unpin_buffer(caller.owner, ctx_id, buf_id)
        buf = core.buffer(caller.owner, ctx_id, buf_id)
        return buffer_pb2.UnpinBufferResponse(buffer=buffer_to_wire(buf, ctx_id))

    @unary
    async def ReleaseBuffer(
        self, request: buffer_pb2.ReleaseBufferRequest, context: Any
    ) -> buffer_pb2.ReleaseBufferResponse:
        """Drop the context's reference."""
        caller = self._state.caller(context)
        self._state.core.release_buffer(
            caller.owner, ContextId(request.context_id), BufferId(request.buffer_id)
        )
        return buffer_pb2.ReleaseBufferResponse()

    @unary
    async def ListBuffers(
        self, request: buffer_pb2.ListBuffersRequest, context: Any
    ) -> buffer_pb2.ListBuffersResponse:
        """The buffers a context holds, or those of every context the caller may list."""
        caller = self._state.caller(context)
        if request.all and not caller.admin:
            raise PermissionDenied(
                f"listing every owner's buffers is for admins; {caller.owner} is not one"
            )
        held = self._state.core.held_buffers(
            caller.owner,
            ContextId(request.context_id) if request.context_id else None,
            all_users=request.all,
        )
        return buffer_pb2.ListBuffersResponse(
            buffers=[buffer_to_wire(b, ctx_id) for ctx_id, b in held]
        )
