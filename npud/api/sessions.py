"""Client sessions: what ties a client's contexts to the client being alive.

A client opens ``ContextService.Session`` right after the identity handshake and keeps it
open; the contexts it creates with its token belong to that session. When the stream ends for
any reason (the client closed it, crashed, or was killed with SIGKILL: the kernel closes the
connection and grpc cancels the stream), a timer of ``grace_s`` seconds starts. If a new
Session with the same token opens before it fires, nothing happens (a reconnect); otherwise
every context of the token is destroyed, as by DestroyContext, and the token is revoked.

Contexts created with a token that never opened a session live until they are destroyed
explicitly (raw-stub users who want cleanup on exit open a session; the client library always
does).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from npud.core.ids import ContextId
from npud.errors import FailedPrecondition

Expire = Callable[[str, list[ContextId]], None]
"""Called when a session's grace period ran out: (token, its contexts)."""


@dataclass(frozen=True, slots=True)
class SessionStatistics:
    """Sessions open now, pending expiry, and expired so far."""

    open: int
    expiring: int
    expired: int
    bound_contexts: int


@dataclass(slots=True, eq=False)
class SessionTable:
    """Which token owns which contexts, and which tokens have a live session stream."""

    grace_s: float
    on_expire: Expire
    _open: set[str] = field(default_factory=set)
    _timers: dict[str, asyncio.TimerHandle] = field(default_factory=dict)
    _contexts: dict[str, set[ContextId]] = field(default_factory=dict)
    _token_of: dict[ContextId, str] = field(default_factory=dict)
    _expired: int = 0

    def open(self, token: str) -> None:
        """A Session stream opened for ``token``; a pending expiry is called off.

        Raises:
            FailedPrecondition: the token already has an open session stream.
        """
        if token in self._open:
            raise FailedPrecondition(
                "this token already has an open Session stream; one session per token"
            )
        timer = self._timers.pop(token, None)
        if timer is not None:
            timer.cancel()
        self._open.add(token)

    def close(self, token: str) -> None:
        """The Session stream of ``token`` ended: start the grace period."""
        if token not in self._open:
            return
        self._open.discard(token)
        loop = asyncio.get_running_loop()
        self._timers[token] = loop.call_later(self.grace_s, self._expire, token)

    def _expire(self, token: str) -> None:
        self._timers.pop(token, None)
        contexts = sorted(self._contexts.pop(token, set()))
        for ctx in contexts:
            self._token_of.pop(ctx, None)
        self._expired += 1
        self.on_expire(token, contexts)

    def bind(self, token: str, ctx: ContextId) -> None:
        """``ctx`` was created with ``token``."""
        self._contexts.setdefault(token, set()).add(ctx)
        self._token_of[ctx] = token

    def unbind(self, ctx: ContextId) -> None:
        """``ctx`` is gone (destroyed by other means); forget it (idempotent)."""
        token = self._token_of.pop(ctx, None)
        if token is not None:
            owned = self._contexts.get(token)
            if owned is not None:
                owned.discard(ctx)
                if not owned:
                    del self._contexts[token]

    def holds_contexts(self, token: str) -> bool:
        """Whether contexts created with ``token`` are alive."""
        return bool(self._contexts.get(token))

    def is_open(self, token: str) -> bool:
        """Whether ``token`` has a live Session stream."""
        return token in self._open

    def close_all(self) -> None:
        """Cancel every pending expiry (at shutdown: core closes every context anyway)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        self._open.clear()

    def statistics(self) -> SessionStatistics:
        """A snapshot of the table."""
        return SessionStatistics(
            open=len(self._open),
            expiring=len(self._timers),
            expired=self._expired,
            bound_contexts=len(self._token_of),
        )
