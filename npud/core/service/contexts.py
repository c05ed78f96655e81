"""Contexts and their queues: create, close (with a grace period for running jobs), list."""

from __future__ import annotations

from collections.abc import Callable

from npud.core.context import Context, ContextQuotas, ContextState
from npud.core.events import (
    Change,
    ContextEvent,
    QueueEvent,
)
from npud.core.ids import (
    ContextId,
    QueueId,
    new_context_id,
    new_queue_id,
)
from npud.core.limits import bounded, check_text
from npud.core.owner import Owner
from npud.core.queue import Queue
from npud.core.service.base import CoreBase
from npud.errors import (
    InvalidArgument,
    NotFound,
    QuotaExceeded,
)
from npud.vocab import (
    SchedulingClass,
)


class CoreContexts(CoreBase):
    """The contexts and queues part of core's facade."""

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
