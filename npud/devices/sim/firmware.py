"""The simulated NPU's device process: the "firmware" that executes jobs off the daemon.

Started by :class:`npud.devices.sim.host.FirmwareHost` as ``python -m
npud.devices.sim.firmware --cmd-fd N --reply-fd M --profile NAME``. It maps each buffer's
memfd as it is announced, runs each job it is sent (decode, cost, execute: the same
:func:`~npud.devices.sim.device.run_job` the in-process mode uses) and replies with the
outcome. It processes messages in order and exits when told to or when the daemon's end of
the command socket closes, so it never outlives the daemon.
"""

from __future__ import annotations

import argparse
import json
import mmap
import os
import socket
import time
from collections.abc import Sequence
from typing import Any

from npud.devices.base import CompletionStatus, MemoryTier
from npud.devices.sim.device import JobOutcome, run_job
from npud.devices.sim.profiles import BoardProfile, get_profile
from npud.devices.sim.wire import RUN, DoneMessage, RunMessage, decode_run, encode_done

MAX_MESSAGE = 1 << 16


class Firmware:
    """The device process's state: its mapped buffers and its board profile."""

    def __init__(self, profile: BoardProfile) -> None:
        self.profile = profile
        self.buffers: dict[int, tuple[mmap.mmap, MemoryTier]] = {}

    def map(self, msg: dict[str, Any], fds: Sequence[int]) -> None:
        """Map an announced buffer's memfd (and close our copy of the fd)."""
        fd = fds[0]
        try:
            self.buffers[int(msg["handle"])] = (
                mmap.mmap(fd, int(msg["size"])),
                MemoryTier(msg["tier"]),
            )
        finally:
            os.close(fd)

    def unmap(self, msg: dict[str, Any]) -> None:
        """Drop a freed buffer."""
        entry = self.buffers.pop(int(msg["handle"]), None)
        if entry is not None:
            entry[0].close()

    def run(self, msg: RunMessage) -> DoneMessage:
        """Execute one job and build its reply."""
        began = time.monotonic()
        handles = msg.bindings
        missing = [h for h in (msg.command, *handles) if h not in self.buffers]
        if missing:
            outcome = JobOutcome(
                CompletionStatus.ERROR,
                f"buffer handle {missing[0]} is not mapped on the device",
                0.0,
            )
        else:
            command_mem = self.buffers[msg.command][0]
            outcome = run_job(
                bytes(command_mem[msg.offset : msg.offset + msg.size]),
                memories=[self.buffers[h][0] for h in handles],
                sizes=[len(self.buffers[h][0]) for h in handles],
                tiers=[self.buffers[h][1] for h in handles],
                writable=msg.writable,
                profile=self.profile,
            )
        return DoneMessage(
            token=msg.token,
            status=outcome.status,
            error=outcome.error,
            modelled_s=outcome.modelled_s,
            compute_s=time.monotonic() - began,
            bytes_read=outcome.bytes_read,
            bytes_written=outcome.bytes_written,
        )


def serve(cmd: socket.socket, reply: socket.socket, profile: BoardProfile) -> None:
    """Serve commands until told to exit or the daemon goes away."""
    firmware = Firmware(profile)
    reply.send(json.dumps({"op": "hello", "pid": os.getpid()}).encode())
    while True:
        data, fds, _flags, _addr = socket.recv_fds(cmd, MAX_MESSAGE, 4)
        if not data:
            return
        if data[:1] == RUN and not fds:
            reply.send(encode_done(firmware.run(decode_run(data))))
            continue
        msg = json.loads(data)
        op = msg.get("op")
        if op == "map":
            firmware.map(msg, fds)
        elif op == "unmap":
            firmware.unmap(msg)
        elif op == "exit":
            return
        for fd in fds if op != "map" else fds[1:]:
            os.close(fd)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the device process."""
    parser = argparse.ArgumentParser(prog="npud-sim-firmware")
    parser.add_argument("--cmd-fd", type=int, required=True)
    parser.add_argument("--reply-fd", type=int, required=True)
    parser.add_argument("--profile", required=True)
    args = parser.parse_args(argv)
    cmd = socket.socket(fileno=args.cmd_fd)
    reply = socket.socket(fileno=args.reply_fd)
    try:
        serve(cmd, reply, get_profile(args.profile))
    except (BrokenPipeError, ConnectionResetError):
        pass  # the daemon went away: so do we
    finally:
        cmd.close()
        reply.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
