"""The engines of one device as the scheduler sees them: credits, recalls, choice, utilisation.

Each :class:`Engine` mirrors what npud has handed to one hardware engine (its in-flight FIFO,
the work charged to it, what finished on it recently). :class:`Engines` decides how deep each
engine's queue may be (credits), takes back queued work for latency jobs (recall), picks the
engine a job goes to (choice) and measures how busy each has been (utilisation).

Ownership: the scheduler owns the engines; an engine's in-flight jobs belong to their contexts
and are listed here only while they are on the device.
"""

from __future__ import annotations

import contextlib
import math
from collections import deque
from dataclasses import dataclass, field

from npud.clock import Clock
from npud.core.job import Job
from npud.core.policy import PolicyKind, SchedulerPolicy
from npud.core.sched.statistics import EngineStatistics
from npud.devices.base import Device
from npud.errors import NpudError
from npud.vocab import SchedulingClass


@dataclass(slots=True, eq=False)
class Engine:
    """One hardware engine: the jobs npud has handed to it, in the order it runs them."""

    index: int
    inflight: deque[Job] = field(default_factory=deque)
    latency: int = 0  # latency jobs in ``inflight``
    other: int = 0  # throughput and background jobs in ``inflight``
    load_s: float = 0.0  # work charged to the jobs in ``inflight``
    busy_s: float = 0.0
    recent: deque[tuple[float, float]] = field(default_factory=deque)  # (finished, run)
    head_since: float | None = None  # when the head of ``inflight`` started running


class Engines:
    """The engines of one device (at least one), with the scheduler's credits over them."""

    def __init__(self, count: int, clock: Clock, policy: SchedulerPolicy) -> None:
        self.all = [Engine(i) for i in range(max(1, count))]
        self.latency_in_flight = 0
        self.last_latency = -math.inf  # when latency work was last made ready or dispatched
        self._clock = clock
        self._policy = policy
        self._fifo = policy.kind is PolicyKind.FIFO
        self._started = clock.now()

    def __len__(self) -> int:
        return len(self.all)

    def __getitem__(self, index: int) -> Engine:
        return self.all[index]

    def busy(self) -> bool:
        """Whether any engine has work in flight."""
        return any(e.inflight for e in self.all)

    # ---- Why credits, and why recalls -------------------------------------------------
    #
    # A device runs an engine's jobs in the order it received them. Whatever npud has already
    # handed to an engine is therefore a FIFO that npud's priorities can no longer reorder: a
    # decode step submitted behind eight prefill chunks waits for all eight, however urgent.
    # The DRM scheduler solves this with a credit limit per hardware ring; npud does the same
    # per engine, with two depths:
    #
    # * shallow: while latency work is ready, running, or was seen within
    #   ``latency_window_s``, an engine holds at most ONE throughput/background job (plus up to
    #   ``latency_credits`` latency jobs). A decode step that arrives then waits for at most
    #   the one throughput job already on its engine, never a queue of them. More than that:
    #   in shallow mode a throughput/background job starts only on an IDLE engine, unless its
    #   class is below its minimum share (see below). Queued behind a running decode step, it
    #   would take that engine from whichever decode step becomes ready next - the next step
    #   of the same decoder, typically - and when the decoders already keep every engine busy,
    #   the throughput job would get an engine for every job it has while the decode steps
    #   queue behind it: in effect the FIFO the policy exists to avoid (measured: four decode
    #   loops on three engines with a prefill beside them decoded at the same rate under
    #   ``npud`` as under ``fifo``). Waiting for an idle engine costs throughput work nothing
    #   the classes do not already promise: it is guaranteed its minimum share, and it gets
    #   every engine that latency work leaves idle.
    # * deep: when only throughput work exists, each engine holds up to ``deep_credits`` jobs,
    #   so the device never idles between completions and the scheduler's reaction time does
    #   not cost throughput.
    #
    # The window matters because decode steps arrive one at a time with small gaps (the client
    # reads the token, then submits the next step); switching to deep mode in every gap would
    # put a deep queue in front of the next step. The window hides those gaps.
    #
    # The first latency job after a long throughput-only stretch still finds deep queues. For
    # it, npud *recalls* the throughput jobs an engine holds but has not started (everything
    # behind the head of its FIFO): it aborts them on the device and puts them back in READY
    # with their place in line. They never started, so they lose nothing but the round trip,
    # and the latency job waits for at most one throughput job after all. A device that cannot
    # abort queued work keeps them; then the bound is the deep queue, and the statistics say so
    # (``recalls`` stays 0).
    # ------------------------------------------------------------------------------------

    def can_take(
        self, engine: Engine, cls: SchedulingClass, shallow: bool, idle_only: bool = False
    ) -> bool:
        """Whether ``engine`` has a credit for a job of ``cls`` now."""
        if self._fifo:
            return len(engine.inflight) < self._policy.fifo_credits
        if cls is SchedulingClass.LATENCY:
            return engine.latency < self._policy.latency_credits
        if idle_only:
            return not engine.inflight
        if shallow:
            return engine.other == 0
        return len(engine.inflight) < self._policy.deep_credits

    def recall_deep(self, device: Device) -> int:
        """Abort the throughput/background jobs queued behind each engine's head; the number
        the device stopped (their completions put them back in READY)."""
        recalled = 0
        for engine in self.all:
            if engine.other <= 1:
                continue
            for job in list(engine.inflight)[1:]:
                if job.sched_class is SchedulingClass.LATENCY or job.done or job.recall:
                    continue
                if job.token is None:
                    continue
                job.recall = True
                try:
                    stopped = device.abort(job.token)
                except NpudError:
                    stopped = False
                if not stopped:
                    job.recall = False
                else:
                    recalled += 1
        return recalled

    def put(self, job: Job, engine: Engine, now: float) -> None:
        """``job`` was handed to ``engine`` at ``now``: take its credit and charge its work."""
        engine.inflight.append(job)
        engine.load_s += job.charged_s
        if job.sched_class is SchedulingClass.LATENCY:
            engine.latency += 1
            self.latency_in_flight += 1
            self.last_latency = now
        else:
            engine.other += 1

    def take(self, job: Job, engine: Engine) -> bool:
        """``job`` left ``engine``: give back its credit; returns whether it headed the FIFO."""
        was_head = bool(engine.inflight) and engine.inflight[0] is job
        if was_head:
            engine.inflight.popleft()
            engine.head_since = None
        else:
            with contextlib.suppress(ValueError):
                engine.inflight.remove(job)
        engine.load_s = max(0.0, engine.load_s - job.charged_s) if engine.inflight else 0.0
        if job.sched_class is SchedulingClass.LATENCY:
            engine.latency -= 1
            self.latency_in_flight -= 1
        else:
            engine.other -= 1
        return was_head

    # ---- Why the engine that frees up soonest ---------------------------------------------
    #
    # An engine runs what it holds in order, so a job handed to it starts when the work ahead
    # of it there is done. Spreading jobs evenly (fewest in flight, then least work charged)
    # ignores how far along that work is: a latency probe went to an engine that had just
    # started a 10 ms job rather than to one about to finish a 30 ms job, and the P2 probes
    # spread 99/84/92 over three engines with a median wait near half a throughput job
    # instead of the quarter a "soonest free" choice gives. So a job that may run anywhere
    # goes to an idle engine if there is one, else to the one whose remaining in-flight work
    # (work charged minus what the running head has done, :meth:`remaining`) is smallest;
    # ties go to fewer jobs in flight, then the lower index. Estimates may be wrong; a head
    # that overran its estimate counts as about to finish, which is the best guess there is.
    # ------------------------------------------------------------------------------------

    def choose(
        self, job: Job, cls: SchedulingClass, shallow: bool, idle_only: bool = False
    ) -> Engine | None:
        """The engine ``job`` goes to, or ``None`` when none has a credit for it now (or, for
        a job that follows its in-order predecessor, while that one is off its engine but
        has not ended: see "Why an in-order latency job may be handed over behind its
        predecessor" in :mod:`~npud.core.sched.lifecycle`)."""
        behind = job.behind  # cleared when that predecessor ends
        if behind is not None:
            if not behind.on_device or behind.requeue_on_abort or behind.recall:
                return None
            assert behind.engine is not None
            engine = self.all[behind.engine]
            if engine.inflight[-1] is not behind:
                return None  # other work went in behind it: wait for its end instead
            return engine if self.can_take(engine, cls, shallow, idle_only) else None
        if job.engine_request is not None:
            engine = self.all[job.engine_request]
            return engine if self.can_take(engine, cls, shallow, idle_only) else None
        best: Engine | None = None
        best_key = (0.0, 0)
        now = -1.0
        for engine in self.all:
            if not self.can_take(engine, cls, shallow, idle_only):
                continue
            if not engine.inflight:
                return engine  # idle: nothing can start sooner
            if now < 0.0:
                now = self._clock.now()
            key = (self.remaining(engine, now), len(engine.inflight))
            if best is None or key < best_key:
                best, best_key = engine, key
        return best

    @staticmethod
    def remaining(engine: Engine, now: float) -> float:
        """The engine's in-flight work not yet done: charged work minus the head's progress."""
        if not engine.inflight:
            return 0.0
        since = engine.head_since
        elapsed = now - since if since is not None else 0.0
        return max(0.0, engine.load_s - elapsed)

    def ahead_of(self, job: Job, now: float) -> float:
        """The work ``job`` waits for on the engine of the predecessor it follows (0.0 for a
        job that follows none on a device)."""
        behind = job.behind
        if behind is None or not behind.on_device or behind.engine is None:
            return 0.0
        return self.remaining(self.all[behind.engine], now)

    def soonest_free(self, now: float) -> float:
        """How long until the first engine has finished the work it holds."""
        return min(self.remaining(e, now) for e in self.all)

    # ---- Why utilisation counts the job that is still running ---------------------------
    #
    # An engine's busy time grows when a job finishes (by its measured time). Counted that
    # way alone, an engine running a 600 s job reads 0 % for ten minutes, then 100 % of a
    # window it was not busy in: npuctl showed core0 at 0.0 % while it was fully occupied.
    # So the busy time over a window is the finished jobs' run time that falls inside the
    # window (a run that began before the window counts only from its start) plus the time
    # the job at the head of the engine's FIFO has been running, clipped to the window. The
    # head is the only job an engine executes; jobs queued behind it are not busy time.
    # ------------------------------------------------------------------------------------

    def record_run(self, engine: Engine, now: float, run: float) -> None:
        """A job finished on ``engine`` at ``now`` after running ``run`` seconds."""
        engine.busy_s += run
        engine.recent.append((now, run))
        # Runs are pruned as they are recorded, so the list holds one window's runs whether or
        # not anyone reads statistics(); statistics() itself only reads.
        start = now - self._policy.share_window_s
        while engine.recent and engine.recent[0][0] < start:
            engine.recent.popleft()

    @staticmethod
    def _running_s(engine: Engine, now: float) -> float:
        if engine.head_since is None or not engine.inflight:
            return 0.0
        return max(0.0, now - engine.head_since)

    def _busy_in_window(self, engine: Engine, now: float, running: float) -> float:
        start = now - self._policy.share_window_s
        busy = sum(
            min(run, max(0.0, finished - start))
            for finished, run in engine.recent
            if finished >= start
        )
        return busy + min(running, now - start)

    def statistics(self) -> tuple[EngineStatistics, ...]:
        """A frozen snapshot of every engine."""
        now = self._clock.now()
        life = max(now - self._started, 1e-12)
        window = self._policy.share_window_s
        engines = []
        for e in self.all:
            running = self._running_s(e, now)
            engines.append(
                EngineStatistics(
                    index=e.index,
                    in_flight=len(e.inflight),
                    latency_in_flight=e.latency,
                    busy_s=e.busy_s,
                    utilisation=min(1.0, (e.busy_s + running) / life),
                    recent_utilisation=min(1.0, self._busy_in_window(e, now, running) / window),
                    running_s=running,
                )
            )
        return tuple(engines)
