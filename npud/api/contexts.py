"""ContextService: execution contexts and the session stream that keeps them alive."""

# ruff: noqa: N802 - servicer methods carry the rpc names of the .proto

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from npud.api.convert import class_from_wire, context_to_wire, owner_to_wire
from npud.api.state import ApiState
from npud.api.status import streaming, unary
from npud.core.context import ContextQuotas
from npud.core.ids import ContextId
from npud.core.limits import bounded
from npud.errors import PermissionDenied
from npud.v1 import context_pb2, context_pb2_grpc
from npud.vocab import SchedulingClass


class ContextServicer(context_pb2_grpc.ContextServiceServicer):
    """Creates, lists and destroys contexts; runs client sessions."""

    def __init__(self, state: ApiState) -> None:
        self._state = state

    def _quotas(self, req: context_pb2.Quotas, admin: bool) -> ContextQuotas:
        d = self._state.defaults
        asked = {
            "memory_bytes": (req.memory_bytes, d.context_memory_bytes),
            "max_queued_jobs": (req.max_queued_jobs, d.max_queued_jobs),
            "max_queues": (req.max_queues, d.max_queues),
        }
        for name, (value, default) in asked.items():
            if value > default and not admin:
                raise PermissionDenied(
                    f"quotas.{name} = {value} is above the default {default}; only an admin "
                    "may raise a context's quotas"
                )
        return ContextQuotas(
            max_queued_jobs=req.max_queued_jobs or d.max_queued_jobs,
            max_queues=req.max_queues or d.max_queues,
            memory_bytes=req.memory_bytes or d.context_memory_bytes,
        )

    @unary
    async def CreateContext(
        self, request: context_pb2.CreateContextRequest, context: Any
    ) -> context_pb2.CreateContextResponse:
        """Open a context for the caller (bound to the caller's session)."""
        state = self._state
        caller = state.caller(context)
        state.require_serving()
        bounds = state.core.limits.bounds
        if request.weight != 0:  # 0 (unset): 1
            bounded(
                "weight",
                request.weight,
                low=bounds.min_weight,
                high=bounds.max_weight,
                why="0 means 1; the fair-share weights the daemon's policy allows",
            )
        default_class = class_from_wire(
            request.default_class, "default_class", default=SchedulingClass.THROUGHPUT
        )
        assert default_class is not None
        ctx = state.core.create_context(
            caller.owner,
            device=request.device or None,
            quotas=self._quotas(request.quotas, caller.admin),
            default_class=default_class,
            weight=request.weight or 1.0,
            label=request.label,
        )
        state.sessions.bind(caller.token, ctx.id)
        return context_pb2.CreateContextResponse(
            context=context_to_wire(state.core, ctx, admin=caller.admin)
        )

    @unary
    async def DestroyContext(
        self, request: context_pb2.DestroyContextRequest, context: Any
    ) -> context_pb2.DestroyContextResponse:
        """Close a context: queued jobs cancelled, running ones drain, buffers released."""
        caller = self._state.caller(context)
        self._state.core.destroy_context(caller.owner, ContextId(request.context_id))
        return context_pb2.DestroyContextResponse()

    @unary
    async def ListContexts(
        self, request: context_pb2.ListContextsRequest, context: Any
    ) -> context_pb2.ListContextsResponse:
        """The caller's contexts (everyone's for an admin asking for all)."""
        caller = self._state.caller(context)
        if request.all and not caller.admin:
            raise PermissionDenied(
                f"listing every owner's contexts is for admins; {caller.owner} is not one"
            )
        core = self._state.core
        return context_pb2.ListContextsResponse(
            contexts=[
                context_to_wire(core, c, admin=core.is_admin(c.owner))
                for c in core.contexts(caller.owner, all_users=request.all)
                if c.open
            ]
        )

    @unary
    async def GetContext(
        self, request: context_pb2.GetContextRequest, context: Any
    ) -> context_pb2.GetContextResponse:
        """One context of the caller."""
        caller = self._state.caller(context)
        core = self._state.core
        ctx = core.context(caller.owner, ContextId(request.context_id))
        return context_pb2.GetContextResponse(
            context=context_to_wire(core, ctx, admin=core.is_admin(ctx.owner))
        )

    @streaming
    async def Session(
        self, request_iterator: Any, context: Any
    ) -> AsyncIterator[context_pb2.SessionResponse]:
        """Keep the caller's session alive while the stream is open (see sessions.py)."""
        state = self._state
        caller = state.caller(context)
        state.sessions.open(caller.token)
        try:
            owner = owner_to_wire(caller.owner, admin=caller.admin)
            async for req in request_iterator:
                yield context_pb2.SessionResponse(
                    pong=req.ping, grace_period_s=state.sessions.grace_s, owner=owner
                )
        finally:
            state.sessions.close(caller.token)
