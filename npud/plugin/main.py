"""``npud-device-plugin``: serve the DevicePlugin socket, register with the kubelet, follow npud.

The process, on one asyncio loop:

1. connects to npud (its public socket, as a client; it must be an npud admin to create
   tenants, so it runs as root or in npud's admin group) and lists the devices; if npud is not
   there it says so and exits 1;
2. serves DevicePlugin on ``<kubelet dir>/npud.sock`` and registers ``npud.io/npu`` with the
   kubelet on ``<kubelet dir>/kubelet.sock`` (retrying while the kubelet is not up);
3. follows npud's WatchDevices: a device reported lost makes its shares Unhealthy, its return
   Healthy again; if the stream breaks (npud restarting) every share is Unhealthy until the
   plugin has reconnected;
4. watches the kubelet: a restarted kubelet deletes the plugin sockets and creates a new
   kubelet.sock, so when its own socket is gone or kubelet.sock is a new file the plugin serves
   afresh and registers again.

SIGTERM or SIGINT stops it (exit 0), removing its socket.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final

import grpc
import grpc.aio

import npud.client.aio
from npud.client.aio import AsyncClient
from npud.config import default_socket_path
from npud.errors import NpudError
from npud.log import configure, get_logger
from npud.plugin.allocations import Allocator, Layout
from npud.plugin.service import DevicePluginService, Watchers
from npud.plugin.shares import ShareTable
from npud.plugin.v1beta1 import deviceplugin_pb2 as dp
from npud.plugin.v1beta1 import deviceplugin_pb2_grpc as dp_grpc
from npud.vocab import DeviceHealth

API_VERSION: Final = "v1beta1"
KUBELET_DIR: Final = Path("/var/lib/kubelet/device-plugins")
RESOURCE: Final = "npud.io/npu"
POLL_S: Final = 0.5


class Plugin:
    """One npud-device-plugin process (see the module docstring)."""

    def __init__(self, opts: argparse.Namespace) -> None:
        self.opts = opts
        self.log = get_logger("npud.plugin")
        self.shares = ShareTable(opts.shares)
        self.watchers = Watchers()
        self._npu: AsyncClient | None = None
        self.allocator = Allocator(
            self.shares,
            Layout(
                npud_socket=opts.npud_socket,
                state_dir=opts.state_dir,
                container_socket_dir=opts.container_socket_dir,
            ),
            self.client,
        )
        self.endpoint = opts.kubelet_dir / opts.endpoint
        self.kubelet_socket = opts.kubelet_dir / "kubelet.sock"
        self.registrations = 0
        self._stop = asyncio.Event()

    async def client(self) -> AsyncClient:
        """The live connection to npud (reconnecting if it was lost).

        Raises:
            Unavailable: npud is not running.
        """
        if self._npu is None:
            npu = await npud.client.aio.connect(self.opts.npud_socket)
            if npu.owner is None or not npu.owner.admin:
                await npu.close()
                raise SystemExit(
                    "npud-device-plugin must be an npud admin (root or npud's admin_group) to "
                    "create tenants"
                )
            self._npu = npu
        return self._npu

    async def _forget_client(self) -> None:
        if self._npu is not None:
            with contextlib.suppress(Exception):
                await self._npu.close()
            self._npu = None

    def _set(self, device: str, healthy: bool) -> None:
        if self.shares.set_health(device, healthy):
            self.log.info("plugin.health", device=device, healthy=healthy)
            self.watchers.changed()

    async def follow_devices(self) -> None:
        """Keep share health in step with npud's device events (see the module docstring)."""
        while True:
            try:
                npu = await self.client()
                async for event in npu.watch_devices():
                    self._set(event.device.name, event.device.health is not DeviceHealth.LOST)
                raise NpudError("npud ended the device stream")
            except NpudError as exc:
                self.log.warning("plugin.npud_unreachable", error=str(exc))
                await self._forget_client()
                for share in self.shares.shares():
                    self._set(share.device, False)
                await asyncio.sleep(1.0)

    def _kubelet_identity(self) -> tuple[int, int] | None:
        try:
            st = os.stat(self.kubelet_socket)
        except OSError:
            return None
        return (st.st_dev, st.st_ino)

    async def _register(self) -> tuple[int, int]:
        """Register with the kubelet, retrying until it answers; kubelet.sock's identity."""
        while True:
            seen = self._kubelet_identity()
            if seen is not None:
                try:
                    async with grpc.aio.insecure_channel(f"unix:{self.kubelet_socket}") as ch:
                        await dp_grpc.RegistrationStub(ch).Register(
                            dp.RegisterRequest(
                                version=API_VERSION,
                                endpoint=self.endpoint.name,
                                resource_name=self.opts.resource,
                                options=dp.DevicePluginOptions(
                                    get_preferred_allocation_available=True
                                ),
                            ),
                            timeout=10.0,
                        )
                    self.registrations += 1
                    self.log.info(
                        "plugin.registered",
                        resource=self.opts.resource,
                        endpoint=str(self.endpoint),
                    )
                    return seen
                except grpc.aio.AioRpcError as exc:
                    self.log.warning("plugin.register_failed", error=exc.details() or str(exc))
            await asyncio.sleep(POLL_S * 2)

    async def _serve_once(self) -> None:
        """Serve the plugin socket and register; return when the kubelet restarted."""
        server = grpc.aio.server()
        dp_grpc.add_DevicePluginServicer_to_server(
            DevicePluginService(self.shares, self.watchers, self.allocator), server
        )
        with contextlib.suppress(FileNotFoundError):
            self.endpoint.unlink()
        server.add_insecure_port(f"unix:{self.endpoint}")
        await server.start()
        try:
            kubelet = await self._register()
            while not self._stop.is_set():
                if not self.endpoint.exists() or self._kubelet_identity() != kubelet:
                    self.log.info(
                        "plugin.kubelet_restarted", detail="serving and registering again"
                    )
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), POLL_S)
        finally:
            await server.stop(grace=0.5)
            with contextlib.suppress(FileNotFoundError):
                self.endpoint.unlink()

    async def run(self) -> int:
        """Serve until SIGTERM/SIGINT; 1 when npud is not there at start."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            npu = await self.client()
            for device in await npu.devices():
                self.shares.set_health(device.name, device.health is not DeviceHealth.LOST)
        except NpudError as exc:
            print(
                f"npud-device-plugin: npud is not reachable at {self.opts.npud_socket}: {exc}",
                file=sys.stderr,
            )
            return 1
        self.opts.kubelet_dir.mkdir(parents=True, exist_ok=True)
        self.log.info(
            "plugin.started",
            devices=self.shares.statistics().devices,
            shares_per_device=self.shares.per_device,
            npud=str(self.opts.npud_socket),
        )
        follower = asyncio.create_task(self.follow_devices())
        try:
            while not self._stop.is_set():
                await self._serve_once()
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
            await self._forget_client()
        self.log.info("plugin.stopped")
        return 0


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line (environment variables give the defaults)."""
    env = os.environ
    p = argparse.ArgumentParser(
        prog="npud-device-plugin",
        description="Advertise npud's NPUs to the kubelet as shares, one npud tenant each.",
    )
    p.add_argument(
        "--npud-socket",
        type=Path,
        default=default_socket_path(),
        help="npud's socket (default: $NPUD_SOCKET or /run/npud/npud.sock)",
    )
    p.add_argument(
        "--kubelet-dir",
        type=Path,
        default=Path(env.get("NPUD_PLUGIN_KUBELET_DIR", str(KUBELET_DIR))),
        help=f"the kubelet's device-plugins directory (default {KUBELET_DIR})",
    )
    p.add_argument(
        "--shares",
        type=int,
        default=int(env.get("NPUD_PLUGIN_SHARES", "4")),
        help="shares advertised per NPU (default 4, $NPUD_PLUGIN_SHARES)",
    )
    p.add_argument("--resource", default=env.get("NPUD_PLUGIN_RESOURCE", RESOURCE))
    p.add_argument("--endpoint", default="npud.sock", help="the plugin's socket file name")
    p.add_argument(
        "--state-dir",
        type=Path,
        default=Path(env.get("NPUD_PLUGIN_STATE_DIR", "/var/lib/npud-device-plugin")),
        help="where tenant credentials are written (a host path the kubelet can mount)",
    )
    p.add_argument(
        "--container-socket-dir",
        default="/run/npud",
        help="where npud's socket directory appears in containers",
    )
    ns = p.parse_args(argv)
    if not 1 <= ns.shares <= 1024:
        p.error(f"--shares must be in 1..1024, got {ns.shares}")
    if "/" not in ns.resource or ns.resource.startswith("/"):
        p.error(f"--resource must be vendor-domain/name, got {ns.resource!r}")
    return ns


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point of ``npud-device-plugin``."""
    opts = parse_args(argv)
    fmt = os.environ.get("NPUD_LOG_FORMAT", "auto")
    configure(
        os.environ.get("NPUD_LOG_LEVEL", "info"),
        fmt if fmt in ("console", "json") else "auto",  # type: ignore[arg-type]
    )
    sys.exit(asyncio.run(Plugin(opts).run()))


if __name__ == "__main__":
    main()
