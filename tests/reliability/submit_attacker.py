"""An attacker on npud's submit socket, running as another user.

Run as ``python -m tests.reliability.submit_attacker --uid U --gid G SOCKET SCENARIO ARGS``
(as root; ``ARGS`` is a JSON object). Like :mod:`tests.reliability.descriptor_attacker` it
imports what it needs, drops to ``U:G`` and then attacks; it prints one JSON object with what
it got and exits 0. Scenarios:

``steal``
    present the victim's token (``token``, leaked to it) in the handshake; submit into the
    victim's context (``context_id``, ``queue_id``) over the socket and over the rpc; read the
    victim's buffer (``buffer_id``) back from a job in a context of its own.
``fuzz``
    ``n`` frames from a seeded generator (``seed``) after a valid handshake: random bytes,
    valid requests with bytes flipped, and well-formed requests with random fields (random
    command streams, bindings, readbacks, ids). A frame that does not parse as a request must
    be answered tag 0 INVALID_ARGUMENT and close the connection (then it reconnects); one
    that parses must be answered under its own tag. Prints the counts and every reply that
    broke those rules (``anomalies``).
``die``
    open a submit stream over the socket, send ``n`` BURN jobs of ``seconds`` each, print
    ``{"submitted": n}``, then wait to be killed with them in flight.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import socket
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError

import npud.client
import npud.errors
from npud.client import Bind, BufferUsage, JobSpec, Readback, SchedulingClass
from npud.config import submit_socket_for
from npud.errors import NpudError
from npud.isa import Program
from npud.v1 import job_pb2
from npud.vocab.frames import FrameReader, frame

NULL = Program().encode()


class Line:
    """A raw submit socket connection (frames out, frames or the end in)."""

    def __init__(self, daemon_socket: str, token: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(60)  # a hang guard
        self.sock.connect(str(submit_socket_for(Path(daemon_socket))))
        self.reader = FrameReader(1 << 30)
        self.frames: list[bytes] = []
        self.sock.sendall(frame(json.dumps({"version": 1, "token": token}).encode()))
        body = self.next()
        self.hello: dict[str, Any] = json.loads(body) if body is not None else {}

    def next(self) -> bytes | None:
        while not self.frames:
            try:
                data = self.sock.recv(1 << 16)
            except ConnectionResetError:
                return None
            if not data:
                return None
            self.frames.extend(self.reader.feed(data))
        return self.frames.pop(0)

    def close(self) -> None:
        self.sock.close()


def _kind(fn: Any) -> str:
    try:
        fn()
    except NpudError as exc:
        return type(exc).__name__
    return "ok"


def steal(client: npud.client.Client, args: dict[str, Any]) -> dict[str, Any]:
    leaked = Line(str(client.socket_path), args["token"])
    leaked.close()
    victim = JobSpec(args["queue_id"], NULL)
    result: dict[str, Any] = {"leaked_token": leaked.hello.get("error", "ok")}
    for choice, name in ((None, "socket"), (False, "grpc")):
        with npud.client.connect(client.socket_path, submit_socket=choice) as c:
            with c.submit_stream(args["context_id"]) as stream:
                assert stream.via == name, stream.via
                res = stream.run(victim)
                result[f"{name}_victims_context"] = res.error.kind if res.error else "ok"
    own = client.create_context(label="thief")
    q = client.create_queue(own)
    with client.submit_stream(own) as stream:
        res = stream.run(JobSpec(q, NULL), [Readback(args["buffer_id"], 0, 16)])
        result["readback_of_victims_buffer"] = res.error.kind if res.error else res.readbacks
        res = stream.run(JobSpec(q, NULL, (Bind(args["buffer_id"]),)))
        result["binding_victims_buffer"] = res.error.kind if res.error else "ok"
    client.destroy_context(own)
    return result


KNOWN_KINDS = {
    name
    for name in dir(npud.errors)
    if isinstance(getattr(npud.errors, name), type)
    and issubclass(getattr(npud.errors, name), NpudError)
    and name != "NpudError"
}


def _plausible(rng: random.Random, ids: dict[str, list[str]]) -> job_pb2.SubmitStreamRequest:
    """A request the daemon should run: its own context, queue and buffer, in bounds."""
    job = job_pb2.JobSpec(queue_id=ids["queue"][0], command_inline=NULL)
    req = job_pb2.SubmitStreamRequest(
        tag=rng.randint(1, (1 << 63) - 1), context_id=ids["context"][0], job=job
    )
    if rng.random() < 0.5:
        job.bindings.add(buffer_id=ids["buffer"][0], access=1)
        offset = rng.randrange(4096)
        req.readbacks.add(
            buffer_id=ids["buffer"][0], offset=offset, size=rng.randint(0, 4096 - offset)
        )
    return req


def _request(rng: random.Random, ids: dict[str, list[str]]) -> job_pb2.SubmitStreamRequest:
    """A well-formed request with random fields (ids mostly real, sometimes not)."""
    if rng.random() < 0.3:
        return _plausible(rng, ids)

    def pick(kind: str) -> str:
        if rng.random() < 0.8:
            return rng.choice(ids[kind])
        return rng.choice(["", "x", "ctx-" + "9" * rng.randint(1, 40), "\u00e9" * 3])

    job = job_pb2.JobSpec(queue_id=pick("queue"), kind=rng.choice(["", "fuzz", "k" * 70]))
    roll = rng.random()
    if roll < 0.3:
        job.command_inline = NULL
    elif roll < 0.6:
        job.command_inline = rng.randbytes(rng.randint(0, 96))
    elif roll < 0.7:
        job.command_buffer.buffer_id = pick("buffer")
        job.command_buffer.offset = rng.choice([0, 1, 4096, 1 << 40])
        job.command_buffer.size = rng.choice([0, 4, 1 << 20])
    for _ in range(rng.choice([0, 0, 1, 2, 5])):
        job.bindings.add(buffer_id=pick("buffer"), access=rng.randint(0, 4))
    if rng.random() < 0.2:
        job.timeout_s = rng.choice([0.5, -1.0, float("nan"), float("inf"), 1e12])
    if rng.random() < 0.1:
        job.depends_on.append(rng.choice(["job-1", "", "j" * 300]))
    req = job_pb2.SubmitStreamRequest(
        tag=rng.randint(1, (1 << 63) - 1), context_id=pick("context"), job=job
    )
    for _ in range(rng.choice([0, 0, 1, 3, 17])):
        req.readbacks.add(
            buffer_id=pick("buffer"),
            offset=rng.choice([0, 8, 4095, 1 << 62]),
            size=rng.choice([0, 4, 4096, 1 << 20, 1 << 40]),
        )
    return req


def _frame_body(rng: random.Random, ids: dict[str, list[str]]) -> bytes:
    roll = rng.random()
    if roll < 0.25:
        return rng.randbytes(rng.randint(0, 200))
    body = bytearray(_request(rng, ids).SerializeToString())
    if roll < 0.5 and body:
        for _ in range(rng.randint(1, 4)):
            body[rng.randrange(len(body))] = rng.randrange(256)
    return bytes(body)


def fuzz(client: npud.client.Client, args: dict[str, Any]) -> dict[str, Any]:
    rng = random.Random(args["seed"])
    ctx = client.create_context(label="fuzz")
    q = client.create_queue(ctx, SchedulingClass.LATENCY)
    buf = client.create_buffer(ctx, 4096, usage=BufferUsage.STATE)
    ids = {
        "context": [ctx.context_id, args["victim_context"]],
        "queue": [q.queue_id, args["victim_queue"]],
        "buffer": [buf.buffer_id, args["victim_buffer"]],
    }
    token = client.identity.token
    line = Line(str(client.socket_path), token)
    counts = {"frames": 0, "served": 0, "refused": 0, "failed": 0, "broken": 0}
    anomalies: list[str] = []
    for i in range(int(args["n"])):
        body = _frame_body(rng, ids)
        expected: int | None
        try:
            parsed = job_pb2.SubmitStreamRequest()
            parsed.ParseFromString(body)
            expected = parsed.tag
        except DecodeError:
            expected = None  # the daemon must end the stream on it
        line.sock.sendall(frame(body))
        counts["frames"] += 1
        reply = line.next()
        if reply is None:
            anomalies.append(f"frame {i}: the connection closed without a response")
            line.close()
            line = Line(str(client.socket_path), token)
            continue
        msg = job_pb2.SubmitStreamResponse()
        try:
            msg.ParseFromString(reply)
        except DecodeError:
            anomalies.append(f"frame {i}: a reply that is not a SubmitStreamResponse")
            break
        if msg.HasField("error") and (
            msg.error.kind not in KNOWN_KINDS or msg.error.code == 0 or not msg.error.message
        ):
            anomalies.append(f"frame {i}: error {msg.error.kind!r} code {msg.error.code}")
        if expected is None:
            ok = msg.tag == 0 and msg.error.kind == "InvalidArgument"
            if not ok or line.next() is not None:
                anomalies.append(f"frame {i}: an unparsable frame got {msg} and no close")
            counts["broken"] += 1
            line.close()
            line = Line(str(client.socket_path), token)
            continue
        if msg.tag != expected:
            anomalies.append(f"frame {i}: tag {msg.tag} answered a request tagged {expected}")
        if msg.HasField("job"):
            counts["served" if not msg.HasField("error") else "failed"] += 1
        else:
            counts["refused"] += 1
            if not msg.HasField("error"):
                anomalies.append(f"frame {i}: a response with neither job nor error")
    line.close()
    client.destroy_context(ctx)
    return {"counts": counts, "anomalies": anomalies[:20]}


def die(client: npud.client.Client, args: dict[str, Any]) -> dict[str, Any]:
    ctx = client.create_context(label="dies-streaming")
    q = client.create_queue(ctx, SchedulingClass.THROUGHPUT, in_order=False)
    stream = client.submit_stream(ctx)
    assert stream.via == "socket"
    n = int(args["n"])
    for i in range(n):
        stream.submit(JobSpec(q, Program().burn(float(args["seconds"]) + i / 1000).encode()))
    print(json.dumps({"submitted": n, "pid": os.getpid()}), flush=True)
    time.sleep(3600)  # killed here, jobs in flight and the stream open
    return {}


SCENARIOS = {"steal": steal, "fuzz": fuzz, "die": die}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uid", type=int, required=True)
    parser.add_argument("--gid", type=int, required=True)
    parser.add_argument("socket")
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("args", nargs="?", default="{}")
    ns = parser.parse_args()
    grpc.insecure_channel("unix:/nonexistent").close()  # see tests/reliability/actor.py
    os.setgroups([])
    os.setgid(ns.gid)
    os.setuid(ns.uid)
    with npud.client.connect(ns.socket) as client:
        result = SCENARIOS[ns.scenario](client, json.loads(ns.args))
    print(json.dumps(result), flush=True)
    sys.exit(0)


if __name__ == "__main__":
    main()
