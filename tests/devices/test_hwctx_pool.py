"""The hardware-context pool: sharing, warm reuse, eviction, and queueing instead of failing."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from npud.devices.base import Binding, BufferUse, Submission
from npud.devices.hwctx_pool import ContextsExhausted, HwContextPool
from npud.errors import ResourceExhausted
from npud.vocab import MemoryTier
from tests.devices.accel_harness import make


class Kernel:
    """A stand-in for the kernel side: a global limit, counting creates and destroys."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.live: set[str] = set()
        self.created = 0

    def create(self, key: str) -> str:
        if len(self.live) >= self.limit:
            raise ContextsExhausted("kernel out of contexts")
        self.created += 1
        ctx = f"{key}#{self.created}"
        self.live.add(ctx)
        return ctx

    def destroy(self, ctx: str) -> None:
        self.live.remove(ctx)


def pool_for(kernel: Kernel, capacity: int) -> HwContextPool[str, str]:
    return HwContextPool(capacity=capacity, create=kernel.create, destroy=kernel.destroy)


def test_same_key_shares_one_context() -> None:
    """Two users of one key share one context; it is created once."""
    kernel = Kernel(4)
    pool = pool_for(kernel, 4)
    got: list[str] = []
    pool.acquire("a", got.append)
    pool.acquire("a", got.append)
    assert got[0] == got[1]
    assert kernel.created == 1


def test_idle_context_is_kept_warm_and_reused() -> None:
    """A released context stays live and serves the next request without a create."""
    kernel = Kernel(4)
    pool = pool_for(kernel, 4)
    pool.acquire("a", lambda c: None)
    pool.release("a")
    pool.acquire("a", lambda c: None)
    assert kernel.created == 1
    assert pool.statistics().live == 1


def test_full_pool_queues_then_grants_on_release() -> None:
    """With every context busy, a new key waits (not fails) and gets a context on release."""
    kernel = Kernel(2)
    pool = pool_for(kernel, 2)
    pool.acquire("a", lambda c: None)
    pool.acquire("b", lambda c: None)
    got: list[str] = []
    pool.acquire("c", got.append)
    assert got == []
    assert pool.statistics().waiting == 1
    pool.release("a")
    assert len(got) == 1
    assert got[0].startswith("c#")
    assert pool.statistics().evictions == 1
    assert len(kernel.live) == 2


def test_kernel_refusal_lowers_capacity_and_queues() -> None:
    """When other processes hold contexts, the kernel's refusal is learned and work queues."""
    kernel = Kernel(1)  # someone else already holds the rest
    pool = pool_for(kernel, 6)
    pool.acquire("a", lambda c: None)
    got: list[str] = []
    pool.acquire("b", got.append)
    stats = pool.statistics()
    assert (stats.capacity, stats.waiting, stats.kernel_refusals) == (1, 1, 1)
    pool.release("a")
    assert got
    assert got[0].startswith("b#")


def test_nothing_held_and_refused_fails_with_reason() -> None:
    """If the pool holds nothing and the kernel refuses, waiting could never end: it fails."""
    pool = pool_for(Kernel(0), 4)
    with pytest.raises(ResourceExhausted, match="other processes"):
        pool.acquire("a", lambda c: None)


def test_urgent_waiter_goes_first() -> None:
    """Queued requests are granted by urgency, then arrival."""
    kernel = Kernel(1)
    pool: HwContextPool[tuple[str, int], str] = HwContextPool(
        capacity=1,
        create=lambda k: kernel.create(k[0]),
        destroy=kernel.destroy,
        urgency=lambda k: k[1],
    )
    order: list[str] = []
    pool.acquire(("busy", 0), lambda c: None)
    pool.acquire(("bulk", 3), lambda c: order.append("bulk"))
    pool.acquire(("decode", 0), lambda c: order.append("decode"))
    pool.release(("busy", 0))
    assert order == ["decode"]


def test_cancel_withdraws_a_waiter() -> None:
    """A cancelled request is never granted."""
    kernel = Kernel(1)
    pool = pool_for(kernel, 1)
    pool.acquire("a", lambda c: None)
    got: list[str] = []
    ticket = pool.acquire("b", got.append)
    assert pool.cancel(ticket)
    pool.release("a")
    assert got == []
    assert not pool.cancel(ticket)


@settings(max_examples=60, deadline=None)
@given(
    capacity=st.integers(1, 4),
    ops=st.lists(st.tuples(st.sampled_from(["acq", "rel"]), st.integers(0, 5)), max_size=40),
)
def test_pool_invariants(capacity: int, ops: list[tuple[str, int]]) -> None:
    """Never more live contexts than capacity; every request is granted once all are released."""
    kernel = Kernel(capacity)
    pool = pool_for(kernel, capacity)
    holding: list[str] = []
    granted: list[str] = []
    requested = 0
    for op, n in ops:
        key = f"k{n}"
        if op == "acq":
            requested += 1
            pool.acquire(key, lambda c, key=key: (granted.append(key), holding.append(key)))
        elif holding:
            pool.release(holding.pop(0))
        assert len(kernel.live) <= capacity
        assert pool.statistics().live == len(kernel.live)
    while holding:
        pool.release(holding.pop(0))
        assert len(kernel.live) <= capacity
    assert len(granted) == requested
    assert pool.statistics().waiting == 0


def test_amdxdna_exhaustion_queues_work_instead_of_failing() -> None:
    """On amdxdna with 2 hardware contexts, 6 jobs over 3 engines x 2 levels all complete OK."""

    async def scenario() -> None:
        fake, build = make("amdxdna", auto_complete=False, hwctx_limit=2)
        device = build(name="xdna0", engines=3, kernel_depth=4)
        device.open()
        assert device.capabilities.max_hw_contexts == 2
        out = device.create_buffer(4096, MemoryTier.DRAM)
        cmd = device.create_buffer(4096, MemoryTier.DRAM)
        done: list[str] = []
        for engine in range(2):
            for level in (0, 3):
                sub = Submission(
                    cmd.handle,
                    0,
                    64,
                    (Binding(out.handle, BufferUse.WRITE),),
                    engine,
                    priority=level,
                )
                device.submit(sub, lambda c: done.append(c.status))
        stats = device.pool_statistics()
        assert stats.live == 2
        assert stats.waiting >= 1
        assert fake.live_contexts() == 2
        async with asyncio.timeout(30):
            while len(done) < 4:
                fake.complete(1)
                await asyncio.sleep(0.005)
        assert done == ["ok"] * 4
        assert fake.live_contexts() <= 2
        assert device.pool_statistics().queued_total >= 1
        device.close()
        assert fake.live_contexts() == 0

    asyncio.run(scenario())


def test_amdxdna_other_process_holding_contexts_is_learned() -> None:
    """Contexts held by another process make npud's pool queue, then proceed when they free."""

    async def scenario() -> None:
        fake, build = make("amdxdna", auto_complete=False, hwctx_limit=2)
        device = build(name="xdna0", engines=2)
        device.open()
        other = fake.open()  # another process: grabs one of the two contexts
        fake.hwctxs[(id(other), 1)] = {
            "qos": {"priority": 0x200},
            "syncobj": 0,
            "ready": True,
            "seq": 0,
            "completions": 0,
        }
        out = device.create_buffer(4096, MemoryTier.DRAM)
        done: list[str] = []
        for engine in range(2):
            sub = Submission(out.handle, 0, 64, (Binding(out.handle, BufferUse.WRITE),), engine)
            device.submit(sub, lambda c: done.append(c.status))
        stats = device.pool_statistics()
        assert (stats.live, stats.waiting, stats.kernel_refusals) == (1, 1, 1)
        async with asyncio.timeout(30):
            while len(done) < 2:
                fake.complete(1)
                await asyncio.sleep(0.005)
        assert done == ["ok", "ok"]
        device.close()

    asyncio.run(scenario())
