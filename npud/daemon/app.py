"""The daemon: wiring config, devices, core, the gRPC server, identity and systemd together.

One asyncio loop runs everything; one TaskGroup owns the long-lived tasks (the systemd
watchdog, the status line, the hotplug watcher); the gRPC server, the identity server, the
descriptor server (:mod:`npud.api.descriptors`), the submit socket
(:mod:`npud.api.submit_socket`) and core's schedulers are callback-driven on the same loop.
Order of start-up: the hotplug source starts collecting node events (its fd on the loop),
devices are opened, core is built, the gRPC, identity, descriptor and submit sockets are
bound, and only then READY=1 is sent. Hotplug
(:mod:`npud.daemon.hotplug`) then serves nodes that appear, loses devices whose node goes away
and re-opens lost devices on every event.

Shutdown
--------
SIGTERM (or SIGINT) drains: the daemon stops accepting new work (new submissions and contexts
get UNAVAILABLE, health says NOT_SERVING, the identity and descriptor sockets close, the
submit socket accepts no new connections), queued
jobs end CANCELLED with the reason "npud is shutting down", running jobs get
``shutdown_grace_s`` to finish (then they are aborted), every context is closed and its
buffers released, the gRPC server stops, the devices are closed, the socket files are removed,
and the process exits 0.
A second SIGTERM or SIGINT during the drain forces it: running jobs are aborted at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import grp
import logging
import os
import signal
import socket
from pathlib import Path

from npud.api.admin import AdminServicer
from npud.api.descriptors import DescriptorServer
from npud.api.identity import IdentityServer, TokenRegistry
from npud.api.server import Server, build_server
from npud.api.sessions import SessionTable
from npud.api.state import ApiState, Defaults
from npud.api.submit_socket import SubmitSocketServer
from npud.api.tenants import TenantTable
from npud.clock import MonotonicClock
from npud.config import Settings, split_listen
from npud.core.context import ContextState
from npud.core.events import Change, ContextEvent, DeviceEvent, Event
from npud.core.ids import ContextId
from npud.core.job import Job
from npud.core.limits import Limits, clip
from npud.core.owner import SYSTEM
from npud.core.policy import PolicyKind, SchedulerPolicy
from npud.core.registry import make_private
from npud.core.service import Core, CoreLimits
from npud.daemon.budgets import residency_budgets
from npud.daemon.devices import Nodes, SystemNodes, choose_devices, open_devices
from npud.daemon.hotplug import EventSource, HotplugWatcher, MonitorEvents
from npud.daemon.metrics import MetricsServer, Sources, registry_for
from npud.daemon.recovery import DeviceRecovery
from npud.daemon.systemd import Notifier
from npud.devices.base import Device
from npud.devices.discovery import NodeInfo
from npud.errors import ConfigError, NpudError, Unavailable
from npud.log import get_logger
from npud.vocab import DeviceHealth, SchedulingClass

SHUTDOWN_REASON = "npud is shutting down"


def _group_id(name: str | None) -> int | None:
    """A group name (or number) to a gid.

    Raises:
        ConfigError: no such group.
    """
    if name is None:
        return None
    if name.isdigit():
        return int(name)
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        raise ConfigError(f"group {name!r} does not exist") from None


def _socket_in_use(path: Path) -> bool:
    """Whether a live process listens on the Unix socket ``path``."""
    if not path.is_socket():
        return False
    for kind in (socket.SOCK_STREAM, socket.SOCK_SEQPACKET):  # the descriptor socket is the latter
        with socket.socket(socket.AF_UNIX, kind) as probe:
            try:
                probe.connect(str(path))
            except OSError as exc:
                if exc.errno == errno.EPROTOTYPE:
                    continue
                return False
        return True
    return False


def scheduler_policy(settings: Settings) -> SchedulerPolicy:
    """The scheduling policy every device gets: ``policy`` and the ``[scheduler]`` knobs.

    Everything the settings do not name keeps :class:`SchedulerPolicy`'s default. The shares
    were checked when the settings were loaded, so this does not raise for loaded settings.
    """
    knobs = settings.scheduler
    defaults = SchedulerPolicy()
    return SchedulerPolicy(
        kind=PolicyKind(settings.policy),
        min_share={
            SchedulingClass.LATENCY: 0.0,
            SchedulingClass.THROUGHPUT: knobs.throughput_min_share,
            SchedulingClass.BACKGROUND: knobs.background_min_share,
        },
        time_slice_s=knobs.time_slice_ms / 1e3 if knobs.time_slice_ms > 0 else None,
        latency_window_s=knobs.latency_window_s,
        timeouts={c: t * knobs.watchdog_scale for c, t in defaults.timeouts.items()},
    )


LOG_TEXT_CHARS = 300
"""The longest free text (an error message, a reason) one log line carries: kinds and labels
are bounded at admission, and anything longer is clipped, so a client cannot grow the log."""


def core_limits(settings: Settings) -> Limits:
    """The bounds on what clients may ask (``[limits]``), as core holds them."""
    knobs = settings.limits
    return Limits(
        timeout_ceilings={
            SchedulingClass.LATENCY: knobs.latency_timeout_max_s,
            SchedulingClass.THROUGHPUT: knobs.throughput_timeout_max_s,
            SchedulingClass.BACKGROUND: knobs.background_timeout_max_s,
        },
        max_deadline_s=knobs.max_deadline_s,
        max_estimate_s=knobs.max_estimate_s,
        max_wait_s=knobs.max_wait_s,
        min_event_interval_s=knobs.min_event_interval_s,
        max_event_interval_s=knobs.max_event_interval_s,
        max_weight=knobs.max_weight,
        max_kinds_per_owner=knobs.max_kinds_per_owner,
        max_label_chars=knobs.max_label_chars,
        max_kind_chars=knobs.max_kind_chars,
        max_readbacks=knobs.max_readbacks,
        max_readback_bytes=knobs.max_readback_bytes,
    )


class Daemon:
    """One npud process. :meth:`run` returns the exit status.

    ``nodes`` finds and opens device nodes (default: discovery and the accel adapters) and
    ``hotplug`` is the stream of node events (default: discovery's monitor on the loop); tests
    pass fakes for both to drive the daemon over fake kernels.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        nodes: Nodes | None = None,
        hotplug: EventSource | None = None,
    ) -> None:
        self.settings = settings
        self.log = get_logger("npud")
        self.nodes: Nodes = nodes if nodes is not None else SystemNodes(self.log, settings)
        self.on_node: dict[str, NodeInfo] = {}  # device name -> the node it was opened on
        self.hotplug: HotplugWatcher | None = None
        self._source = hotplug
        self.notifier = Notifier.from_environment()
        self._stop = asyncio.Event()
        self._all_closed = asyncio.Event()
        self._force = asyncio.Event()
        self.devices: list[Device] = []
        self.core: Core | None = None
        self.server: Server | None = None
        self.identity: IdentityServer | None = None
        self.descriptors: DescriptorServer | None = None
        self.submits: SubmitSocketServer | None = None
        self.state: ApiState | None = None
        self.recovery: DeviceRecovery | None = None
        self.tenants = TenantTable()
        self.metrics: MetricsServer | None = None
        self._bound = False  # whether the socket files are ours to remove

    # ---- start-up -------------------------------------------------------------------------

    def _prepare_socket_dir(self) -> None:
        s = self.settings
        for path in (s.socket, s.identity_socket, s.descriptor_socket, s.submit_socket):
            if _socket_in_use(path):
                raise Unavailable(f"another npud is serving {path}; stop it first")
            if path.exists() and not path.is_socket():
                raise ConfigError(f"socket: {path} exists and is not a socket")
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        s.socket.parent.mkdir(parents=True, exist_ok=True, mode=0o755)

    def _log_job(self, job: Job) -> None:
        """The one canonical line per finished job."""
        if not self.log.is_enabled_for(logging.INFO):
            return  # filtered out: do not even build its fields (this runs for every job)
        completion = job.completion
        moved = 0 if completion is None else completion.bytes_read + completion.bytes_written
        self.log.info(
            "job.finished",
            job=job.id,
            context=job.context_id,
            queue=job.queue_id,
            kind=job.kind or None,
            sched_class=str(job.sched_class),
            outcome=str(job.state),
            queue_wait_ms=None if job.queue_wait_s is None else round(job.queue_wait_s * 1e3, 3),
            run_ms=None if job.run_s is None else round(job.run_s * 1e3, 3),
            bytes_moved=moved,
            error=None
            if job.error is None
            else clip(f"{job.error.kind}: {job.error.message}", LOG_TEXT_CHARS),
        )

    def _on_event(self, event: Event) -> None:
        if isinstance(event, DeviceEvent):
            emit = self.log.info if event.health is DeviceHealth.OK else self.log.warning
            emit(
                "device.health",
                device=event.device,
                health=str(event.health),
                reason=event.reason[:300] or None,
            )
            return
        if isinstance(event, ContextEvent) and event.change is Change.DESTROYED:
            assert self.state is not None
            assert self.core is not None
            self.state.sessions.unbind(event.context_id)
            self.log.info(
                "context.destroyed",
                context=event.context_id,
                reason=clip(event.reason or "", LOG_TEXT_CHARS) or None,
            )
            if self.state.shutting_down and not self.core.contexts(SYSTEM, all_users=True):
                self._all_closed.set()

    def _expire_session(self, token: str, contexts: list[ContextId]) -> None:
        """A session's grace period ran out: destroy its contexts, forget its token."""
        assert self.core is not None
        assert self.state is not None
        self.state.tokens.revoke(token)
        if contexts:
            self.log.info("session.expired", contexts=len(contexts))
        for ctx in contexts:
            with contextlib.suppress(NpudError):
                self.core.destroy_context(SYSTEM, ctx, reason="its client's session ended")

    def _status_line(self) -> str:
        assert self.core is not None
        stats = self.core.statistics()
        sim = any(d.capabilities.simulated for d in self.devices)
        kind = "SIMULATED NPU" if sim else "NPU"
        names = ", ".join(d.name for d in self.devices)
        return (
            f"serving {len(self.devices)} {kind} device(s) ({names}); "
            f"{stats.contexts} context(s), {stats.live_jobs} live job(s)"
        )

    def _start_hotplug(self) -> None:
        """Start collecting node events before enumerating, so no node is missed in between;
        without netlink (a container, no permission) the daemon runs without hotplug."""
        source = self._source if self._source is not None else MonitorEvents()
        try:
            source.start()
        except OSError as exc:
            self.log.warning(
                "hotplug.unavailable",
                error=str(exc),
                detail="nodes are not followed; RescanDevices brings lost devices back",
            )
            self._source = None
            return
        self._source = source

    async def _start(self) -> None:
        s = self.settings
        self._start_hotplug()
        choice = choose_devices(s, self.log, self.nodes)
        if choice.simulated:
            self.log.warning("devices.simulated", detail=choice.reason)
        self.devices = open_devices(choice, self.log)
        self.on_node.update(
            (d.name, choice.nodes[d.name]) for d in self.devices if d.name in choice.nodes
        )
        admin_gid = _group_id(s.admin_group)
        sock_gid = _group_id(s.socket_group)
        core = Core(
            MonotonicClock(),
            limits=CoreLimits(
                max_contexts_per_user=s.quotas.max_contexts_per_user,
                max_live_jobs_per_user=s.quotas.max_jobs_per_user,
                max_memory_bytes_per_user=s.quotas.memory_bytes_per_user,
                admin_gid=admin_gid,
                close_grace_s=s.close_grace_s,
                bounds=core_limits(s),
            ),
        )
        policy = scheduler_policy(s)
        for device in self.devices:
            state_dir = s.state_dir / device.name
            try:
                make_private(state_dir)
            except OSError as exc:
                raise ConfigError(f"state_dir: cannot create {state_dir}: {exc}") from exc
            node = self.on_node.get(device.name)
            entry = core.add_device(
                device,
                policy=policy,
                state_dir=state_dir,
                node=node.path if node else "",
                budgets=residency_budgets(s),
                sram_policy=s.residency.sram_placement,
            )
            entry.scheduler.add_hooks(on_end=self._log_job)
        self.core = core
        tokens = TokenRegistry(admin_gid=admin_gid)
        sessions = SessionTable(grace_s=s.session_grace_s, on_expire=self._expire_session)
        tokens.in_use = lambda token: sessions.is_open(token) or sessions.holds_contexts(token)
        q = s.quotas
        self.state = ApiState(
            core,
            tokens,
            sessions,
            Defaults(
                context_memory_bytes=q.context_memory_bytes,
                max_queued_jobs=q.max_queued_jobs,
                max_queues=q.max_queues,
                queue_depth_limit=q.queue_depth_limit,
            ),
        )
        # job events cost per job; device events (loss, watchdog resets) are logged
        core.subscribe(self._on_event, kinds=(ContextEvent, DeviceEvent))
        self._prepare_socket_dir()
        self._bound = True
        self.recovery = DeviceRecovery(
            core,
            s,
            self.devices,
            policy=policy,
            log=self.log,
            on_entry=lambda entry: entry.scheduler.add_hooks(on_end=self._log_job),
            nodes=self.nodes,
            on_node=self.on_node,
        )
        if self._source is not None:
            self.hotplug = HotplugWatcher(
                core,
                s,
                self.devices,
                self.on_node,
                nodes=self.nodes,
                recovery=self.recovery,
                policy=policy,
                log=self.log,
                on_entry=lambda entry: entry.scheduler.add_hooks(on_end=self._log_job),
            )
        admin = AdminServicer(
            self.state, fault_injection=s.fault_injection, rescan=self.recovery.rescan
        )
        self.server = build_server(
            self.state, f"unix:{s.socket}", admin=admin, tenants=self.tenants
        )
        await self.server.server.start()
        os.chmod(s.socket, s.socket_mode)
        if sock_gid is not None:
            os.chown(s.socket, -1, sock_gid)
        self.identity = IdentityServer(tokens, s.identity_socket, mode=s.socket_mode, gid=sock_gid)
        await self.identity.start()
        self.descriptors = DescriptorServer(
            core,
            tokens,
            s.descriptor_socket,
            mode=s.socket_mode,
            gid=sock_gid,
            serving=self.state.require_serving,
        )
        await self.descriptors.start()
        self.submits = SubmitSocketServer(
            self.state, tokens, s.submit_socket, mode=s.socket_mode, gid=sock_gid
        )
        await self.submits.start()
        await self._start_metrics()
        await self.server.set_serving(True)
        self.state.status = self._status_line()
        self.state.describe = self._status_line
        self.notifier.ready(self.state.status)
        self.log.info(
            "npud.ready",
            socket=str(s.socket),
            identity_socket=str(s.identity_socket),
            devices=[d.name for d in self.devices],
            simulated=choice.simulated,
            policy=s.policy,
            hotplug=self._source.name if self._source is not None else None,
            metrics=s.metrics.listen,
            pid=os.getpid(),
        )

    async def _start_metrics(self) -> None:
        """Serve /metrics when ``[metrics] listen`` names an address.

        Raises:
            ConfigError: the address cannot be bound.
        """
        listen = self.settings.metrics.listen
        if listen is None:
            return
        assert self.core is not None
        assert self.state is not None
        state = self.state
        registry, _ = registry_for(
            Sources(
                self.core,
                sessions=state.sessions.statistics,
                tokens=state.tokens.statistics,
                tenants=self.tenants.statistics,
                submits=self.submits.statistics if self.submits is not None else None,
            )
        )
        host, port = split_listen(listen)
        server = MetricsServer(registry, host, port)
        try:
            await server.start()
        except OSError as exc:
            raise ConfigError(f"metrics.listen: cannot listen on {listen}: {exc}") from exc
        self.metrics = server

    # ---- running ----------------------------------------------------------------------------

    def _healthy(self) -> bool:
        """The watchdog's self-check: the loop runs (we are on it) and a device still serves,
        or every lost device is a node whose return hotplug awaits (an unplugged NPU is not a
        daemon fault; a dead simulated NPU with nothing else serving is, and a restart cures
        it)."""
        assert self.core is not None
        lost = [d for d in self.devices if self.core.device_health(d.name) is DeviceHealth.LOST]
        if len(lost) < len(self.devices):
            return True
        watching = self.hotplug is not None and self.hotplug.running
        return bool(lost) and watching and all(d.name in self.on_node for d in lost)

    async def _status_loop(self) -> None:
        assert self.state is not None
        while True:
            await asyncio.sleep(5.0)
            line = self._status_line()
            if line != self.state.status:
                self.state.status = line
                self.notifier.status(line)

    def request_stop(self, signame: str) -> None:
        """Begin the shutdown (signal handler); a second signal during the drain forces it:
        running jobs are aborted at once instead of being given ``shutdown_grace_s``."""
        if not self._stop.is_set():
            self.log.info("npud.stopping", signal=signame)
            self._stop.set()
        elif not self._force.is_set():
            self.log.warning("npud.forcing_stop", signal=signame)
            self._force.set()

    async def run(self) -> int:
        """Start, serve until SIGTERM/SIGINT, drain, and return the exit status (0).

        Raises:
            NpudError: start-up failed (no device, socket in use, bad group); nothing is left
                behind.
        """
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop, sig.name)
        try:
            await self._start()
            async with asyncio.TaskGroup() as tasks:
                background = [
                    tasks.create_task(self.notifier.run_watchdog(self._healthy)),
                    tasks.create_task(self._status_loop()),
                ]
                watcher = None
                if self.hotplug is not None and self._source is not None:
                    watcher = tasks.create_task(self.hotplug.run(self._source))
                await self._stop.wait()
                if watcher is not None:  # no device comes or goes while draining
                    watcher.cancel()
                await self._shutdown()
                for task in background:
                    task.cancel()
        finally:
            await self._teardown()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.remove_signal_handler(sig)
        self.log.info("npud.stopped")
        return 0

    # ---- shutdown ---------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        assert self.core is not None
        assert self.state is not None
        assert self.server is not None
        core, state, s = self.core, self.state, self.settings
        state.shutting_down = True
        self.notifier.stopping("draining: running jobs finish, queued jobs are cancelled")
        await self.server.set_serving(False)
        if self.identity is not None:
            await self.identity.stop()
        if self.descriptors is not None:
            await self.descriptors.stop()
        if self.submits is not None:
            self.submits.stop_accepting()  # open streams still get their jobs' responses
        contexts = core.contexts(SYSTEM, all_users=True)
        running = sum(c.on_device for c in contexts)
        queued = max(0, sum(len(c.jobs) for c in contexts) - running)
        self.log.info("npud.draining", cancelled=queued, running=running)
        # close_all cancels queued jobs at once and running ones after the grace, each with
        # SHUTDOWN_REASON in its error ("its context was closed: npud is shutting down").
        core.close_all(grace_s=s.shutdown_grace_s, reason=SHUTDOWN_REASON)
        # Contexts close when their running jobs have ended (or were aborted after the
        # grace); allow the device a moment beyond the grace to report the aborts. A second
        # signal ends the grace now.
        if core.contexts(SYSTEM, all_users=True) and await self._closed_or_forced(
            s.shutdown_grace_s + 2.0
        ):
            core.end_grace(reason=SHUTDOWN_REASON)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._all_closed.wait(), 2.0)
        left = [
            c.id for c in core.contexts(SYSTEM, all_users=True) if c.state != ContextState.CLOSED
        ]
        if left:
            self.log.warning("npud.contexts_left_open", contexts=left)
        state.sessions.close_all()
        await self.server.server.stop(grace=0.5)
        if self.submits is not None:
            await self.submits.stop()

    async def _closed_or_forced(self, timeout_s: float) -> bool:
        """Wait until every context has closed, the stop is forced or ``timeout_s`` passes;
        True when it was forced while contexts were still open."""
        closed = asyncio.ensure_future(self._all_closed.wait())
        forced = asyncio.ensure_future(self._force.wait())
        try:
            await asyncio.wait({closed, forced}, timeout=timeout_s, return_when="FIRST_COMPLETED")
        finally:
            closed.cancel()
            forced.cancel()
        return self._force.is_set() and not self._all_closed.is_set()

    async def _teardown(self) -> None:
        """Close everything that was opened (also after a failed start)."""
        if self.metrics is not None:
            await self.metrics.stop()
        if self._source is not None:
            self._source.stop()
        if self.server is not None:
            await self.server.server.stop(grace=None)
        if self.identity is not None:
            await self.identity.stop()
        if self.descriptors is not None:
            await self.descriptors.stop()
        if self.submits is not None:
            await self.submits.stop()
        if self.state is not None:
            self.state.sessions.close_all()
        for device in self.devices:
            try:
                device.close()
            except NpudError as exc:
                self.log.warning("device.close_failed", device=device.name, error=str(exc))
        if self._bound:
            for path in (
                self.settings.socket,
                self.settings.identity_socket,
                self.settings.descriptor_socket,
                self.settings.submit_socket,
            ):
                with contextlib.suppress(FileNotFoundError):
                    if path.is_socket():
                        path.unlink()
        self.notifier.close()


def run(settings: Settings) -> int:
    """Run the daemon to completion on a fresh event loop; returns the exit status."""
    return asyncio.run(Daemon(settings).run())


__all__ = ["Daemon", "run"]
