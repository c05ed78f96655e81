"""SystemService: the daemon's version."""

# ruff: noqa: N802 - servicer methods carry the rpc names of the .proto

from __future__ import annotations

from typing import Any

from npud.api.state import ApiState
from npud.api.status import unary
from npud.v1 import system_pb2, system_pb2_grpc


class SystemServicer(system_pb2_grpc.SystemServiceServicer):
    """Answers questions about the daemon as a whole (no token needed)."""

    def __init__(self, state: ApiState) -> None:
        self._state = state

    @unary
    async def GetVersion(
        self, request: system_pb2.GetVersionRequest, context: Any
    ) -> system_pb2.GetVersionResponse:
        """The npud release and the wire API version."""
        return system_pb2.GetVersionResponse(version=self._state.version, api_version="v1")
