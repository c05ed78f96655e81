"""The command pool's rules, against a recording stand-in for core (no daemon, no device).

Which buffer an inline stream lands in, when one is created, kept, released, and that a
release asked for from a done callback waits for the next turn of the loop (core still counts
the job as bound to the buffer until the callback returns) - or happens at once when the loop
has stopped.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from npud.api.command_pool import KEEP, MIN_SIZE, CommandPool
from npud.core.ids import BufferId, ContextId
from npud.core.owner import Owner
from npud.core.service import Core
from npud.errors import FailedPrecondition, QuotaExceeded

CTX = ContextId("ctx-1")
ME = Owner(uid=1000, gid=1000)


@dataclass
class _Buf:
    id: BufferId


@dataclass
class _Core:
    """Records what the pool asks of core; buffers are bytearrays by id."""

    sizes: dict[BufferId, int] = field(default_factory=dict)
    data: dict[BufferId, bytes] = field(default_factory=dict)
    released: list[BufferId] = field(default_factory=list)
    refuse_writes_to: set[BufferId] = field(default_factory=set)
    quota_left: int = 1 << 20
    made: int = 0

    def create_buffer(self, owner: Owner, ctx: ContextId, size: int, **_: Any) -> _Buf:
        if size > self.quota_left:
            raise QuotaExceeded("the context's quota is spent")
        self.quota_left -= size
        self.made += 1
        buf_id = BufferId(f"buf-{self.made}")
        self.sizes[buf_id] = size
        return _Buf(buf_id)

    def write_buffer(
        self, owner: Owner, ctx: ContextId, buf_id: BufferId, offset: int, data: bytes
    ) -> None:
        if buf_id in self.refuse_writes_to:
            raise FailedPrecondition(f"buffer {buf_id} is bound to a running job")
        assert offset == 0
        assert len(data) <= self.sizes[buf_id]
        self.data[buf_id] = data

    def release_buffer(
        self, owner: Owner, ctx: ContextId, buf_id: BufferId, *, undo: bool = False
    ) -> None:
        self.released.append(buf_id)
        self.quota_left += self.sizes.pop(buf_id)


def _pool() -> tuple[CommandPool, _Core]:
    core = _Core()
    return CommandPool(cast(Core, core), ME), core


def test_a_finished_jobs_buffer_takes_the_next_stream() -> None:
    """The second stream lands in the first one's buffer, written with the new bytes; one
    buffer of at least a page was created."""

    async def main() -> None:
        pool, core = _pool()
        first, new = pool.take(CTX, b"a" * 100)
        assert new
        assert core.sizes[first] == MIN_SIZE
        pool.give_back(CTX, first)
        second, new = pool.take(CTX, b"b" * 30)
        assert (second, new) == (first, False)
        assert core.data[first] == b"b" * 30
        assert pool.statistics().created == 1
        assert pool.statistics().reused == 1

    asyncio.run(main())


def test_a_stream_too_long_for_the_kept_buffer_gets_a_new_one() -> None:
    """A free buffer smaller than the stream is released (on the next loop turn) and a buffer
    that fits is created."""

    async def main() -> None:
        pool, core = _pool()
        small, _ = pool.take(CTX, b"x")
        pool.give_back(CTX, small)
        big, new = pool.take(CTX, b"y" * (MIN_SIZE + 1))
        assert new
        assert big != small
        assert core.sizes[big] == MIN_SIZE + 1
        assert core.released == []  # not inside the call that gave the buffer up
        await asyncio.sleep(0)
        assert core.released == [small]

    asyncio.run(main())


def test_a_buffer_core_will_not_write_is_dropped_not_reused() -> None:
    """If core refuses the write into a kept buffer, the pool releases it and creates another."""

    async def main() -> None:
        pool, core = _pool()
        first, _ = pool.take(CTX, b"x")
        pool.give_back(CTX, first)
        core.refuse_writes_to.add(first)
        second, new = pool.take(CTX, b"y")
        assert new
        assert second != first
        await asyncio.sleep(0)
        assert core.released == [first]

    asyncio.run(main())


def test_at_most_keep_buffers_are_kept_and_closing_releases_them() -> None:
    """Buffers given back beyond KEEP are released; close() releases the kept ones now and
    later give-backs as they come."""

    async def main() -> None:
        pool, core = _pool()
        taken = [pool.take(CTX, b"z")[0] for _ in range(KEEP + 2)]
        late = taken.pop()
        for buf_id in taken:
            pool.give_back(CTX, buf_id)
        await asyncio.sleep(0)
        assert core.released == [taken[-1]]
        assert pool.statistics().kept == KEEP
        pool.close()
        assert sorted(core.released) == sorted(taken)
        pool.give_back(CTX, late)  # its job ended after the stream
        await asyncio.sleep(0)
        assert sorted(core.released) == sorted([*taken, late])
        assert core.sizes == {}
        assert pool.statistics().kept == 0

    asyncio.run(main())


def test_a_buffer_given_back_after_the_loop_stopped_is_released_at_once() -> None:
    """Jobs ended by the daemon's shutdown, after its loop stopped, still release their
    buffers."""
    pool, core = _pool()

    async def take() -> BufferId:
        return pool.take(CTX, b"q")[0]

    buf_id = asyncio.run(take())
    pool.close()
    pool.give_back(CTX, buf_id)
    assert core.released == [buf_id]


def test_a_refused_creation_keeps_nothing() -> None:
    """When core refuses the new buffer (quota), the error reaches the caller and nothing is
    kept or created."""

    async def main() -> None:
        pool, core = _pool()
        core.quota_left = 10
        with pytest.raises(QuotaExceeded):
            pool.take(CTX, b"w")
        assert core.made == 0
        assert pool.statistics().kept == 0

    asyncio.run(main())
