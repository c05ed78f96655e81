"""The gateway's link to npud: one asyncio client and one batcher, rebuilt when npud returns.

The gateway keeps serving when npud is not there: requests then get HTTP 503 with npud's
reason, ``/health`` says so, and the next request after a short back-off tries to connect
again (so a restarted npud is picked up without restarting the gateway). A batcher whose
connection broke (npud went away mid-generation) has already failed its sequences with
``Unavailable``; it is closed and replaced on the next attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from npud.client import aio
from npud.errors import NpudError, Unavailable
from npud.llm.batcher import Batcher, BatcherStatistics
from npud.llm.model import Model
from npud.llm.plan import plan_memory

RETRY_S = 1.0
"""The shortest time between two attempts to reach npud."""


@dataclass(frozen=True, slots=True)
class EngineStatistics:
    """The link's state: connected or not, attempts, and the batcher's counters."""

    connected: bool
    connects: int
    failures: int
    last_error: str
    batcher: BatcherStatistics | None


@dataclass(slots=True, eq=False)
class Engine:
    """Serves one model through npud (see the module docstring).

    ``batcher_options`` are passed to :class:`~npud.llm.batcher.Batcher`.
    """

    model: Model
    socket_path: Path | None = None
    batcher_options: dict[str, Any] = field(default_factory=dict)
    _client: aio.AsyncClient | None = None
    _batcher: Batcher | None = None
    _connecting: asyncio.Task[Batcher] | None = None
    _last_attempt: float = -RETRY_S
    _last_error: str = ""
    _connects: int = 0
    _failures: int = 0

    @property
    def max_seq(self) -> int:
        """The context length each sequence gets."""
        max_seq = self.batcher_options.get("max_seq")
        return (
            plan_memory(self.model, max_seq=max_seq).max_seq
            if max_seq
            else (self.model.config.max_position_embeddings)
        )

    async def batcher(self) -> Batcher:
        """A started batcher on a live connection, connecting first if needed.

        Raises:
            Unavailable: npud cannot be reached (now, or at the last attempt less than
                :data:`RETRY_S` ago).
            ResourceExhausted: npud cannot hold the model.
        """
        current = self._batcher
        if current is not None and current.broken is None:
            return current
        if current is not None:
            self._batcher = None
            await self._drop(current)
        if self._connecting is None:
            if time.monotonic() - self._last_attempt < RETRY_S:
                raise Unavailable(f"npud is not reachable: {self._last_error}")
            self._last_attempt = time.monotonic()
            self._connecting = asyncio.get_running_loop().create_task(self._connect())
        task = self._connecting
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                self._connecting = None

    async def check(self) -> Batcher:
        """:meth:`batcher`, after a round trip to npud proves the connection alive.

        Raises:
            Unavailable: npud cannot be reached (the batcher is then failed and replaced on
                the next attempt).
        """
        batcher = await self.batcher()
        client = self._client
        if client is not None:
            try:
                await client.version()
            except Unavailable as exc:
                batcher.fail(exc)
                raise
        return batcher

    async def _connect(self) -> Batcher:
        client = aio.AsyncClient(self.socket_path)
        try:
            await client.open()
            batcher = Batcher(client, self.model, **self.batcher_options)
            await batcher.start()
        except NpudError as exc:
            await client.close()
            self._failures += 1
            self._last_error = str(exc)
            raise
        except BaseException:
            await client.close()
            raise
        self._client, self._batcher = client, batcher
        self._connects += 1
        self._last_error = ""
        return batcher

    async def _drop(self, batcher: Batcher) -> None:
        with contextlib.suppress(Exception):
            await batcher.close()
        client, self._client = self._client, None
        if client is not None:
            with contextlib.suppress(Exception):
                await client.close()

    async def close(self) -> None:
        """Close the batcher (its context and sequences) and the connection. Idempotent."""
        if self._connecting is not None:
            self._connecting.cancel()
            await asyncio.gather(self._connecting, return_exceptions=True)
            self._connecting = None
        batcher, self._batcher = self._batcher, None
        if batcher is not None:
            await self._drop(batcher)

    def statistics(self) -> EngineStatistics:
        """A frozen snapshot of the link."""
        b = self._batcher
        connected = b is not None and b.broken is None
        error = self._last_error
        if b is not None and b.broken is not None:
            error = str(b.broken)
        return EngineStatistics(
            connected=connected,
            connects=self._connects,
            failures=self._failures,
            last_error=error,
            batcher=b.statistics() if b is not None else None,
        )
