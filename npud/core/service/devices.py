"""Devices as core serves them: added, lost, and replaced by a freshly opened one."""

from __future__ import annotations

from pathlib import Path

from npud.core.context import ContextState
from npud.core.estimates import OwnerEstimates
from npud.core.events import (
    DEVICE_ADDED,
    Change,
    ContextEvent,
    DeviceEvent,
)
from npud.core.policy import SchedulerPolicy
from npud.core.residency import ResidencyManager
from npud.core.sched import Scheduler
from npud.core.service.base import DeviceEntry
from npud.core.service.contexts import CoreContexts
from npud.devices.base import Device
from npud.errors import (
    AlreadyExists,
    FailedPrecondition,
    NotFound,
)
from npud.vocab import (
    MemoryTier,
)


class CoreDevices(CoreContexts):
    """The devices part of core's facade."""

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
