"""systemd integration in plain Python: the sd_notify protocol and the watchdog.

The protocol is one datagram per message to the ``AF_UNIX`` socket named in ``$NOTIFY_SOCKET``,
newline-separated ``KEY=VALUE`` lines. A name starting with ``@`` is in the abstract namespace
(the ``@`` becomes a NUL byte; connecting to the literal ``@name`` path would silently fail and
the unit would never leave "activating"). Without ``$NOTIFY_SOCKET`` every call is a no-op, so
the daemon runs the same under systemd, in a terminal and in tests.

The watchdog is pinged from the event loop (never a thread): a wedged loop, or a scheduler
stuck on a blocking call, stops the pings and systemd restarts the daemon. systemd exports
``WATCHDOG_USEC`` (and ``WATCHDOG_PID``, which must be ours); we ping at half that interval.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class NotifierStatistics:
    """What the notifier has sent."""

    enabled: bool
    sent: int
    failed: int
    watchdog_pings: int
    watchdog_interval_s: float | None


@dataclass(slots=True, eq=False)
class Notifier:
    """Sends sd_notify messages to ``$NOTIFY_SOCKET`` (a no-op when it is unset).

    Failures to send are counted, never raised: systemd going away must not kill the daemon.
    """

    address: str | None = None
    watchdog_usec: int | None = None
    _sock: socket.socket | None = field(default=None, repr=False)
    _sent: int = 0
    _failed: int = 0
    _pings: int = 0

    @classmethod
    def from_environment(cls, env: Mapping[str, str] | None = None) -> Notifier:
        """A notifier for ``$NOTIFY_SOCKET`` and ``$WATCHDOG_USEC`` (if ``$WATCHDOG_PID`` is us)."""
        env = os.environ if env is None else env
        address = env.get("NOTIFY_SOCKET") or None
        usec: int | None = None
        pid = env.get("WATCHDOG_PID")
        if env.get("WATCHDOG_USEC") and (not pid or pid == str(os.getpid())):
            try:
                usec = int(env["WATCHDOG_USEC"])
            except ValueError:
                usec = None
            if usec is not None and usec <= 0:
                usec = None
        return cls(address=address, watchdog_usec=usec)

    @property
    def enabled(self) -> bool:
        """Whether a notify socket is configured."""
        return self.address is not None

    @property
    def watchdog_interval_s(self) -> float | None:
        """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when disabled."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2e6

    def _target(self) -> str | None:
        address = self.address
        if not address:
            return None
        if address.startswith("@"):
            return "\0" + address[1:]
        if address.startswith("/"):
            return address
        return None  # e.g. "vsock:..." addresses: not supported

    def notify(self, **fields: str | int) -> bool:
        """Send one datagram of ``KEY=VALUE`` lines, e.g. ``notify(READY=1, STATUS="ok")``.

        Returns whether the datagram was sent.
        """
        target = self._target()
        if target is None:
            return False
        payload = "\n".join(f"{key}={value}" for key, value in fields.items()).encode()
        try:
            if self._sock is None:
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
            self._sock.sendto(payload, target)
        except OSError:
            self._failed += 1
            return False
        self._sent += 1
        return True

    def ready(self, status: str) -> bool:
        """READY=1 with a STATUS line: the devices are open and the socket is bound."""
        return self.notify(READY=1, STATUS=status)

    def status(self, status: str) -> bool:
        """A STATUS= line for ``systemctl status``."""
        return self.notify(STATUS=status)

    def stopping(self, status: str) -> bool:
        """STOPPING=1: shutdown has begun."""
        return self.notify(STOPPING=1, STATUS=status)

    def watchdog(self) -> bool:
        """One WATCHDOG=1 keep-alive."""
        sent = self.notify(WATCHDOG=1)
        if sent:
            self._pings += 1
        return sent

    async def run_watchdog(self, healthy: Callable[[], bool] | None = None) -> None:
        """Ping WATCHDOG=1 at half the watchdog interval until cancelled.

        ``healthy`` is a cheap self-check run before each ping; when it returns False the ping
        is skipped, so systemd notices a daemon that is alive but no longer working. Returns at
        once when the watchdog is not enabled.
        """
        interval = self.watchdog_interval_s
        if interval is None or not self.enabled:
            return
        while True:
            if healthy is None or healthy():
                self.watchdog()
            await asyncio.sleep(interval)

    def close(self) -> None:
        """Close the datagram socket (idempotent)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def statistics(self) -> NotifierStatistics:
        """A snapshot of what was sent."""
        return NotifierStatistics(
            enabled=self.enabled,
            sent=self._sent,
            failed=self._failed,
            watchdog_pings=self._pings,
            watchdog_interval_s=self.watchdog_interval_s,
        )
