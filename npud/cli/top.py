"""``npuctl top``: a live view of the NPUs, fed by the daemon's event stream.

The daemon pushes, over one ``StatsService.StreamEvents`` rpc, a statistics snapshot every
interval and every job and context change in between; npuctl never polls the list rpcs (it
lists the live jobs once at start, because the stream only reports changes). An admin sees
every owner's jobs, anyone else their own.

Three parties, one owner each:

- a *pump* thread iterates the grpc stream (a blocking iterator) and posts each message, or
  the error that ended it, to an inbox queue;
- the main thread owns the :class:`TopModel` and the terminal: it waits for a key press or a
  message, applies messages to the model and redraws;
- the terminal is in cbreak mode (keys arrive unbuffered and unechoed, Ctrl-C still raises
  SIGINT) for exactly as long as the view runs, and rich's ``Live(screen=True)`` owns the
  alternate screen. ``q`` and Ctrl-C both leave through the same ``finally`` blocks: cancel the
  rpc, restore the terminal's attributes, leave the alternate screen, show the cursor.

With ``-o json`` there is no screen: every stream message is printed as one JSON line, the
scripting twin of the view.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import select
import sys
import termios
import threading
import time
import tty
from collections import OrderedDict, deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final, TextIO

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from npud.cli import tables
from npud.cli.connection import Connection, StreamCall
from npud.cli.exit_codes import CliError, ExitCode
from npud.cli.inventory import Filters, Inventory
from npud.cli.output import to_dict
from npud.cli.summary import headline
from npud.cli.units import enum_name
from npud.v1 import job_pb2, stats_pb2, types_pb2

_LIVE_STATES: Final = frozenset(
    {types_pb2.JOB_STATE_QUEUED, types_pb2.JOB_STATE_READY, types_pb2.JOB_STATE_RUNNING}
)
_STATE_ORDER: Final = {
    types_pb2.JOB_STATE_RUNNING: 0,
    types_pb2.JOB_STATE_READY: 1,
    types_pb2.JOB_STATE_QUEUED: 2,
}
_MAX_JOBS: Final = 500
_MAX_CONTEXT_EVENTS: Final = 4
_TICK_S: Final = 0.25


@dataclass(frozen=True, slots=True)
class TopStatistics:
    """How much the view has received: snapshots, job and context events."""

    snapshots: int
    job_events: int
    context_events: int
    device_events: int
    jobs_tracked: int


@dataclass(slots=True, eq=False)
class TopModel:
    """What ``top`` shows: the latest snapshot and the jobs it has heard of, newest last.

    Each job is kept as the daemon last reported it, with the monotonic time it arrived, so the
    view can age a running job's run time (or a queued job's wait) between events.
    """

    everyone: bool
    stats: stats_pb2.GetStatsResponse | None = None
    jobs: OrderedDict[str, tuple[job_pb2.Job, float]] = field(default_factory=OrderedDict)
    context_lines: deque[str] = field(default_factory=lambda: deque(maxlen=_MAX_CONTEXT_EVENTS))
    snapshots: int = 0
    job_events: int = 0
    context_events: int = 0
    device_events: int = 0

    def track(self, job: job_pb2.Job, now: float) -> None:
        """Record ``job`` as its latest state (moves it to the newest end)."""
        self.jobs.pop(job.job_id, None)
        self.jobs[job.job_id] = (job, now)
        if len(self.jobs) > _MAX_JOBS:
            # Forget the oldest *finished* jobs: a queued job that waited through thousands
            # of other jobs' events is exactly the one the operator is looking for.
            excess = len(self.jobs) - _MAX_JOBS
            finished = [jid for jid, (j, _) in self.jobs.items() if j.state not in _LIVE_STATES]
            for jid in finished[:excess]:
                del self.jobs[jid]

    def apply(self, msg: stats_pb2.StreamEventsResponse, now: float) -> None:
        """Fold one stream message into the model."""
        kind = msg.WhichOneof("event")
        if kind == "stats":
            self.stats = msg.stats
            self.snapshots += 1
        elif kind == "job":
            self.job_events += 1
            self.track(msg.job, now)
        elif kind == "context":
            self.context_events += 1
            ev = msg.context
            change = enum_name(stats_pb2.ContextChange.DESCRIPTOR, ev.change)
            label = f" ({ev.snapshot.label})" if ev.snapshot.label else ""
            reason = f": {ev.reason}" if ev.reason else ""
            stamp = time.strftime("%H:%M:%S")
            self.context_lines.append(
                f"{stamp} {ev.context_id}{label} on {ev.device} {change}{reason}"
            )
        elif kind == "device":
            self.device_events += 1

    def visible_jobs(self, limit: int, now: float) -> list[job_pb2.Job]:
        """Live jobs (running, ready, queued) first, then the most recently finished ones."""
        live: list[job_pb2.Job] = []
        done: list[job_pb2.Job] = []
        for job, seen in reversed(self.jobs.values()):
            aged = job_pb2.Job()
            aged.CopyFrom(job)
            elapsed = max(0.0, now - seen)
            aged.age_s += elapsed
            if job.state == types_pb2.JOB_STATE_RUNNING:
                aged.run_s += elapsed
            elif job.state in _LIVE_STATES:
                aged.queue_wait_s += elapsed
            (live if job.state in _LIVE_STATES else done).append(aged)
        live.sort(key=lambda j: _STATE_ORDER.get(j.state, 9))
        return (live + done)[:limit]

    def render(self, height: int, now: float) -> RenderableType:
        """The screen for a terminal ``height`` rows tall."""
        parts: list[RenderableType] = []
        if self.stats is None:
            parts.append(Text("npuctl top: waiting for the first snapshot..."))
        else:
            parts.append(headline(self.stats))
        scope = "every owner's jobs" if self.everyone else "your jobs"
        parts.append(
            Text(
                f"{self.snapshots} snapshots, {self.job_events} job events, "
                f"{self.context_events} context events ({scope}) | q or Ctrl-C quits",
                style="dim",
            )
        )
        used = 2
        if self.stats is not None:
            devices = self.stats.devices
            grid = Table.grid(padding=(0, 3))
            grid.add_row(tables.engines(devices), tables.memory(devices))
            parts.append(grid)
            parts.append(tables.classes(devices))
            rows = sum(len(d.engines) for d in devices)
            tiers = sum(len(d.memory) for d in devices)
            classes = sum(len(d.classes) for d in devices)
            used += max(rows, tiers) + 3 + classes + 3
        if self.context_lines:
            parts.append(Text("\n".join(self.context_lines), style="dim"))
            used += len(self.context_lines)
        limit = max(3, height - used - 4)
        jobs = self.visible_jobs(limit, now)
        job_table = tables.live_jobs(jobs)
        job_table.title = f"Jobs (live first, then recently finished; {len(self.jobs)} seen)"
        job_table.title_justify = "left"
        parts.append(job_table)
        return Group(*parts)

    def statistics(self) -> TopStatistics:
        """A snapshot of what the view has received."""
        return TopStatistics(
            snapshots=self.snapshots,
            job_events=self.job_events,
            context_events=self.context_events,
            device_events=self.device_events,
            jobs_tracked=len(self.jobs),
        )


# ---- the stream pump and the keyboard -------------------------------------------------------


_END: Final = object()


def _pump(call: StreamCall, inbox: queue.SimpleQueue[object]) -> None:
    """Post every stream message to ``inbox``, then the error that ended it, then _END."""
    try:
        for msg in call:
            inbox.put(msg)
    except CliError as exc:
        inbox.put(exc)
    finally:
        inbox.put(_END)


class Keyboard:
    """Single key presses from a terminal in cbreak mode; nothing from a non-terminal.

    Restores the terminal's attributes on exit, whatever ended the ``with`` block.
    """

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._fd = -1
        self._saved: list[Any] | None = None

    def __enter__(self) -> Keyboard:
        try:
            fd = self._stream.fileno()
        except (AttributeError, OSError, ValueError):
            return self
        if os.isatty(fd):
            self._fd = fd
            self._saved = termios.tcgetattr(fd)
            tty.setcbreak(fd)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._saved is not None:
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved)
            self._saved = None

    @property
    def interactive(self) -> bool:
        """Whether keys can be read (stdin is a terminal)."""
        return self._saved is not None

    def read(self, timeout_s: float) -> str | None:
        """One key, or None when none was pressed within ``timeout_s`` (or not interactive)."""
        if not self.interactive:
            return None
        ready, _, _ = select.select([self._fd], [], [], timeout_s)
        if not ready:
            return None
        data = os.read(self._fd, 1)
        return data.decode(errors="replace") if data else None


# ---- the view -------------------------------------------------------------------------------


def _drain(
    inbox: queue.SimpleQueue[object], model: TopModel, wait_s: float, max_snapshots: int = 0
) -> bool:
    """Apply every waiting message (stopping at ``max_snapshots`` snapshots when non-zero, so
    ``-n N`` shows exactly N however many arrived meanwhile); returns False once the stream has
    ended.

    Raises:
        CliError: the stream failed.
    """
    try:
        item = inbox.get(timeout=wait_s) if wait_s > 0 else inbox.get_nowait()
    except queue.Empty:
        return True
    while True:
        if item is _END:
            return False
        if isinstance(item, CliError):
            raise item
        assert isinstance(item, stats_pb2.StreamEventsResponse)
        model.apply(item, time.monotonic())
        if max_snapshots and model.snapshots >= max_snapshots:
            return True
        try:
            item = inbox.get_nowait()
        except queue.Empty:
            return True


@contextlib.contextmanager
def _stream(conn: Connection, interval_s: float) -> Iterator[queue.SimpleQueue[object]]:
    request = stats_pb2.StreamEventsRequest(interval_s=interval_s, all=conn.admin)
    call = conn.stream(conn.client.stats_stub.StreamEvents, request)
    inbox: queue.SimpleQueue[object] = queue.SimpleQueue()
    pump = threading.Thread(target=_pump, args=(call, inbox), name="npuctl-top-stream", daemon=True)
    pump.start()
    try:
        yield inbox
    finally:
        call.cancel()
        pump.join(timeout=5.0)


def _json_lines(conn: Connection, interval_s: float, iterations: int, out: TextIO) -> None:
    snapshots = 0
    with _stream(conn, interval_s) as inbox:
        while True:
            item = inbox.get()
            if item is _END:
                return
            if isinstance(item, CliError):
                raise item
            assert isinstance(item, stats_pb2.StreamEventsResponse)
            out.write(json.dumps(to_dict(item)) + "\n")
            out.flush()
            if item.WhichOneof("event") == "stats":
                snapshots += 1
                if iterations and snapshots >= iterations:
                    return


def run_top(
    conn: Connection,
    inv: Inventory,
    *,
    interval_s: float = 1.0,
    iterations: int = 0,
    json_lines: bool = False,
    console: Console | None = None,
) -> TopModel | None:
    """Run the live view until ``q``, Ctrl-C, ``iterations`` snapshots or the stream's end.

    Returns the final model (None in JSON mode); the terminal is restored in every case.

    Raises:
        CliError: the stream failed (CANNOT_CONNECT when the daemon went away).
    """
    if json_lines:
        with contextlib.suppress(KeyboardInterrupt):
            _json_lines(conn, interval_s, iterations, sys.stdout)
        return None
    console = console if console is not None else Console(highlight=False)
    if not console.is_terminal:
        raise CliError(
            "npuctl top needs a terminal; use `npuctl top -o json` (JSON Lines) or "
            "`npuctl -l SECONDS` instead",
            ExitCode.USAGE,
        )
    model = TopModel(everyone=conn.admin)
    now = time.monotonic()
    live_states = (
        types_pb2.JOB_STATE_QUEUED,
        types_pb2.JOB_STATE_READY,
        types_pb2.JOB_STATE_RUNNING,
    )
    for job in inv.jobs(Filters(states=live_states)):
        model.track(job, now)
    with (
        _stream(conn, interval_s) as inbox,
        Keyboard(sys.stdin) as keys,
        Live(
            model.render(console.size.height, now),
            console=console,
            screen=True,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
        ) as live,
    ):
        try:
            while True:
                key = keys.read(_TICK_S)
                if key in ("q", "Q"):
                    break
                alive = _drain(inbox, model, 0.0 if keys.interactive else _TICK_S, iterations)
                live.update(model.render(console.size.height, time.monotonic()), refresh=True)
                if not alive:
                    raise CliError("npud ended the event stream", ExitCode.CANNOT_CONNECT)
                if iterations and model.snapshots >= iterations:
                    break
        except KeyboardInterrupt:
            pass
    return model


__all__ = ["Keyboard", "TopModel", "TopStatistics", "run_top"]
