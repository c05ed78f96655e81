"""A client of npud running as another user, driven line by line over stdin/stdout.

Run as ``python -m tests.reliability.actor --uid U --gid G SOCKET`` (as root). It imports
everything it needs first, then drops to ``U:G`` with ``setgroups([])``, ``setgid``, ``setuid``
(the interpreter's own files may be unreadable to that user), connects to npud and answers
one JSON line per command line::

    {"op": "call", "method": "read_buffer", "args": ["ctx-..", "buf-.."]}
    -> {"ok": false, "kind": "NotFound", "code": "NOT_FOUND", "message": "..."}

Ops: ``connect`` (sent first by the harness: the handshake and session); ``whoami``; ``token``;
``call`` (any :class:`npud.client.Client` method, ids as strings, ``"hex:..."`` for bytes,
the values of ``usage``/``persistence``/``tier``/``scheduling_class`` keywords as their
enums' strings);
``submit`` (a BURN job: ctx, queue, seconds, optional bindings
``[[buffer, "read"|"write"]]``); ``stream`` (n BURN jobs on a SubmitStream left open);
``rescan`` and ``inject`` (AdminService with this user's token); ``reconnect``; ``exit``.
Started with ``--model DIR`` (read before dropping privileges), the actor is also an
``npud-llm`` client: ``llm_open`` prepares a generator on that model (weights uploaded or
attached), ``llm_decode`` generates ``n`` ids from ``prompt`` (token ids) and returns them with
the inter-token times in seconds, ``llm_keys`` lists the weight keys.
Results are plain JSON (dataclasses as dicts, enums as
values, bytes as hex); failed rpcs come back as npud error class names.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import enum
import json
import os
import sys
from pathlib import Path
from typing import Any

import grpc

import npud.client
import npud.client.aio
import npud.client.types
from npud.client import (
    Access,
    Bind,
    BufferUsage,
    JobSpec,
    Persistence,
    SchedulingClass,
    TierPreference,
)
from npud.client.errors import from_rpc_error
from npud.client.identity import handshake
from npud.isa import Program
from npud.llm.daemon import KEY_PREFIX, DaemonBackend
from npud.llm.generator import Generator
from npud.llm.model import Model, load_model
from npud.v1 import admin_pb2, admin_pb2_grpc


def plain(value: Any) -> Any:
    """``value`` as JSON-ready data."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, datetime.datetime):  # Job.transitions carry wall-clock times
        return value.isoformat()
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value).hex()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [plain(v) for v in value]
    return value


def _error(exc: BaseException) -> dict[str, Any]:
    if isinstance(exc, grpc.RpcError):
        exc = from_rpc_error(exc)
    code = getattr(exc, "code", None)
    status = code() if callable(code) else None
    return {
        "ok": False,
        "kind": type(exc).__name__,
        "code": status.name if isinstance(status, grpc.StatusCode) else None,
        "message": str(exc),
    }


def _submit(npu: npud.client.Client, cmd: dict[str, Any]) -> Any:
    binds = tuple(
        Bind(b, Access.WRITE if use == "write" else Access.READ) for b, use in cmd.get("bind", [])
    )
    spec = JobSpec(
        cmd["queue"],
        Program().burn(float(cmd.get("seconds", 0.001))).encode(),
        binds,
        kind=cmd.get("kind", "actor"),
        timeout_s=float(cmd.get("timeout_s", 0.0)),
    )
    return npu.submit(cmd["ctx"], spec)


_ENUMS: dict[str, Any] = {
    "usage": BufferUsage,
    "persistence": Persistence,
    "tier": TierPreference,
    "scheduling_class": SchedulingClass,
}
_OPEN: list[Any] = []  # submit streams kept open until the process dies


def _stream(npu: npud.client.Client, cmd: dict[str, Any]) -> Any:
    """Open a SubmitStream, send ``n`` BURN jobs, return the first result; keep it open."""
    stream = npu.submit_stream(cmd["ctx"])
    _OPEN.append(stream)
    spec = JobSpec(cmd["queue"], Program().burn(float(cmd["seconds"])).encode(), kind="stream")
    for _ in range(int(cmd["n"])):
        stream.submit(spec)
    _tag, first = stream.next_result()
    return first


def _admin(npu: npud.client.Client, cmd: dict[str, Any]) -> Any:
    with grpc.insecure_channel(f"unix:{npu.socket_path}") as channel:
        stub = admin_pb2_grpc.AdminServiceStub(channel)
        if cmd["op"] == "rescan":
            req: Any = admin_pb2.RescanDevicesRequest()
            return list(stub.RescanDevices(req, metadata=npu.metadata, timeout=30).reopened)
        req = admin_pb2.InjectFaultRequest(kind=cmd["kind"], engine=cmd.get("engine", 0))
        return stub.InjectFault(req, metadata=npu.metadata, timeout=30).device


class _Llm:
    """The actor's npud-llm client (``--model``)."""

    def __init__(self, model: Model | None) -> None:
        self.model = model
        self.gen: Generator | None = None

    def handle(self, socket_path: str, cmd: dict[str, Any]) -> Any:
        op = cmd["op"]
        if self.model is None:
            raise ValueError("start the actor with --model for the llm ops")
        if op == "llm_open":
            backend = DaemonBackend(
                socket_path=socket_path, job_timeout_s=float(cmd.get("job_timeout_s", 0.0))
            )
            self.gen = Generator(self.model, backend, max_seq=int(cmd.get("max_seq", 64)))
            return backend.statistics()
        assert self.gen is not None, "llm_open first"
        if op == "llm_keys":
            return [KEY_PREFIX + s.pack.key for s in self.gen.plan.buffers if s.pack is not None]
        result = self.gen.generate(list(cmd["prompt"]), int(cmd["n"]), stop_at_eos=False)
        return {"tokens": list(result.tokens), "inter_token_s": list(result.stats.inter_token_s)}

    def close(self) -> None:
        if self.gen is not None:
            self.gen.close()


def serve(socket_path: str, model: Model | None = None) -> None:
    """Answer commands from stdin until ``exit`` or EOF."""
    npu: Any = None
    llm = _Llm(model)
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        try:
            if op == "exit":
                llm.close()
                if npu is not None:
                    npu.close()
                print(json.dumps({"ok": True}), flush=True)
                return
            if op == "connect":
                npu = npud.client.connect(socket_path)
                result: Any = npu.owner
            elif op == "token":  # for tests that call raw rpcs as this user
                result = npu.identity.token
            elif op == "handshakes":  # a handshake loop: n tokens asked for, none used
                for _ in range(int(cmd["n"])):
                    handshake(socket_path)
                result = int(cmd["n"])
            elif op == "whoami":
                result = {"uid": os.getuid(), "gid": os.getgid(), "groups": os.getgroups()}
            elif op == "reconnect":
                npu.close()
                npu = npud.client.connect(socket_path)
                result = npu.owner
            elif op.startswith("llm_"):
                result = llm.handle(socket_path, cmd)
            elif op in ("rescan", "inject"):
                result = _admin(npu, cmd)
            elif op == "stream":
                result = _stream(npu, cmd)
            elif op == "submit":
                result = _submit(npu, cmd)
            elif op == "call":
                method = getattr(npu, cmd["method"])
                args = [
                    bytes.fromhex(a[4:]) if isinstance(a, str) and a.startswith("hex:") else a
                    for a in cmd.get("args", [])
                ]
                kwargs = {
                    k: _ENUMS[k](v) if k in _ENUMS else v for k, v in cmd.get("kwargs", {}).items()
                }
                result = method(*args, **kwargs)
                if hasattr(result, "__next__"):  # a stream: take the first item only
                    result = next(result)
            else:
                raise ValueError(f"unknown op {op!r}")
            reply = {"ok": True, "value": plain(result)}
        except Exception as exc:  # every failure is an answer; the test decides
            reply = _error(exc)
        print(json.dumps(reply), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--uid", type=int, required=True)
    parser.add_argument("--gid", type=int, required=True)
    parser.add_argument("--groups", type=int, nargs="*", default=[])
    parser.add_argument("--model", default=None)
    parser.add_argument("socket")
    ns = parser.parse_args()
    model = load_model(Path(ns.model)) if ns.model else None
    # grpc imports its channel modules only when the first channel is made; make (and close)
    # one now, while the interpreter's files are still readable: a checkout in a directory only
    # root may enter (mktemp -d) is unreadable to the user we become.
    grpc.insecure_channel("unix:/nonexistent").close()
    os.setgroups(ns.groups)
    os.setgid(ns.gid)
    os.setuid(ns.uid)
    serve(ns.socket, model)


if __name__ == "__main__":
    main()
