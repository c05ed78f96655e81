"""Invariants of residency under random workloads (hypothesis).

* Pinned buffers and buffers of running jobs are never evicted or moved, whatever else happens.
* A state machine over alloc / free / attach / evict / submit / close: accounting always equals
  the sum of live allocations per tier; state contents survive eviction bit-exact; after every
  context closes only the warm pool remains, and draining it returns every tier to zero.
"""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
)

from npud.clock import VirtualClock
from npud.core.buffers import Buffer, Location
from npud.core.ids import ContextId
from npud.core.residency import ResidencyManager
from npud.errors import FailedPrecondition, NotFound, OutOfDeviceMemory
from npud.vocab import BufferUsage, MemoryTier, Persistence
from tests.core.test_residency import KiB, MemDevice

CTXS = [ContextId(f"ctx-{i}") for i in range(3)]
SIZES = st.sampled_from([256, 1 * KiB, 3 * KiB, 6 * KiB])
USAGES = st.sampled_from([BufferUsage.STATE, BufferUsage.SCRATCH, BufferUsage.WEIGHTS])

op = st.one_of(
    st.tuples(st.just("create"), SIZES, USAGES),
    st.tuples(st.just("prepare"), st.integers(0, 40), st.integers(0, 40)),
    st.tuples(st.just("evict"), st.integers(0, 40), st.just(0)),
    st.tuples(st.just("release"), st.integers(0, 40), st.just(0)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(op, max_size=40), protected=st.integers(1, 3))
def test_pinned_and_running_buffers_are_never_evicted(
    ops: list[tuple[str, object, object]], protected: int
) -> None:
    """Whatever is created, prepared, evicted or released, pinned and running buffers keep
    their device allocation and their bytes."""
    dev = MemDevice(dram=24 * KiB, sram=4 * KiB)
    res = ResidencyManager(dev, VirtualClock())
    keep: list[tuple[Buffer, bytes]] = []
    for i in range(protected):
        buf = res.create(CTXS[0], 2 * KiB, usage=BufferUsage.STATE)
        data = bytes([i + 1]) * buf.size
        res.write(buf, 0, data)
        if i % 2:
            res.pin(buf, ctx=CTXS[0])
        else:
            assert res.prepare([buf])
            res.begin_run([buf])
        keep.append((buf, data))
    before = [b.device for b, _ in keep]
    others: list[Buffer] = []
    for kind, a, b in ops:
        if kind == "create":
            assert isinstance(a, int)
            assert isinstance(b, BufferUsage)
            others.append(res.create(CTXS[1], a, usage=b))
        elif others:
            x = others[int(a) % len(others)]  # type: ignore[call-overload]
            if kind == "prepare":
                y = others[int(b) % len(others)]  # type: ignore[call-overload]
                res.prepare([x, y] if x.size + y.size <= 20 * KiB else [x])
            elif kind == "evict":
                res.evict(x)
            elif kind == "release":
                res.release(CTXS[1], x)
                others.remove(x)
        for (buf, _), dev_buf in zip(keep, before, strict=True):
            assert buf.device is dev_buf
    for (buf, data), dev_buf in zip(keep, before, strict=True):
        assert dev_buf is not None
        assert dev.contents(dev_buf.handle) == data
        assert not res.evict(buf)


class ResidencyMachine(RuleBasedStateMachine):
    """A random mix of client calls and jobs on a device too small for everything at once."""

    def __init__(self) -> None:
        super().__init__()
        self.clock = VirtualClock()
        self.dev = MemDevice(dram=20 * KiB, sram=4 * KiB)
        self.res = ResidencyManager(self.dev, self.clock)
        self.refs: dict[ContextId, set[str]] = {c: set() for c in CTXS}
        self.bufs: dict[str, Buffer] = {}
        self.expected: dict[str, bytes] = {}  # contents that must survive (state, sealed)
        self.running: list[list[Buffer]] = []
        self.rng = random.Random(0)
        self.keys: list[str] = []
        self.order: dict[str, int] = {}  # ids are random: draw in creation order, not id order

    def _held(self) -> list[tuple[ContextId, Buffer]]:
        return [
            (c, self.bufs[i])
            for c in CTXS
            for i in sorted(self.refs[c], key=self.order.__getitem__)
            if i in self.bufs
        ]

    def _forget_dead(self) -> None:
        live = {b.id for b in self.res.buffers()}
        for bid in list(self.bufs):
            if bid not in live:
                del self.bufs[bid]
                self.expected.pop(bid, None)
                for refs in self.refs.values():
                    refs.discard(bid)

    @rule(ctx=st.sampled_from(CTXS), size=SIZES, usage=USAGES, persistent=st.booleans())
    def alloc(self, ctx: ContextId, size: int, usage: BufferUsage, persistent: bool) -> None:
        """Create a buffer and fill it; persistent weights are sealed and shareable."""
        persistence = Persistence.PERSISTENT if persistent else Persistence.EPHEMERAL
        buf = self.res.create(ctx, size, usage=usage, persistence=persistence)
        data = self.rng.randbytes(size)
        self.res.write(buf, 0, data)
        if persistent:
            buf = self.res.seal(ctx, buf)
            assert buf.key is not None
            self.keys.append(buf.key)
        self.bufs[buf.id] = buf
        self.order.setdefault(buf.id, len(self.order))
        self.refs[ctx].add(buf.id)
        if usage is not BufferUsage.SCRATCH:
            self.expected[buf.id] = data if not buf.sealed else self.res.read(buf, 0, buf.size)
        self._forget_dead()

    @precondition(lambda self: any(self.refs.values()))
    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        """Release one reference."""
        held = self._held()
        if not held:
            return
        ctx, buf = data.draw(st.sampled_from(held))
        self.res.release(ctx, buf)
        self.refs[ctx].discard(buf.id)
        self._forget_dead()

    @precondition(lambda self: bool(self.keys))
    @rule(ctx=st.sampled_from(CTXS), data=st.data())
    def attach(self, ctx: ContextId, data: st.DataObject) -> None:
        """Open a persistent key (it may have been forgotten from the warm pool)."""
        key = data.draw(st.sampled_from(self.keys))
        try:
            buf = self.res.open_persistent(ctx, key)
        except NotFound:
            assert all(b.key != key for b in self.res.buffers())
            return
        self.bufs[buf.id] = buf
        self.order.setdefault(buf.id, len(self.order))
        self.refs[ctx].add(buf.id)

    @precondition(lambda self: bool(self.bufs))
    @rule(data=st.data())
    def evict(self, data: st.DataObject) -> None:
        """Evict one buffer if it may be evicted; pinned and running ones refuse."""
        buf = data.draw(st.sampled_from(sorted(self.bufs.values(), key=lambda b: self.order[b.id])))
        protected = buf.pins > 0 or buf.in_use > 0
        done = self.res.evict(buf)
        assert not (protected and done)
        self._forget_dead()

    @precondition(lambda self: any(self.refs.values()))
    @rule(data=st.data(), finish=st.booleans())
    def submit(self, data: st.DataObject, finish: bool) -> None:
        """Prepare a job over up to three held buffers, run it (it rewrites its state
        buffers) and finish it now or leave it running."""
        held = self._held()
        if not held:
            return
        picks = data.draw(st.lists(st.sampled_from(held), min_size=1, max_size=3))
        job = list({b.id: b for _, b in picks}.values())
        if not self.res.prepare(job):
            return
        assert all(b.device is not None for b in job)
        for buf in job:
            if buf.id in self.expected:
                assert self.res.read(buf, 0, buf.size) == self.expected[buf.id]
        self.res.begin_run(job)
        written = [b for b in job if b.usage is BufferUsage.STATE and not b.sealed]
        for buf in written:
            assert buf.device is not None
            new = self.rng.randbytes(buf.size)
            self.dev.memory[buf.device.handle][1][:] = new  # the "device" computes
            self.expected[buf.id] = new
        self.running.append(job)
        self.clock.advance(0.001)
        if finish:
            self.finish()

    @precondition(lambda self: bool(self.running))
    @rule()
    def finish(self) -> None:
        """The oldest running job completes."""
        job = self.running.pop(0)
        self.res.end_run(job, written=[b for b in job if b.usage is BufferUsage.STATE])
        self._forget_dead()

    @precondition(lambda self: bool(self.bufs))
    @rule(data=st.data())
    def pin_toggle(self, data: st.DataObject) -> None:
        """Pin an unpinned held buffer (if it fits) or unpin a pinned one."""
        held = self._held()
        if not held:
            return
        ctx, buf = data.draw(st.sampled_from(held))
        if buf.pins:
            try:
                self.res.unpin(buf, ctx=ctx)
            except FailedPrecondition:  # pinned by another context
                return
        else:
            try:
                self.res.pin(buf, ctx=ctx)
            except OutOfDeviceMemory:  # no room beside pinned and running buffers now
                return
            assert buf.device is not None

    @rule(ctx=st.sampled_from(CTXS))
    def close(self, ctx: ContextId) -> None:
        """A context closes: every reference it held goes."""
        self.res.release_context(ctx)
        self.refs[ctx].clear()
        self._forget_dead()
        assert self.res.context_usage(ctx) == 0

    @invariant()
    def accounting_matches_allocations(self) -> None:
        """Per-tier usage equals the sum of live allocations, on our books and the device's."""
        stats = self.res.statistics()
        live = self.res.buffers()
        for tier in (MemoryTier.SRAM, MemoryTier.DRAM):
            ours = sum(
                b.device.size for b in live if b.device is not None and b.device.tier is tier
            )
            assert stats.tier(tier).used_bytes == ours == self.dev.used(tier)
            assert ours <= stats.tier(tier).budget_bytes
        host = sum(b.size for b in live if b.location is Location.HOST)
        assert stats.tier(MemoryTier.HOST).used_bytes == host
        for ctx in CTXS:
            assert self.res.context_usage(ctx) == sum(self.bufs[i].size for i in self.refs[ctx])
        for job in self.running:
            assert all(b.device is not None for b in job)

    def teardown(self) -> None:
        """Finish jobs, close every context: only the warm pool remains; draining empties it."""
        while self.running:
            self.finish()
        for buf in self.res.buffers():
            if buf.id in self.expected and buf.valid:
                assert self.res.read(buf, 0, buf.size) == self.expected[buf.id]
        for ctx in CTXS:
            self.close(ctx)
        self.accounting_matches_allocations()
        left = self.res.buffers()
        assert all(b.persistence is Persistence.PERSISTENT and not b.users for b in left)
        assert {b.id for b in self.res.warm_pool()} == {b.id for b in left}
        for buf in left:
            if buf.pins:
                self.res.unpin(buf)
        self.res.drain_warm_pool()
        stats = self.res.statistics()
        assert [t.used_bytes for t in stats.tiers] == [0, 0, 0]
        assert stats.buffers == 0
        assert not self.dev.memory


ResidencyMachine.TestCase.settings = settings(
    max_examples=40,
    stateful_step_count=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestResidencyMachine = ResidencyMachine.TestCase
