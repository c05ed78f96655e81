"""Time for npud: a real monotonic clock for the daemon and a virtual one for tests.

Core never reads the time or arms a timer any other way than through a :class:`Clock`, so the
same scheduler runs on real time in the daemon and on a :class:`VirtualClock` in tests. A
virtual clock only moves when a test calls :meth:`VirtualClock.advance` (or
:meth:`VirtualClock.run_until_idle`), and fires every timer that falls due, in order, on the
caller's stack. Together with the in-process simulated NPU, which completes jobs from such
timers, this makes scheduling behaviour exactly reproducible without a single ``sleep``.

All times are seconds as ``float``; the epoch of each clock is its own.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol


class TimerHandle(Protocol):
    """A timer armed on a clock; ``cancel()`` is idempotent."""

    def cancel(self) -> None: ...


class Clock(Protocol):
    """What core needs of time."""

    def now(self) -> float:
        """Seconds since this clock's epoch."""
        ...

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Arm ``callback`` to run at time ``when`` (on the owning event loop's thread)."""
        ...


class MonotonicClock:
    """Real time on the running asyncio loop (``loop.time()`` is ``time.monotonic()``).

    ``call_at`` must be called from the loop's thread; the callback runs on it.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop

    def _get_loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop

    def now(self) -> float:
        """Return ``time.monotonic()``, the same timebase as the asyncio loop."""
        return time.monotonic()

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Arm a loop timer; raises ``RuntimeError`` outside a running loop."""
        return self._get_loop().call_at(when, callback)


@dataclass(slots=True, eq=False)
class _VirtualTimer:
    when: float
    seq: int
    callback: Callable[[], None] | None

    def cancel(self) -> None:
        self.callback = None

    def __lt__(self, other: _VirtualTimer) -> bool:
        return (self.when, self.seq) < (other.when, other.seq)


@dataclass(slots=True, eq=False)
class VirtualClock:
    """A clock that moves only when told to; timers fire synchronously in time order.

    Timers armed for the same instant fire in the order they were armed. A callback may arm
    further timers; those fire in the same ``advance`` call if they fall due within it.
    """

    _now: float = 0.0
    _heap: list[_VirtualTimer] = field(default_factory=list)
    _seq: itertools.count[int] = field(default_factory=itertools.count)

    def now(self) -> float:
        """The current virtual time."""
        return self._now

    def call_at(self, when: float, callback: Callable[[], None]) -> TimerHandle:
        """Arm ``callback`` at ``when`` (a time in the past fires at the next advance)."""
        timer = _VirtualTimer(when, next(self._seq), callback)
        heapq.heappush(self._heap, timer)
        return timer

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Arm ``callback`` ``delay`` seconds from now."""
        return self.call_at(self._now + delay, callback)

    def next_deadline(self) -> float | None:
        """The time of the earliest live timer, or ``None`` when none is armed."""
        while self._heap and self._heap[0].callback is None:
            heapq.heappop(self._heap)
        return self._heap[0].when if self._heap else None

    def advance(self, delta: float) -> None:
        """Move time forward by ``delta`` seconds, firing every timer due on the way.

        Raises:
            ValueError: ``delta`` is negative.
        """
        if delta < 0:
            raise ValueError(f"cannot move a clock backwards (delta={delta})")
        self.advance_to(self._now + delta)

    def advance_to(self, when: float) -> None:
        """Move time forward to ``when`` (no-op if it is in the past), firing due timers."""
        while True:
            nxt = self.next_deadline()
            if nxt is None or nxt > when:
                break
            timer = heapq.heappop(self._heap)
            self._now = max(self._now, timer.when)
            callback, timer.callback = timer.callback, None
            if callback is not None:
                callback()
        self._now = max(self._now, when)

    def run_until_idle(self, *, limit: float = 1e9) -> None:
        """Fire timers in order until none is left or the next is beyond ``limit``.

        Raises:
            RuntimeError: timers keep arriving beyond ``limit`` seconds of virtual time.
        """
        while (nxt := self.next_deadline()) is not None:
            if nxt > limit:
                raise RuntimeError(f"virtual clock still busy at t={nxt:.6f} (limit {limit})")
            self.advance_to(nxt)
