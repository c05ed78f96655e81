"""Completion for kernels that offer only a blocking wait ioctl: ONE waiter thread a device.

ethosu (``BO_WAIT``) and qaic (``WAIT_BO``) tell userspace that a job finished only by blocking
in an ioctl. :class:`WaiterThread` is the device's single thread that does that blocking, in
submission order, and hands each result back to the event loop with
``loop.call_soon_threadsafe``; :class:`BlockingWaitDevice` is the skeleton of such adapters.
The waiter thread is the only code of the accel adapters that runs off the core thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, ClassVar

from npud.abi.header import IoctlSpec
from npud.devices.accel.device import AccelDevice, InFlight
from npud.devices.accel.kernel import translate
from npud.devices.base import CompletionStatus, SubmitToken
from npud.errors import DeviceLost, NpudError


class WaiterThread:
    """The device's ONE waiter thread for kernels that only offer a blocking wait ioctl.

    ``wait(fn, deliver)`` queues ``fn`` (a blocking wait on one job, returning its result); the
    thread runs the waits in submission order and hands each result to ``deliver`` on the event
    loop with ``loop.call_soon_threadsafe``. Jobs on one engine complete in order, so waiting in
    submission order is exact there; across engines an earlier slow job delays the report of a
    later fast one (the docs say so for the drivers that use this).
    """

    def __init__(self, name: str, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], Callable[[Any], None]] | None]
        self._queue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=f"npud-wait-{name}", daemon=True)
        self._thread.start()

    def wait(self, fn: Callable[[], Any], deliver: Callable[[Any], None]) -> None:
        """Queue one blocking wait; ``deliver(result or exception)`` runs on the loop."""
        self._queue.put((fn, deliver))

    def stop(self) -> None:
        """Stop after the queued waits (each wait has its own timeout). Idempotent."""
        if self._thread.is_alive():
            self._queue.put(None)
            self._thread.join(timeout=10.0)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            fn, deliver = item
            try:
                result: Any = fn()
            except Exception as exc:  # delivered to the loop, which decides
                result = exc
            try:
                self._loop.call_soon_threadsafe(deliver, result)
            except RuntimeError:  # loop closed: nobody is listening any more
                return


class BlockingWaitDevice(AccelDevice):
    """An adapter whose kernel reports completion only through a blocking wait ioctl.

    ethosu (``BO_WAIT``) and qaic (``WAIT_BO``) are such kernels. The device owns ONE
    :class:`WaiterThread`, started by :meth:`_start_waiter` from ``_probe`` and stopped at close;
    a subclass's ``_submit`` hands it the job's blocking wait with :meth:`_wait_in_thread`. The
    wait function runs on the waiter thread, loops in short slices while :meth:`_still_waiting`
    and returns ``None`` when the job is done or the ``OSError``/``NpudError`` that ended the
    wait; :meth:`_on_waited` then reports the job on the loop. The kernel has no job status, so
    a finished wait is an OK job.
    """

    wait_ioctl: ClassVar[IoctlSpec]
    """The wait ioctl, for translating its failure into an npud error."""

    _waiter: WaiterThread | None = None  # while open
    _stopping: threading.Event  # set at close: the waits in the thread give up

    def _start_waiter(self) -> None:
        """Start the device's waiter thread (from ``_probe``, once the loop is known)."""
        self._stopping = threading.Event()
        self._waiter = WaiterThread(self.name, self.loop)

    def _wait_in_thread(self, record: InFlight, wait: Callable[[], object]) -> None:
        """Queue ``wait`` (the job's blocking wait) on the waiter thread; report it when done."""
        assert self._waiter is not None
        token = record.token
        self._waiter.wait(wait, lambda result: self._on_waited(token, result))

    def _still_waiting(self, token: SubmitToken) -> bool:
        """On the waiter thread: whether the job is still wanted (not closing, not finished)."""
        return not self._stopping.is_set() and token in self._inflight

    def _on_waited(self, token: SubmitToken, result: object) -> None:
        """On the loop: report the job whose wait ended with ``result``.

        A refused wait (``OSError``) fails the job, or loses the device when the errno says so;
        an npud error from the wait (the file is gone) loses the device.
        """
        record = self._inflight.get(token)
        if record is None:
            return
        if isinstance(result, OSError):
            error = translate(result, self.wait_ioctl, self.errno_overrides)
            if isinstance(error, DeviceLost):
                self._lose(str(error))
                return
            self._finish(record, CompletionStatus.ERROR, str(error))
            return
        if isinstance(result, NpudError):
            self._lose(str(result))
            return
        self._finish(record, CompletionStatus.OK, None)

    def _shutdown(self) -> None:
        """Stop the waiter thread after its queued waits (each gives up once stopping)."""
        if self._waiter is not None:
            self._stopping.set()
            with contextlib.suppress(RuntimeError):
                self._waiter.stop()
            self._waiter = None
