"""Core's facade for the API layer: devices, contexts, queues, buffers, jobs, statistics, events.

:class:`Core` is the one object the daemon builds and the gRPC servicers call. It holds the
device registry (name -> device, scheduler, residency manager), the contexts by id, and the
event bus. Every call takes the caller's :class:`~npud.core.owner.Owner` and checks ownership:
an id belonging to another user is reported as :class:`~npud.errors.NotFound` (its existence
does not leak) unless the caller is an admin. Core is single-threaded: call it only from the
core thread (the daemon's event loop); it never blocks.

Typical use from the API layer::

    ctx = core.create_context(owner, device="sim0")
    q = core.create_queue(owner, ctx.id, sched_class=SchedulingClass.LATENCY)
    cmd = core.create_buffer(owner, ctx.id, len(stream), usage=BufferUsage.COMMAND)
    core.write_buffer(owner, ctx.id, cmd.id, 0, stream)
    [job] = core.submit(owner, ctx.id, [JobSpec(q.id, cmd.id, kind="decode")])
    job.add_done_callback(lambda j: ...)  # or core.wait(owner, ctx.id, job.id, callback)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from npud.clock import Clock
from npud.core.buffers import Buffer
from npud.core.context import Context, ContextQuotas, ContextState, ContextStatistics
from npud.core.estimates import OwnerEstimates
from npud.core.events import (
    DEVICE_ADDED,
    Change,
    ContextEvent,
    DeviceEvent,
    Event,
    EventBus,
    EventBusStatistics,
    QueueEvent,
    Subscriber,
    Subscription,
)
from npud.core.ids import (
    BufferId,
    ContextId,
    JobId,
    QueueId,
    new_context_id,
    new_job_id,
    new_queue_id,
)
from npud.core.job import DoneCallback, Job
from npud.core.limits import Limits, bounded, check_text
from npud.core.owner import Account, Owner
from npud.core.policy import SchedulerPolicy
from npud.core.queue import Queue
from npud.core.residency import ResidencyManager, ResidencyStatistics
from npud.core.sched import Scheduler, SchedulerStatistics
from npud.devices.base import BindingShape, BufferUse, Capabilities, Device, DeviceStatistics
from npud.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    QuotaExceeded,
)
from npud.vocab import (
    BufferUsage,
    DeviceHealth,
    MemoryTier,
    Persistence,
    SchedulingClass,
    TierPreference,
)


@dataclass(frozen=True, slots=True)
class JobSpec:
    """What a client asks to run (a value object; ids, not objects).

    Attributes:
        queue_id: the queue (of the submitting context) the job goes to.
        command: the buffer holding the command stream.
        command_offset: where the stream starts in ``command``.
        command_size: its length (``None``: to the end of the buffer).
        bindings: buffers in SLOT order with how the job uses each.
        depends_on: jobs that must complete first: a :data:`JobId` of the same context, or an
            ``int`` index of another spec in the same batch.
        kind: the duration-estimate tag ("decode", "prefill", ...).
        label: free text for people.
        deadline: absolute, on the core clock (:meth:`Core.now`).
        timeout_s: the watchdog timeout (``None``: the class default).
        engine: a specific engine (``None``: the least loaded).
        estimate_s: the client's estimate, used until the kind has measurements.
    """

    queue_id: QueueId
    command: BufferId
    command_offset: int = 0
    command_size: int | None = None
    bindings: tuple[tuple[BufferId, BufferUse], ...] = ()
    depends_on: tuple[JobId | int, ...] = ()
    kind: str = ""
    label: str = ""
    deadline: float | None = None
    timeout_s: float | None = None
    engine: int | None = None
    estimate_s: float | None = None


@dataclass(frozen=True, slots=True)
class CoreLimits:
    """Per-user limits and daemon-wide defaults."""

    max_contexts_per_user: int = 64
    max_live_jobs_per_user: int = 1 << 20
    max_memory_bytes_per_user: int | None = None
    admin_gid: int | None = None
    close_grace_s: float = 5.0
    bounds: Limits = field(default_factory=Limits)


@dataclass(slots=True, eq=False)
class DeviceEntry:
    """One device as core holds it: the device, its scheduler and its residency manager."""

    name: str
    device: Device
    scheduler: Scheduler
    residency: ResidencyManager
    contexts: set[ContextId] = field(default_factory=set)
    node: str = ""  # the device node it was opened on ("" for the simulated NPU)


@dataclass(frozen=True, slots=True)
class DeviceReport:
    """A frozen snapshot of one device and everything core runs on it."""

    name: str
    capabilities: Capabilities
    device: DeviceStatistics
    scheduler: SchedulerStatistics
    residency: ResidencyStatistics
    contexts: int
    queues: int


@dataclass(frozen=True, slots=True)
class CoreStatistics:
    """A frozen snapshot of core: every device, context counts, the event bus."""

    time: float
    devices: tuple[DeviceReport, ...]
    contexts: int
    closing_contexts: int
    live_jobs: int
    events: EventBusStatistics

    def device(self, name: str) -> DeviceReport:
        """The report of one device.

        Raises:
            NotFound: no such device.
        """
        for report in self.devices:
            if report.name == name:
                return report
        raise NotFound(f"no device {name!r}")


class Core:
    """The facade the API layer calls. See the module docstring."""

    def __init__(
        self,
        clock: Clock,
        *,
        limits: CoreLimits | None = None,
        events: EventBus | None = None,
    ) -> None:
        self._clock = clock
        self.limits = limits or CoreLimits()
        self.events = events or EventBus()
        self._devices: dict[str, DeviceEntry] = {}
        self._contexts: dict[ContextId, Context] = {}
        self._user_contexts: dict[Account, int] = {}  # per user, or per tenant
        self._user_jobs: dict[Account, int] = {}

    # ------------------------------------------------------------------ time, identity

    def now(self) -> float:
        """The core clock's time (deadlines are absolute on it)."""
        return self._clock.now()

    def is_admin(self, owner: Owner) -> bool:
        """Whether ``owner`` may see and act on every context (root or the admin group)."""
        return owner.is_admin(self.limits.admin_gid)

    def subscribe(
        self, callback: Subscriber, *, kinds: tuple[type[Event], ...] | None = None
    ) -> Subscription:
        """Receive core events (see :mod:`npud.core.events`; only ``kinds`` when given) until
        cancelled. Name the kinds you need: job events are only built while someone takes
        them."""
        return self.events.subscribe(callback, kinds=kinds)

    # ------------------------------------------------------------------ devices

    def add_device(
        self,
        device: Device,
        *,
        policy: SchedulerPolicy | None = None,
        residency: ResidencyManager | None = None,
        budgets: dict[MemoryTier, int] | None = None,
        state_dir: Path | None = None,
        sram_policy: bool = True,
        node: str = "",
    ) -> DeviceEntry:
        """Serve an opened device: build its residency manager (unless given) and scheduler.

        Core does not own the device's lifetime: the daemon opened it and closes it.

        Raises:
            AlreadyExists: a device of that name is registered.
            Unavailable: ``state_dir`` is unusable (from the residency manager).
        """
        if device.name in self._devices:
            raise AlreadyExists(f"a device named {device.name!r} is registered already")
        if residency is None:
            residency = ResidencyManager(
                device, self._clock, budgets=budgets, state_dir=state_dir, sram_policy=sram_policy
            )
        policy = policy or SchedulerPolicy()
        estimates = OwnerEstimates(
            policy.ema_alpha,
            model_cap=policy.model_cap,
            max_kinds=self.limits.bounds.max_kinds_per_owner,
        )
        scheduler = Scheduler(
            device, self._clock, residency, policy=policy, events=self.events, estimator=estimates
        )
        entry = DeviceEntry(device.name, device, scheduler, residency, node=node)
        scheduler.add_hooks(on_end=self._job_ended)
        self._devices[device.name] = entry
        self.events.publish(DeviceEvent(self.now(), device.name, device.health(), DEVICE_ADDED))
        return entry

    def device(self, name: str | None = None) -> DeviceEntry:
        """A device by name, or the first registered one when ``name`` is ``None``.

        Raises:
            NotFound: no such device (or none at all).
        """
        if name is None or name == "":
            if not self._devices:
                raise NotFound("no device is registered")
            return next(iter(self._devices.values()))
        entry = self._devices.get(name)
        if entry is None:
            known = ", ".join(self._devices) or "none"
            raise NotFound(f"no device {name!r} (devices: {known})")
        return entry

    def devices(self) -> list[DeviceEntry]:
        """Every registered device, in registration order."""
        return list(self._devices.values())

    def replace_device(
        self,
        device: Device,
        *,
        policy: SchedulerPolicy | None = None,
        state_dir: Path | None = None,
        budgets: dict[MemoryTier, int] | None = None,
        sram_policy: bool = True,
        node: str = "",
    ) -> DeviceEntry:
        """Serve a freshly opened ``device`` in place of the lost device of the same name.

        The lost device's contexts are closed at once (their jobs already ended FAILED with
        DeviceLost when it was lost; their buffers' contents are gone with it), then a new
        scheduler and residency manager take the name; persistent registrations come back
        from ``state_dir``. ``policy`` defaults to the old scheduler's. The caller closes the
        old device.

        Raises:
            NotFound: no device of that name is registered.
            FailedPrecondition: the registered device is not lost.
        """
        old = self._devices.get(device.name)
        if old is None:
            raise NotFound(f"no device {device.name!r} to replace")
        if old.scheduler.lost is None:
            raise FailedPrecondition(f"device {device.name} is not lost; nothing to replace")
        self._close_lost_contexts(old)
        del self._devices[device.name]
        return self.add_device(
            device,
            policy=policy or old.scheduler.policy,
            state_dir=state_dir,
            budgets=budgets,
            sram_policy=sram_policy,
            node=node or old.node,
        )

    def lose_device(self, name: str, reason: str) -> None:
        """The device ``name`` is gone (its node was removed): treat it as lost now.

        Its jobs end FAILED with DeviceLost (as when the device reports the loss itself; a
        second call, or a device that already reported it, fails nothing twice), and its
        contexts are closed at once, as :meth:`replace_device` would close them. The entry
        stays, with health LOST, until :meth:`replace_device` serves a new device under the
        name. The caller closes the device.

        Raises:
            NotFound: no device of that name is registered.
        """
        entry = self.device(name)
        # The scheduler's own loss path (what the device's loss listener calls): fail the
        # device's jobs, clear its queues, publish the LOST event.
        entry.scheduler.device_lost(reason)
        self._close_lost_contexts(entry)

    def _close_lost_contexts(self, old: DeviceEntry) -> None:
        """Close every context of the lost device ``old``, including those it will never
        report back for."""
        reason = f"device {old.name} was lost: {old.scheduler.lost}"
        for ctx_id in list(old.contexts):
            ctx = self._contexts.get(ctx_id)
            if ctx is not None and ctx.open:
                self.destroy_context(ctx.owner, ctx_id, grace_s=0.0, reason=reason)
        for ctx_id in list(old.contexts):  # closing ones the lost device will never report
            ctx = self._contexts.pop(ctx_id, None)
            old.contexts.discard(ctx_id)
            if ctx is None:
                continue
            ctx.state = ContextState.CLOSED
            left = self._user_contexts.get(ctx.owner.account, 1) - 1
            if left > 0:
                self._user_contexts[ctx.owner.account] = left
            else:
                self._user_contexts.pop(ctx.owner.account, None)
            self.events.publish(
                ContextEvent(
                    self.now(),
                    old.name,
                    ctx_id,
                    ctx.owner.uid,
                    Change.DESTROYED,
                    reason,
                    tenant=ctx.owner.tenant,
                )
            )

    # ------------------------------------------------------------------ contexts

    def _context(self, owner: Owner, ctx_id: ContextId) -> Context:
        ctx = self._contexts.get(ctx_id)
        if ctx is None or not (owner.owns(ctx.owner) or self.is_admin(owner)):
            raise NotFound(f"no context {ctx_id}")
        return ctx

    def _open_context(self, owner: Owner, ctx_id: ContextId) -> Context:
        ctx = self._context(owner, ctx_id)
        if not ctx.open:
            raise FailedPrecondition(f"context {ctx_id} is {ctx.state}")
        return ctx

    def create_context(
        self,
        owner: Owner,
        *,
        device: str | None = None,
        quotas: ContextQuotas | None = None,
        default_class: SchedulingClass = SchedulingClass.THROUGHPUT,
        weight: float = 1.0,
        label: str = "",
    ) -> Context:
        """Create an execution context for ``owner`` on a device (default: the first).

        The context belongs to core; ``owner`` (any process of that user) may use it until
        :meth:`destroy_context`.

        Raises:
            NotFound: no such device.
            InvalidArgument: a weight outside the policy's range (`Limits.max_weight`), a
                negative quota.
            QuotaExceeded: the user holds ``max_contexts_per_user`` contexts already.
            DeviceLost: the device is gone.
        """
        entry = self.device(device)
        bounds = self.limits.bounds
        check_text("label", label, bounds.max_label_chars)
        bounded(
            "weight",
            weight,
            low=bounds.min_weight,
            high=bounds.max_weight,
            why="the fair-share weights the daemon's policy allows",
        )
        quotas = quotas or ContextQuotas()
        if quotas.max_queued_jobs < 1 or quotas.max_queues < 1:
            raise InvalidArgument("max_queued_jobs and max_queues must be at least 1")
        have = self._user_contexts.get(owner.account, 0)
        limit = (
            owner.quota.max_contexts
            if owner.quota is not None
            else self.limits.max_contexts_per_user
        )
        if have >= limit:
            per = "tenant" if owner.tenant is not None else "user"
            raise QuotaExceeded(f"{owner} holds {have} contexts; the limit per {per} is {limit}")
        ctx = Context(
            id=new_context_id(),
            owner=owner,
            device=entry.name,
            quotas=quotas,
            default_class=default_class,
            weight=weight,
            label=label,
            created_at=self.now(),
        )
        entry.scheduler.attach(ctx)
        if quotas.memory_bytes is not None:
            entry.residency.set_quota(ctx.id, quotas.memory_bytes)
        self._contexts[ctx.id] = ctx
        entry.contexts.add(ctx.id)
        self._user_contexts[owner.account] = have + 1
        self.events.publish(
            ContextEvent(
                self.now(), entry.name, ctx.id, owner.uid, Change.CREATED, label, owner.tenant
            )
        )
        return ctx

    def context(self, owner: Owner, ctx_id: ContextId) -> Context:
        """A context ``owner`` may see.

        Raises:
            NotFound: no such context, or it belongs to another user (and owner is no admin).
        """
        return self._context(owner, ctx_id)

    def contexts(self, owner: Owner, *, all_users: bool = False) -> list[Context]:
        """The contexts of ``owner`` (every context when ``all_users`` and owner is admin)."""
        everyone = all_users and self.is_admin(owner)
        return [c for c in self._contexts.values() if everyone or owner.owns(c.owner)]

    # ---- Why an absent context id means "every context the caller may see" ---------------
    #
    # Queues, jobs and buffers live in contexts, so every listing and lookup took a context
    # id, and an operator's "which jobs are running?" or "show job-1234" became one call per
    # context (npuctl fanned out, and its lookups searched context by context). Passing no
    # context id (``None``) instead scopes a call to the caller's view: listings cover the
    # caller's OPEN contexts, in creation order, as ListContexts shows them (every owner's
    # with ``all_users`` for an admin, exactly as ``contexts`` does); a lookup by job id
    # searches every context the caller could name by id - its own, and for an admin every
    # one, since an admin may act on any context by id - closing ones included. Job ids are
    # unique, so the first match is the job. A non-admin can never reach another user's
    # objects this way, as they cannot by id.
    # ------------------------------------------------------------------------------------

    def _scope(
        self, owner: Owner, ctx_id: ContextId | None, *, all_users: bool = False
    ) -> list[Context]:
        """The one context named, or every open context ``owner`` may list (see above).

        Raises:
            NotFound: ``ctx_id`` names no context ``owner`` may see.
        """
        if ctx_id:
            return [self._context(owner, ctx_id)]
        return [c for c in self.contexts(owner, all_users=all_users) if c.open]

    def _reachable(self, owner: Owner) -> list[Context]:
        """Every context ``owner`` could name by id (an admin: all of them), closing included."""
        if self.is_admin(owner):
            return list(self._contexts.values())
        return [c for c in self._contexts.values() if owner.owns(c.owner)]

    def destroy_context(
        self,
        owner: Owner,
        ctx_id: ContextId,
        *,
        grace_s: float | None = None,
        reason: str = "destroyed by its owner",
        on_closed: Callable[[Context], None] | None = None,
    ) -> None:
        """Close a context: queued jobs end CANCELLED now, running ones get ``grace_s``
        (default ``limits.close_grace_s``) to finish before they are aborted, and every
        buffer reference is released once the device has reported back. The context
        disappears from every listing and statistic then, and ``on_closed`` runs.
        ``reason`` is the DESTROYED event's reason and is named in the error of every job
        the close cancels.

        Closing a context that is already closing only adds nothing.

        Raises:
            NotFound: no such context for ``owner``.
        """
        ctx = self._context(owner, ctx_id)
        if ctx.state is not ContextState.OPEN:
            return
        entry = self._devices[ctx.device]
        grace = self.limits.close_grace_s if grace_s is None else grace_s

        def _closed(closed: Context) -> None:
            self._contexts.pop(closed.id, None)
            entry.contexts.discard(closed.id)
            left = self._user_contexts.get(closed.owner.account, 1) - 1
            if left > 0:
                self._user_contexts[closed.owner.account] = left
            else:
                self._user_contexts.pop(closed.owner.account, None)
            self.events.publish(
                ContextEvent(
                    self.now(),
                    entry.name,
                    closed.id,
                    closed.owner.uid,
                    Change.DESTROYED,
                    reason,
                    closed.owner.tenant,
                )
            )
            if on_closed is not None:
                on_closed(closed)

        entry.scheduler.close_context(ctx, grace, _closed, reason)

    def close_all(self, *, grace_s: float | None = None, reason: str = "npud is stopping") -> None:
        """Close every context (daemon shutdown): see :meth:`destroy_context`.

        ``reason`` goes to every context's DESTROYED event and into the error of every job
        this cancels ("its context was closed: npud is stopping"), queued jobs at once and
        running ones once ``grace_s`` has run out.
        """
        for ctx in list(self._contexts.values()):
            if ctx.open:
                self.destroy_context(ctx.owner, ctx.id, grace_s=grace_s, reason=reason)

    def end_grace(self, *, reason: str = "npud is stopping") -> None:
        """Abort now every running job of every closing context instead of waiting out the
        grace :meth:`close_all` gave them (the daemon's forced stop). Their errors say the
        context was closed for ``reason`` and that the grace period ran out."""
        for ctx in list(self._contexts.values()):
            if ctx.state is ContextState.CLOSING:
                entry = self._devices[ctx.device]
                entry.scheduler.end_grace(ctx, f"its context was closed: {reason}")

    # ------------------------------------------------------------------ queues

    def create_queue(
        self,
        owner: Owner,
        ctx_id: ContextId,
        *,
        sched_class: SchedulingClass | None = None,
        priority: int = 0,
        depth_limit: int = 1024,
        in_order: bool = True,
        label: str = "",
    ) -> Queue:
        """Create a job queue in a context (class default: the context's default class).

        Raises:
            NotFound: no such context for ``owner``.
            FailedPrecondition: the context is closing.
            InvalidArgument: ``depth_limit`` below 1, a label over ``Limits.max_label_chars``.
            QuotaExceeded: the context has ``max_queues`` queues already.
        """
        ctx = self._open_context(owner, ctx_id)
        check_text("label", label, self.limits.bounds.max_label_chars)
        if depth_limit < 1:
            raise InvalidArgument(f"a queue's depth limit must be at least 1, got {depth_limit}")
        if len(ctx.queues) >= ctx.quotas.max_queues:
            raise QuotaExceeded(
                f"context {ctx.id} has {len(ctx.queues)} queues; its quota is "
                f"{ctx.quotas.max_queues}"
            )
        queue = Queue(
            id=new_queue_id(),
            context_id=ctx.id,
            sched_class=sched_class or ctx.default_class,
            priority=priority,
            depth_limit=depth_limit,
            in_order=in_order,
            label=label,
        )
        ctx.queues[queue.id] = queue
        self.events.publish(QueueEvent(self.now(), ctx.device, ctx.id, queue.id, Change.CREATED))
        return queue

    def queue(self, owner: Owner, ctx_id: ContextId, queue_id: QueueId) -> Queue:
        """A queue of a context.

        Raises:
            NotFound: no such context for ``owner``, or no such queue in it.
        """
        ctx = self._context(owner, ctx_id)
        queue = ctx.queues.get(queue_id)
        if queue is None:
            raise NotFound(f"no queue {queue_id} in context {ctx_id}")
        return queue

    def queues(
        self, owner: Owner, ctx_id: ContextId | None, *, all_users: bool = False
    ) -> list[Queue]:
        """The queues of a context in creation order; with ``ctx_id`` ``None``, those of every
        open context ``owner`` may list (every owner's with ``all_users`` for an admin).

        Raises:
            NotFound: no such context for ``owner``.
        """
        return [
            q
            for ctx in self._scope(owner, ctx_id, all_users=all_users)
            for q in ctx.queues.values()
        ]

    def destroy_queue(self, owner: Owner, ctx_id: ContextId, queue_id: QueueId) -> None:
        """Destroy a queue: its live jobs are cancelled (running ones aborted where possible).

        Raises:
            NotFound: no such context for ``owner``, or no such queue in it.
        """
        ctx = self._context(owner, ctx_id)
        queue = self.queue(owner, ctx_id, queue_id)
        self._devices[ctx.device].scheduler.destroy_queue(ctx, queue)
        self.events.publish(QueueEvent(self.now(), ctx.device, ctx.id, queue_id, Change.DESTROYED))

    # ------------------------------------------------------------------ buffers

    def _residency(self, ctx: Context) -> ResidencyManager:
        return self._devices[ctx.device].residency

    def create_buffer(
        self,
        owner: Owner,
        ctx_id: ContextId,
        size: int,
        *,
        usage: BufferUsage,
        persistence: Persistence = Persistence.EPHEMERAL,
        tier: TierPreference = TierPreference.ANY,
        key: str | None = None,
        recycle: bool = False,
    ) -> Buffer:
        """Create a buffer referenced by the context (see ``ResidencyManager.create``).

        ``recycle`` is for short-lived COMMAND buffers (the inline streams of the decode fast
        path): the device allocation is reused by the context's next one.

        Raises:
            NotFound: no such context for ``owner``.
            FailedPrecondition: the context is closing.
            InvalidArgument, AlreadyExists, OutOfDeviceMemory: from the residency manager.
            PermissionDenied: the key names another user's namespace.
            QuotaExceeded: the context's memory quota, or its user's
                (``limits.max_memory_bytes_per_user``), would be exceeded (nothing allocated).
        """
        ctx = self._open_context(owner, ctx_id)
        if size > 0:
            self._charge_user(ctx.owner, size)
        buf = self._residency(ctx).create(
            ctx.id,
            size,
            usage=usage,
            persistence=persistence,
            tier=tier,
            key=key,
            recycle=recycle,
            uid=ctx.owner.uid,
        )
        ctx.buffers[buf.id] = buf
        return buf

    def user_memory(self, uid: int, tenant: str | None = None) -> int:
        """Bytes charged to every context of user ``uid`` (of its ``tenant`` when given; shared
        buffers once per context)."""
        total = 0
        for ctx in self._contexts.values():
            if ctx.owner.account == (uid, tenant):
                total += self._residency(ctx).context_usage(ctx.id)
        return total

    def _charge_user(self, owner: Owner, size: int) -> None:
        if owner.quota is not None:
            limit, per = owner.quota.memory_bytes, "tenant"
        else:
            limit, per = self.limits.max_memory_bytes_per_user, "user"
        if limit is None:
            return
        used = self.user_memory(owner.uid, owner.tenant)
        if used + size > limit:
            raise QuotaExceeded(
                f"{owner} holds {used} bytes of buffers over all its contexts and {size} more "
                f"were requested; the limit per {per} is {limit} bytes"
            )

    def open_persistent(self, owner: Owner, ctx_id: ContextId, key: str) -> Buffer:
        """Attach the context to a persistent buffer by key (uploads nothing). Keys follow
        the sharing rule of :mod:`npud.core.keys`, in the namespace of the context's user.

        Raises:
            InvalidArgument: a malformed key.
            NotFound: no such context for ``owner``, or no such key the context's user may
                open (another user's unsealed buffer is not found).
            FailedPrecondition: the context is closing.
            QuotaExceeded: the context's or its user's memory quota would be exceeded.
        """
        ctx = self._open_context(owner, ctx_id)
        residency = self._residency(ctx)
        buf = residency.open_persistent(ctx.id, key, uid=ctx.owner.uid)
        try:
            self._charge_user(ctx.owner, 0)
        except QuotaExceeded:
            if buf.id not in ctx.buffers:  # undo only the reference this call took
                residency.release(ctx.id, buf)
            raise
        ctx.buffers[buf.id] = buf
        return buf

    def buffer(self, owner: Owner, ctx_id: ContextId, buffer_id: BufferId) -> Buffer:
        """A buffer the context references.

        Raises:
            NotFound: no such context for ``owner``, or the context holds no such buffer.
        """
        ctx = self._context(owner, ctx_id)
        return self._residency(ctx).get(ctx.id, buffer_id)

    def buffers(self, owner: Owner, ctx_id: ContextId) -> list[Buffer]:
        """Every buffer the context references.

        Raises:
            NotFound: no such context for ``owner``.
        """
        ctx = self._context(owner, ctx_id)
        return self._residency(ctx).buffers(ctx.id)

    def held_buffers(
        self, owner: Owner, ctx_id: ContextId | None, *, all_users: bool = False
    ) -> list[tuple[ContextId, Buffer]]:
        """``(context, buffer)`` for every buffer a context references; with ``ctx_id``
        ``None``, for every open context ``owner`` may list (a buffer shared by two of them
        appears once per holder, as each sees it).

        Raises:
            NotFound: no such context for ``owner``.
        """
        return [
            (ctx.id, buf)
            for ctx in self._scope(owner, ctx_id, all_users=all_users)
            for buf in self._residency(ctx).buffers(ctx.id)
        ]

    def write_buffer(
        self,
        owner: Owner,
        ctx_id: ContextId,
        buffer_id: BufferId,
        offset: int,
        data: bytes | memoryview,
    ) -> None:
        """Write bytes into a buffer (see ``ResidencyManager.write`` for what it raises)."""
        ctx = self._open_context(owner, ctx_id)
        residency = self._residency(ctx)
        residency.write(residency.get(ctx.id, buffer_id), offset, data)

    def read_buffer(
        self, owner: Owner, ctx_id: ContextId, buffer_id: BufferId, offset: int, size: int
    ) -> bytes:
        """Read bytes from a buffer (see ``ResidencyManager.read`` for what it raises)."""
        ctx = self._context(owner, ctx_id)
        residency = self._residency(ctx)
        return residency.read(residency.get(ctx.id, buffer_id), offset, size)

    def seal_buffer(self, owner: Owner, ctx_id: ContextId, buffer_id: BufferId) -> Buffer:
        """Seal a persistent buffer's contents under its key (``ResidencyManager.seal``)."""
        ctx = self._open_context(owner, ctx_id)
        residency = self._residency(ctx)
        sealed = residency.seal(ctx.id, residency.get(ctx.id, buffer_id))
        if sealed.id != buffer_id:  # the same contents were sealed first: attached to those
            ctx.buffers.pop(buffer_id, None)
            ctx.buffers[sealed.id] = sealed
        return sealed

    def pin_buffer(self, owner: Owner, ctx_id: ContextId, buffer_id: BufferId) -> None:
        """Pin a buffer resident on behalf of the context (dropped when it releases it)."""
        ctx = self._open_context(owner, ctx_id)
        residency = self._residency(ctx)
        residency.pin(residency.get(ctx.id, buffer_id), ctx=ctx.id)

    def unpin_buffer(self, owner: Owner, ctx_id: ContextId, buffer_id: BufferId) -> None:
        """Drop one pin the context took; jobs held for room are retried."""
        ctx = self._context(owner, ctx_id)
        residency = self._residency(ctx)
        residency.unpin(residency.get(ctx.id, buffer_id), ctx=ctx.id)
        self._devices[ctx.device].scheduler.kick()

    def release_buffer(
        self, owner: Owner, ctx_id: ContextId, buffer_id: BufferId, *, undo: bool = False
    ) -> None:
        """Drop the context's reference to a buffer.

        ``undo``: the buffer was created by the caller's request that then failed; leave the
        device's memory as it was before (see ``ResidencyManager.release``).

        Raises:
            NotFound: no such context for ``owner``, or it holds no such buffer.
            FailedPrecondition: a live job of the context is bound to it (cancel it first).
        """
        ctx = self._context(owner, ctx_id)
        residency = self._residency(ctx)
        buf = residency.get(ctx.id, buffer_id)
        live = ctx.buffer_jobs.get(buffer_id, 0)
        if live:
            raise FailedPrecondition(
                f"buffer {buffer_id} is bound to {live} live job(s) of context {ctx.id}; "
                "release it after they end"
            )
        residency.release(ctx.id, buf, undo=undo)
        ctx.buffers.pop(buffer_id, None)
        self._devices[ctx.device].scheduler.kick()

    # ------------------------------------------------------------------ jobs

    def submit(self, owner: Owner, ctx_id: ContextId, specs: Sequence[JobSpec]) -> list[Job]:
        """Submit a batch of jobs to a context, all or nothing.

        On success the returned jobs are QUEUED (or further along) and belong to the context;
        on any error nothing was admitted.

        Raises:
            NotFound: no such context for ``owner``; an unknown queue or buffer id.
            InvalidArgument: an empty batch, a bad command range, a dependency that is not a
                job of this context (or a batch index out of range), a dependency cycle, an
                engine out of range, more bindings than the device takes per job
                (``Capabilities.max_bindings``); a number that is not finite or over its
                bound, a kind or label over its length (:class:`~npud.core.limits.Limits`).
            FailedPrecondition: the context is closing; a write binding to a sealed buffer.
            QueueFull, QuotaExceeded: a queue depth, context or user quota would be exceeded.
            TimeSliceExceeded, DeadlineInfeasible: from the scheduler's admission control.
            DeviceLost: the device is gone.
        """
        ctx = self._open_context(owner, ctx_id)
        if not specs:
            raise InvalidArgument("a submission needs at least one job")
        account = ctx.owner.account
        have = self._user_jobs.get(account, 0)
        quota = ctx.owner.quota
        limit = quota.max_live_jobs if quota is not None else self.limits.max_live_jobs_per_user
        if have + len(specs) > limit:
            per = "tenant" if quota is not None else "user"
            raise QuotaExceeded(
                f"{ctx.owner} has {have} live jobs and the batch adds {len(specs)}; the limit "
                f"per {per} is {limit}"
            )
        residency = self._residency(ctx)
        jobs = [self._build(ctx, residency, spec) for spec in specs]
        for job, spec in zip(jobs, specs, strict=True):
            job.depends_on = tuple(self._dependency(ctx, jobs, d) for d in spec.depends_on)
        self._devices[ctx.device].scheduler.submit(ctx, jobs)
        self._user_jobs[account] = self._user_jobs.get(account, 0) + len(jobs)
        return jobs

    def _build(self, ctx: Context, residency: ResidencyManager, spec: JobSpec) -> Job:
        queue = ctx.queues.get(spec.queue_id)
        if queue is None:
            raise NotFound(f"no queue {spec.queue_id} in context {ctx.id}")
        command = residency.get(ctx.id, spec.command)
        offset = spec.command_offset
        size = command.size - offset if spec.command_size is None else spec.command_size
        if offset < 0 or size <= 0 or offset + size > command.size:
            raise InvalidArgument(
                f"command range [{offset}, {offset + size}) is empty or outside buffer "
                f"{command.id} ({command.size} bytes)"
            )
        limit = self._devices[ctx.device].device.capabilities.max_bindings
        if len(spec.bindings) > limit:
            raise InvalidArgument(
                f"a job binds {len(spec.bindings)} buffers; device {ctx.device} takes at most "
                f"{limit} per job"
            )
        bindings = []
        for buffer_id, use in spec.bindings:
            buf = residency.get(ctx.id, buffer_id)
            residency.check_use(buf, use)
            bindings.append((buf, use))
        self._check_numbers(queue.sched_class, spec)
        modelled = self._model(ctx, residency, command, offset=offset, size=size, bindings=bindings)
        return Job(
            id=new_job_id(),
            context_id=ctx.id,
            queue=queue,
            command=command,
            command_offset=offset,
            command_size=size,
            bindings=tuple(bindings),
            kind=spec.kind,
            label=spec.label,
            deadline=spec.deadline,
            timeout_s=spec.timeout_s,
            engine_request=spec.engine,
            estimate_s=spec.estimate_s,
            context_label=ctx.label,
            modelled_s=modelled,
        )

    def _model(
        self,
        ctx: Context,
        residency: ResidencyManager,
        command: Buffer,
        *,
        offset: int,
        size: int,
        bindings: Sequence[tuple[Buffer, BufferUse]],
    ) -> float | None:
        """The device's model of a job's duration from its command stream as it is now, where
        the device models jobs (``Capabilities.models_jobs``); ``None`` elsewhere."""
        device = self._devices[ctx.device].device
        if not device.capabilities.models_jobs:
            return None
        stream = residency.read(command, offset, size)
        shapes = [BindingShape(b.size, use, b.resident_tier) for b, use in bindings]
        return device.modelled_s(stream, shapes)

    def _check_numbers(self, sched_class: SchedulingClass, spec: JobSpec) -> None:
        """Every float of ``spec`` finite and within :class:`Limits` (no NaN reaches a heap),
        its kind and label no longer than the limits.

        Raises:
            InvalidArgument: naming the field, its value and the range.
        """
        bounds = self.limits.bounds
        check_text("kind", spec.kind, bounds.max_kind_chars)
        check_text("label", spec.label, bounds.max_label_chars)
        if spec.timeout_s is not None:
            bounded(
                "timeout_s",
                spec.timeout_s,
                low=0.0,
                low_open=True,
                high=bounds.timeout_ceiling(sched_class),
                why=f"the ceiling of a {sched_class} job's timeout",
            )
        if spec.estimate_s is not None:
            bounded("estimate_s", spec.estimate_s, low=0.0, high=bounds.max_estimate_s)
        if spec.deadline is not None:
            now = self.now()
            bounded(
                "deadline",
                spec.deadline,
                low=-math.inf,
                high=now + bounds.max_deadline_s,
                why=f"at most {bounds.max_deadline_s:g} s ahead",
            )

    def _dependency(self, ctx: Context, batch: list[Job], ref: JobId | int) -> Job:
        if isinstance(ref, int):
            if not 0 <= ref < len(batch):
                raise InvalidArgument(
                    f"dependency index {ref} is outside the batch of {len(batch)} jobs"
                )
            return batch[ref]
        job = self._find_job(ctx, ref)
        if job is None:
            raise NotFound(
                f"dependency {ref} is not a job of context {ctx.id}: jobs may only depend on "
                "jobs of their own context"
            )
        return job

    def _find_job(self, ctx: Context, job_id: JobId) -> Job | None:
        job = ctx.jobs.get(job_id)
        if job is not None:
            return job
        for old in ctx.history:
            if old.id == job_id:
                return old
        return None

    def _job_ended(self, job: Job) -> None:
        ctx = self._contexts.get(job.context_id)
        if ctx is None:
            return
        account = ctx.owner.account
        left = self._user_jobs.get(account, 1) - 1
        if left > 0:
            self._user_jobs[account] = left
        else:
            self._user_jobs.pop(account, None)

    def job(self, owner: Owner, ctx_id: ContextId | None, job_id: JobId) -> Job:
        """A live job, or an ended one still in its context's history; with ``ctx_id``
        ``None``, found in whichever context ``owner`` may reach holds it.

        Raises:
            NotFound: no such context for ``owner``, or no such job in it (in any of them).
        """
        if not ctx_id:
            for ctx in self._reachable(owner):
                job = self._find_job(ctx, job_id)
                if job is not None:
                    return job
            raise NotFound(f"no job {job_id} in any context you can see")
        ctx = self._context(owner, ctx_id)
        job = self._find_job(ctx, job_id)
        if job is None:
            raise NotFound(f"no job {job_id} in context {ctx_id}")
        return job

    def jobs(
        self,
        owner: Owner,
        ctx_id: ContextId | None,
        *,
        include_ended: bool = True,
        all_users: bool = False,
    ) -> list[Job]:
        """A context's live jobs in submission order, then (optionally) its recent history;
        with ``ctx_id`` ``None``, the same for every open context ``owner`` may list, context
        after context (every owner's with ``all_users`` for an admin).

        Raises:
            NotFound: no such context for ``owner``.
        """
        out: list[Job] = []
        for ctx in self._scope(owner, ctx_id, all_users=all_users):
            out.extend(sorted(ctx.jobs.values(), key=lambda j: j.seq))
            if include_ended:
                out.extend(ctx.history)
        return out

    def cancel(self, owner: Owner, ctx_id: ContextId | None, job_id: JobId) -> bool:
        """Cancel a job (see ``Scheduler.cancel``); ``False`` if it had already ended. With
        ``ctx_id`` ``None`` the job is found as :meth:`job` finds it.

        Raises:
            NotFound: no such context for ``owner``, or no such job in it (in any of them).
        """
        job = self.job(owner, ctx_id, job_id)
        ctx = self._context(owner, job.context_id)
        return self._devices[ctx.device].scheduler.cancel(job)

    def wait(self, owner: Owner, ctx_id: ContextId, job_id: JobId, callback: DoneCallback) -> Job:
        """Run ``callback(job)`` when the job ends (at once if it has); returns the job.

        Raises:
            NotFound: no such context for ``owner``, or no such job in it.
        """
        job = self.job(owner, ctx_id, job_id)
        job.add_done_callback(callback)
        return job

    # ------------------------------------------------------------------ statistics

    def context_statistics(self, owner: Owner, ctx_id: ContextId) -> ContextStatistics:
        """A frozen snapshot of one context, with its memory charge from residency.

        Raises:
            NotFound: no such context for ``owner``.
        """
        return self._context(owner, ctx_id).statistics()

    def device_report(self, name: str | None = None) -> DeviceReport:
        """A frozen snapshot of one device and what core runs on it.

        Raises:
            NotFound: no such device.
        """
        entry = self.device(name)
        return DeviceReport(
            name=entry.name,
            capabilities=entry.device.capabilities,
            device=entry.device.statistics(),
            scheduler=entry.scheduler.statistics(),
            residency=entry.residency.statistics(),
            contexts=len(entry.contexts),
            queues=sum(len(self._contexts[c].queues) for c in entry.contexts),
        )

    def statistics(self) -> CoreStatistics:
        """A frozen snapshot of everything core runs."""
        return CoreStatistics(
            time=self.now(),
            devices=tuple(self.device_report(name) for name in self._devices),
            contexts=len(self._contexts),
            closing_contexts=sum(
                1 for c in self._contexts.values() if c.state is ContextState.CLOSING
            ),
            live_jobs=sum(len(c.jobs) for c in self._contexts.values()),
            events=self.events.statistics(),
        )

    def device_health(self, name: str) -> DeviceHealth:
        """The health of a device as its scheduler sees it (LOST once it is gone).

        Raises:
            NotFound: no such device.
        """
        entry = self.device(name)
        if entry.scheduler.lost is not None:
            return DeviceHealth.LOST
        return entry.device.health()
