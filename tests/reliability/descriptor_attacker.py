"""An attacker on npud's descriptor socket, running as another user.

Run as ``python -m tests.reliability.descriptor_attacker --uid U --gid G SOCKET SCENARIO ARGS``
(as root; ``ARGS`` is a JSON object). Like :mod:`tests.reliability.actor` it imports what it
needs, drops to ``U:G`` and then attacks; it prints one JSON object with what each attempt
got (an npud error class name, an errno name, or what it read) and exits 0. Scenarios:

``steal``
    export another user's buffer (``context_id``, ``buffer_id``) with its own token, and with
    the victim's token (``token``, leaked to it).
``sealed``
    open the sealed persistent buffer ``key`` in a context of its own, take its descriptor,
    and try every way to write through it: a writable shared mapping, ``write(2)``,
    re-opening ``/proc/self/fd/N`` for writing, ``ftruncate``, a writable export; reports the
    first bytes it reads.
``die``
    create a context with ``n`` buffers, map each (writable) and write into it, print
    ``{"mapped": n}``, then wait to be killed with the mappings held.
"""

from __future__ import annotations

import argparse
import errno
import json
import mmap
import os
import socket
import sys
import time
from typing import Any

import grpc

import npud.client
import npud.client.descriptors
from npud.client.descriptors import DescriptorChannel
from npud.errors import NpudError


def _outcome(fn: Any) -> str:
    """What calling ``fn`` came to: ``"ok"``, an npud error class name or an errno name."""
    try:
        fn()
    except NpudError as exc:
        return type(exc).__name__
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    return "ok"


def steal(client: npud.client.Client, args: dict[str, Any]) -> dict[str, Any]:
    own = client.descriptor_channel()
    leaked = DescriptorChannel(client.socket_path, args["token"])
    result = {
        "own_token": _outcome(lambda: own.map(args["context_id"], args["buffer_id"])),
        "own_token_writable": _outcome(
            lambda: own.map(args["context_id"], args["buffer_id"], writable=True)
        ),
        "leaked_token": _outcome(lambda: leaked.map(args["context_id"], args["buffer_id"])),
    }
    leaked.close()
    return result


def sealed(client: npud.client.Client, args: dict[str, Any]) -> dict[str, Any]:
    ctx = client.create_context(label="attacker")
    buf = client.open_persistent(ctx, args["key"])
    channel = client.descriptor_channel()
    result: dict[str, Any] = {
        "writable_export": _outcome(
            lambda: channel.map(ctx.context_id, buf.buffer_id, writable=True)
        )
    }
    reply, fd = channel.request(
        {"op": "export", "context_id": ctx.context_id, "buffer_id": buf.buffer_id}
    )
    assert fd is not None
    size = buf.size
    result["mmap_shared_writable"] = _outcome(
        lambda: mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    )
    result["write"] = _outcome(lambda: os.pwrite(fd, b"owned", 0))
    result["ftruncate"] = _outcome(lambda: os.ftruncate(fd, 0))

    def reopen_and_write() -> None:
        again = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
        try:
            os.pwrite(again, b"owned", 0)
        finally:
            os.close(again)

    result["reopen_rdwr_write"] = _outcome(reopen_and_write)

    def reopen_and_map() -> None:
        again = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
        try:
            mmap.mmap(again, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        finally:
            os.close(again)

    result["reopen_rdwr_mmap"] = _outcome(reopen_and_map)
    with mmap.mmap(fd, size, access=mmap.ACCESS_COPY) as private:
        private[:5] = b"owned"  # a private copy-on-write page: never the buffer's
    with mmap.mmap(fd, size, access=mmap.ACCESS_READ) as shared:
        result["head"] = shared[:16].hex()
    os.close(fd)
    channel.release(int(reply["lease"]))
    client.destroy_context(ctx)
    return result


def die(client: npud.client.Client, args: dict[str, Any]) -> dict[str, Any]:
    ctx = client.create_context(label="dies-mapping")
    held = []
    for i in range(int(args["n"])):
        buf = client.create_buffer(ctx, 1 << 20)
        mapped = client.map_buffer(ctx, buf, writable=True)
        mapped.view[:4] = i.to_bytes(4, "little")
        held.append(mapped)
    print(json.dumps({"mapped": len(held), "pid": os.getpid()}), flush=True)
    time.sleep(3600)  # killed here, mappings and the descriptor connection still open
    return {}


SCENARIOS = {"steal": steal, "sealed": sealed, "die": die}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uid", type=int, required=True)
    parser.add_argument("--gid", type=int, required=True)
    parser.add_argument("socket")
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("args", nargs="?", default="{}")
    ns = parser.parse_args()
    grpc.insecure_channel("unix:/nonexistent").close()  # see tests/reliability/actor.py
    socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET).close()
    os.setgroups([])
    os.setgid(ns.gid)
    os.setuid(ns.uid)
    with npud.client.connect(ns.socket) as client:
        result = SCENARIOS[ns.scenario](client, json.loads(ns.args))
    print(json.dumps(result), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
