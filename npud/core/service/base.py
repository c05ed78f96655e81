"""Core's state and the lookups every part of the facade uses.

:class:`CoreBase` holds the device registry (name -> device, scheduler, residency manager), the
contexts by id, the per-user counts and the event bus, and finds what a caller may reach: a
context id belonging to another user is reported as :class:`~npud.errors.NotFound` (its
existence does not leak) unless the caller is an admin.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from npud.clock import Clock
from npud.core.context import Context
from npud.core.events import (
    Event,
    EventBus,
    Subscriber,
    Subscription,
)
from npud.core.ids import (
    ContextId,
    JobId,
)
from npud.core.job import Job
from npud.core.limits import Limits
from npud.core.owner import Account, Owner
from npud.core.residency import ResidencyManager
from npud.core.sched import Scheduler
from npud.devices.base import Device
from npud.errors import (
    FailedPrecondition,
    NotFound,
)


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


class CoreBase:
    """Core's state and lookups (see the module docstring); :class:`~npud.core.service.Core`
    is the facade built on it."""

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

    def _residency(self, ctx: Context) -> ResidencyManager:
        return self._devices[ctx.device].residency

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
