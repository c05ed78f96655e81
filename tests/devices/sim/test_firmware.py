"""The device process's lanes, driven in this process: engines run independently, in order."""

from __future__ import annotations

import mmap
import os
import queue
from collections.abc import Iterator

import numpy as np
import pytest

from npud.devices.base import CompletionStatus
from npud.devices.sim.firmware import Firmware
from npud.devices.sim.job import run_job
from npud.devices.sim.profiles import get_profile
from npud.devices.sim.wire import RUN_HANG, DoneMessage, RunMessage, decode_done
from npud.isa import Program, T
from npud.vocab import MemoryTier

REPLY_WAIT_S = 30.0  # a hang guard only: no assertion depends on how long anything took


class Board:
    """A Firmware fed by hand: buffers are memfds this test maps too; replies land in a queue."""

    def __init__(self, lanes: int | None = None) -> None:
        self.replies: queue.Queue[DoneMessage] = queue.Queue()
        self.firmware = Firmware(
            get_profile("rk3588"), lambda data: self.replies.put(decode_done(data)), lanes=lanes
        )
        self.views: dict[int, mmap.mmap] = {}
        self._next_token = 1

    def buffer(self, data: bytes, size: int = 4096) -> int:
        """Announce a new buffer holding ``data``; returns its handle."""
        handle = len(self.views) + 1
        fd = os.memfd_create(f"test-bo{handle}")
        os.ftruncate(fd, size)
        self.views[handle] = mmap.mmap(fd, size)
        self.views[handle][: len(data)] = data
        self.firmware.map({"handle": handle, "size": size, "tier": "dram"}, [os.dup(fd)])
        os.close(fd)
        return handle

    def job(self, program: Program, bindings: list[int], engine: int, flags: int = 0) -> int:
        """Send a job (its command stream in a new buffer); returns its token."""
        blob = program.encode()
        cmd = self.buffer(blob)
        token = self._next_token
        self._next_token += 1
        writable = tuple(True for _ in bindings)
        self.firmware.submit(
            RunMessage(token, cmd, 0, len(blob), tuple(bindings), writable, engine, flags)
        )
        return token

    def reply(self) -> DoneMessage:
        """The next reply, in the order the lanes sent them."""
        return self.replies.get(timeout=REPLY_WAIT_S)

    def floats(self, handle: int, n: int) -> np.ndarray:
        """The first ``n`` float32s of a buffer, as the device left them."""
        return np.frombuffer(self.views[handle], np.float32, n).copy()


@pytest.fixture
def board() -> Iterator[Board]:
    b = Board()
    yield b
    assert b.firmware.stop()


def add_program(n: int = 4) -> Program:
    """slot 0 += slot 0 (doubles n float32s)."""
    prog = Program()
    prog.add(T(0, 0, (n,)), T(0, 0, (n,)), T(0, 0, (n,)))
    return prog


def test_a_hung_engine_does_not_hold_up_another_engine(board: Board) -> None:
    """A job hung on engine 0 in the device process; a job on engine 1 still replies (first)."""
    data = board.buffer(np.ones(4, np.float32).tobytes())
    hung = board.job(Program().burn(0.0), [], engine=0, flags=RUN_HANG)
    other = board.job(add_program(), [data], engine=1)
    first = board.reply()
    assert (first.token, first.status) == (other, CompletionStatus.OK)
    np.testing.assert_array_equal(board.floats(data, 4), 2.0)
    board.firmware.cancel(hung)
    second = board.reply()
    assert (second.token, second.status) == (hung, CompletionStatus.ABORTED)


def test_one_shared_lane_makes_other_engines_wait_the_serial_baseline() -> None:
    """With lanes=1 (the baseline), engine 1's job replies only after engine 0's hung job ends."""
    board = Board(lanes=1)
    data = board.buffer(np.ones(4, np.float32).tobytes())
    hung = board.job(Program().burn(0.0), [], engine=0, flags=RUN_HANG)
    other = board.job(add_program(), [data], engine=1)
    board.firmware.cancel(hung)
    assert [board.reply().token, board.reply().token] == [hung, other]
    assert board.firmware.stop()


def test_each_engine_runs_its_jobs_in_submission_order(board: Board) -> None:
    """Interleaved jobs on two engines: each engine's replies come back in its FIFO order."""
    data = {e: board.buffer(np.ones(4, np.float32).tobytes()) for e in (0, 1)}
    sent: dict[int, list[int]] = {0: [], 1: []}
    for i in range(12):
        engine = i % 2
        sent[engine].append(board.job(add_program(), [data[engine]], engine=engine))
    by_engine: dict[int, list[int]] = {0: [], 1: []}
    for _ in range(12):
        done = board.reply()
        assert done.status is CompletionStatus.OK
        by_engine[0 if done.token in sent[0] else 1].append(done.token)
    assert by_engine == sent
    for engine in (0, 1):  # six doublings each, none lost to a race between lanes
        np.testing.assert_array_equal(board.floats(data[engine], 4), 64.0)


def test_a_job_keeps_buffers_unmapped_after_it_was_sent(board: Board) -> None:
    """A buffer unmapped behind a queued job's back stays mapped for that job, which runs."""
    data = board.buffer(np.ones(4, np.float32).tobytes())
    hung = board.job(Program().burn(0.0), [], engine=0, flags=RUN_HANG)
    queued = board.job(add_program(), [data], engine=0)
    board.firmware.unmap({"handle": data})
    board.firmware.cancel(hung)
    assert board.reply().token == hung
    done = board.reply()
    assert (done.token, done.status) == (queued, CompletionStatus.OK)
    np.testing.assert_array_equal(board.floats(data, 4), 2.0)
    late = board.job(add_program(), [data], engine=1)  # sent after the unmap: refused
    done = board.reply()
    assert (done.token, done.status) == (late, CompletionStatus.ERROR)
    assert f"buffer handle {data} is not mapped" in (done.error or "")


def test_cancel_skips_a_queued_job_and_ignores_a_finished_one(board: Board) -> None:
    """A cancelled queued job never runs (its buffer is untouched); cancelling later is a no-op."""
    data = board.buffer(np.ones(4, np.float32).tobytes())
    hung = board.job(Program().burn(0.0), [], engine=0, flags=RUN_HANG)
    skipped = board.job(add_program(), [data], engine=0)
    board.firmware.cancel(skipped)
    board.firmware.cancel(hung)
    replies = [board.reply(), board.reply()]
    assert [(r.token, r.status) for r in replies] == [
        (hung, CompletionStatus.ABORTED),
        (skipped, CompletionStatus.ABORTED),
    ]
    assert replies[1].error == "cancelled before it started"
    np.testing.assert_array_equal(board.floats(data, 4), 1.0)
    board.firmware.cancel(skipped)  # already replied: nothing to do, nothing raised
    stats = board.firmware.statistics()
    assert (stats.lanes, stats.in_flight, stats.replied, stats.cancelled) == (3, 0, 2, 2)


def test_stop_wakes_a_hung_lane() -> None:
    """stop() cancels what is in flight, so a hung engine does not keep the process alive."""
    board = Board()
    board.job(Program().burn(0.0), [], engine=2, flags=RUN_HANG)
    assert board.firmware.stop()
    assert board.reply().status is CompletionStatus.ABORTED


def test_a_job_cancelled_mid_way_stops_before_its_next_op() -> None:
    """run_job polls ``cancelled`` between ops: ops before it wrote, ops after it did not."""
    mem = bytearray(np.ones(4, np.float32).tobytes())
    prog = Program()
    for _ in range(5):
        prog.add(T(0, 0, (4,)), T(0, 0, (4,)), T(0, 0, (4,)))
    polls = 0

    def cancelled() -> bool:
        nonlocal polls
        polls += 1
        return polls > 3  # three ops run, the fourth is cancelled

    outcome = run_job(
        prog.encode(),
        memories=[mem],
        sizes=[len(mem)],
        tiers=[MemoryTier.DRAM],
        writable=[True],
        profile=get_profile("rk3588"),
        cancelled=cancelled,
    )
    assert outcome.status is CompletionStatus.ABORTED
    assert outcome.error == "cancelled before op 3 (ADD)"
    np.testing.assert_array_equal(np.frombuffer(mem, np.float32), 8.0)


def test_a_compute_free_job_runs_at_once_only_on_an_idle_lane(board: Board) -> None:
    """A BURN-only job skips the lane thread when its lane is idle, never past a queued job."""
    hung = board.job(Program().burn(0.0), [], engine=0, flags=RUN_HANG)
    behind = board.job(Program().burn(1.0), [], engine=0)  # lane 0 is busy: queued, in order
    at_once = board.job(Program().burn(1.0), [], engine=1)  # lane 1 is idle: run inline
    assert board.reply().token == at_once
    assert board.firmware.statistics().inline == 1
    board.firmware.cancel(hung)
    assert [board.reply().token, board.reply().token] == [hung, behind]
    assert board.firmware.statistics().inline == 1
