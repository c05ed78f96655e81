"""A sequence of the batcher: a generation request and its progress, as its caller sees it.

:class:`Request` is what a caller asks for (prompt ids, budget, tier, user, sampler);
:class:`BatchSequence` is the batcher's identity object for it, through which the caller reads
the ids as they come (:meth:`BatchSequence.tokens`) and stops it (:meth:`BatchSequence.cancel`,
:meth:`BatchSequence.stop`). :mod:`npud.llm.batcher` owns everything else about it.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from npud.client import Buffer as ClientBuffer
from npud.errors import NpudError
from npud.llm.sampling import Sampler


class Tier(enum.StrEnum):
    """A request's service tier: which prefill lane and which npud class its prompt gets."""

    INTERACTIVE = "interactive"
    BATCH = "batch"


class Finish(enum.StrEnum):
    """Why a sequence ended."""

    LENGTH = "length"  # max_new_tokens reached
    STOP = "stop"  # EOS, or the caller stopped it (a stop string)
    CONTEXT = "context"  # the KV cache is full
    CANCELLED = "cancelled"  # the caller went away
    ERROR = "error"  # npud failed a job of it


@dataclass(frozen=True, slots=True)
class Request:
    """One generation request.

    ``user`` is whoever the isolation is per (an API key, a user name); ``sampler`` ``None``
    means greedy on the device, else the sequence's own sampler draws each id from the
    device's TOPK candidates. ``stop_ids`` are ids that end the reply besides the model's EOS
    (a chat template's end-of-turn token), with ``stop_at_eos``.
    """

    prompt: tuple[int, ...]
    max_new_tokens: int
    tier: Tier = Tier.INTERACTIVE
    user: str = ""
    stop_at_eos: bool = True
    sampler: Sampler | None = None
    stop_ids: frozenset[int] = frozenset()


class SeqState(enum.Enum):
    """Where a sequence is in its life."""

    WAITING = "waiting"  # no slot yet
    ADMITTED = "admitted"  # slot granted; its buffers are being made
    PREFILL = "prefill"
    DECODE = "decode"
    DONE = "done"


END = object()
"""The marker a sequence's event queue ends with."""


@dataclass(slots=True, eq=False)
class BatchSequence:
    """One sequence in the batcher: its request, device buffers and progress.

    The caller reads its ids with :meth:`tokens` (an async iterator) and may :meth:`cancel`
    it; the batcher owns everything else.
    """

    seq_id: int
    request: Request
    label: str
    state: SeqState = SeqState.WAITING
    tokens_buf: ClientBuffer | None = None
    kv_buf: ClientBuffer | None = None
    generated: list[int] = field(default_factory=list)
    position: int = 0  # the next decode step's position (its input id is tokens[position])
    submitted_to: int = 0  # the position up to which decode steps have been submitted
    prefill_at: int = 0  # the next prompt position to prefill
    in_flight: int = 0  # jobs in flight that bind its buffers
    finish: Finish | None = None
    error: NpudError | None = None
    submitted_at: float = 0.0
    first_token_at: float = 0.0
    _events: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    _granted: asyncio.Event = field(default_factory=asyncio.Event)
    _cancel: Callable[[BatchSequence, Finish], None] | None = None

    async def tokens(self) -> AsyncIterator[int]:
        """Each generated id as soon as it is known, in order.

        Raises:
            NpudError: the class npud named when a job of this sequence failed
                (``Unavailable`` when npud went away).
        """
        while True:
            item = await self._events.get()
            if item is END:
                if self.error is not None:
                    raise self.error
                return
            yield item

    def cancel(self) -> None:
        """Stop generating because the caller went away: no more jobs for it, its prefill
        chunk in flight is cancelled and its buffers are released once no job binds them.
        Idempotent."""
        if self._cancel is not None and self.finish is None:
            self._cancel(self, Finish.CANCELLED)

    def stop(self) -> None:
        """Stop generating because the caller has what it wants (a stop string): as
        :meth:`cancel`, but the sequence ends ``STOP``. Idempotent."""
        if self._cancel is not None and self.finish is None:
            self._cancel(self, Finish.STOP)

    @property
    def prompt_tokens(self) -> int:
        """The prompt's length in ids."""
        return len(self.request.prompt)
