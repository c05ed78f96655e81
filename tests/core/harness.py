"""A small test bed for core: a VirtualClock, a SimDevice on it, a Core, BURN command buffers."""

from __future__ import annotations

from dataclasses import dataclass, field

from npud.clock import VirtualClock
from npud.core.context import Context, ContextQuotas
from npud.core.ids import BufferId, ContextId
from npud.core.job import Job
from npud.core.owner import Owner
from npud.core.policy import SchedulerPolicy
from npud.core.queue import Queue
from npud.core.sched import Scheduler
from npud.core.service import Core, JobSpec
from npud.devices.sim import SimDevice
from npud.isa.program import Program
from npud.vocab import BufferUsage, SchedulingClass

ALICE = Owner(uid=1000, gid=1000, pid=4242, name="alice")
BOB = Owner(uid=1001, gid=1001, pid=4343, name="bob")
ROOT = Owner(uid=0, gid=0, pid=1, name="root")


@dataclass
class Bed:
    """Everything a scheduler test needs, on virtual time."""

    clock: VirtualClock
    device: SimDevice
    core: Core
    _burns: dict[tuple[ContextId, float], BufferId] = field(default_factory=dict)

    @property
    def scheduler(self) -> Scheduler:
        return self.core.device().scheduler

    @property
    def engines(self) -> int:
        return len(self.device.capabilities.engines)

    @property
    def launch_s(self) -> float:
        return self.device.capabilities.launch_overhead_s

    def context(
        self,
        owner: Owner = ALICE,
        *,
        weight: float = 1.0,
        quotas: ContextQuotas | None = None,
    ) -> Context:
        return self.core.create_context(owner, weight=weight, quotas=quotas)

    def queue(
        self,
        ctx: Context,
        sched_class: SchedulingClass = SchedulingClass.THROUGHPUT,
        *,
        owner: Owner = ALICE,
        **kwargs: object,
    ) -> Queue:
        return self.core.create_queue(owner, ctx.id, sched_class=sched_class, **kwargs)  # type: ignore[arg-type]

    def burn_buffer(self, ctx: Context, seconds: float, owner: Owner = ALICE) -> BufferId:
        key = (ctx.id, seconds)
        if key not in self._burns:
            blob = Program().burn(seconds).encode()
            buf = self.core.create_buffer(owner, ctx.id, len(blob), usage=BufferUsage.COMMAND)
            self.core.write_buffer(owner, ctx.id, buf.id, 0, blob)
            self._burns[key] = buf.id
        return self._burns[key]

    def spec(
        self, ctx: Context, queue: Queue, seconds: float, *, owner: Owner = ALICE, **kw: object
    ) -> JobSpec:
        kw.setdefault("kind", f"burn{seconds}")
        return JobSpec(queue.id, self.burn_buffer(ctx, seconds, owner), **kw)  # type: ignore[arg-type]

    def burn(
        self,
        ctx: Context,
        queue: Queue,
        seconds: float,
        *,
        owner: Owner = ALICE,
        n: int = 1,
        **kw: object,
    ) -> list[Job]:
        specs = [self.spec(ctx, queue, seconds, owner=owner, **kw) for _ in range(n)]
        return self.core.submit(owner, ctx.id, specs)

    def run(self, limit: float = 1e6) -> None:
        self.clock.run_until_idle(limit=limit)


def make_bed(
    policy: SchedulerPolicy | None = None, *, profile: str = "rk3588", **core_kw: object
) -> Bed:
    clock = VirtualClock()
    device = SimDevice(profile, clock=clock, mode="virtual")
    device.open()
    core = Core(clock, **core_kw)  # type: ignore[arg-type]
    core.add_device(device, policy=policy)
    return Bed(clock, device, core)
