"""What every servicer shares: core, the token registry, sessions, defaults, and serving state.

One :class:`ApiState` is built by the daemon and handed to every servicer. It resolves the
caller of an rpc (:meth:`ApiState.caller`), refuses new work while the daemon shuts down
(:meth:`ApiState.require_serving`) and fans core's events out to streaming rpcs
(:class:`EventFeed`). Everything here runs on the daemon's event loop, the core thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from npud import __version__
from npud.api.identity import TokenRegistry
from npud.api.sessions import SessionTable
from npud.core.events import Event, Subscription
from npud.core.owner import Owner
from npud.core.service import Core
from npud.errors import Unavailable


@dataclass(frozen=True, slots=True)
class Defaults:
    """Daemon-wide defaults applied where a request leaves a field at 0."""

    context_memory_bytes: int = 1 << 30
    max_queued_jobs: int = 1024
    max_queues: int = 16
    queue_depth_limit: int = 256
    read_chunk_bytes: int = 1 << 20


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is calling: the token, the owner the kernel vouched for, and whether it is admin."""

    token: str
    owner: Owner
    admin: bool


@dataclass(slots=True, eq=False)
class ApiState:
    """Shared by every servicer (see the module docstring)."""

    core: Core
    tokens: TokenRegistry
    sessions: SessionTable
    defaults: Defaults = field(default_factory=Defaults)
    version: str = __version__
    status: str = "starting"  # the last line sent to systemd (refreshed every few seconds)
    describe: Callable[[], str] | None = None  # computes the status line now, for live views
    shutting_down: bool = False
    started: float = field(default_factory=time.monotonic)

    def current_status(self) -> str:
        """The daemon's one-line status as of now (not the last one sent to systemd)."""
        return self.describe() if self.describe is not None else self.status

    def caller(self, context: Any) -> Caller:
        """The caller of an rpc.

        Raises:
            Unauthenticated: no valid ``npud-token`` metadata.
        """
        token = self.tokens.token_of(context)
        owner = self.tokens.owner(token)
        assert owner is not None
        return Caller(token, owner, self.core.is_admin(owner))

    def require_serving(self) -> None:
        """Refuse new work while shutting down.

        Raises:
            Unavailable: the daemon is shutting down.
        """
        if self.shutting_down:
            raise Unavailable("npud is shutting down and accepts no new work; retry after restart")

    def uptime_s(self) -> float:
        """Seconds since the API started."""
        return time.monotonic() - self.started


class EventFeed:
    """Core events copied into an asyncio queue for one streaming rpc.

    Core delivers events synchronously on the loop's thread; the feed only appends, so a slow
    stream never slows the scheduler. A stream that falls ``limit`` events behind loses the
    oldest ones (counted in :attr:`dropped`) rather than growing without bound.
    """

    def __init__(self, core: Core, *, limit: int = 10_000) -> None:
        self._queue: asyncio.Queue[Event] = asyncio.Queue()
        self._limit = limit
        self.dropped = 0
        self._subscription: Subscription | None = core.subscribe(self._put)

    def _put(self, event: Event) -> None:
        if self._queue.qsize() >= self._limit:
            self._queue.get_nowait()
            self.dropped += 1
        self._queue.put_nowait(event)

    async def get(self, timeout: float | None = None) -> Event | None:
        """The next event, or None when ``timeout`` seconds pass without one."""
        try:
            return await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None

    def close(self) -> None:
        """Stop receiving events (idempotent)."""
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None

    def __enter__(self) -> EventFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
