"""What the scheduler needs of a residency manager (:mod:`npud.core.residency`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from npud.core.buffers import Buffer
from npud.core.ids import ContextId
from npud.devices.base import Binding, BufferUse


class ResidencyPort(Protocol):
    """Buffer placement as the scheduler drives it: ``prepare`` before dispatch, ``begin_run``
    and ``end_run`` around a job on the device, ``binding`` for the device's handle."""

    def prepare(self, buffers: Sequence[Buffer]) -> bool: ...

    def is_resident(self, buffers: Sequence[Buffer]) -> bool: ...

    def begin_run(self, buffers: Sequence[Buffer], now: float | None = None) -> None: ...

    def end_run(
        self, buffers: Sequence[Buffer], written: Sequence[Buffer], now: float | None = None
    ) -> None: ...

    def binding(self, buf: Buffer, use: BufferUse) -> Binding: ...

    def release_context(self, ctx: ContextId) -> None: ...
