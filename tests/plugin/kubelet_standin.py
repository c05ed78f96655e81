"""A kubelet stand-in built from Kubernetes' own proto, run as its own process.

``python -m tests.plugin.kubelet_standin BUILD KUBELET_DIR`` imports the Python code that
:func:`tests.plugin.kubernetes_proto.build_python` generated under BUILD from Kubernetes'
api.proto (its own process, because npud's proto declares the same ``v1beta1`` symbols and
one descriptor pool cannot hold both), serves ``Registration`` on ``KUBELET_DIR/kubelet.sock``
like the kubelet, and, when a plugin registers, does what the kubelet does: connects to the
plugin's endpoint, asks for its options and opens ListAndWatch. It reports each step as one JSON
line on stdout and takes commands as JSON lines on stdin:

* ``{"op": "allocate", "ids": [...]}`` -> ``{"event": "allocate", "envs", "mounts", "devices"}``
  or ``{"event": "allocate_error", "code", "details"}``
* ``{"op": "preferred", "available": [...], "must": [...], "size": n}`` -> ``{"event":
  "preferred", "ids": [...]}``
* ``{"op": "restart"}``: what a kubelet restart does to the directory - every plugin socket and
  kubelet.sock are removed, and a new Registration server binds a new kubelet.sock.
"""

from __future__ import annotations

import json
import os
import sys
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

_lock = threading.Lock()


def say(**event: Any) -> None:
    with _lock:
        print(json.dumps(event), flush=True)


def main() -> None:
    build, kubelet_dir = Path(sys.argv[1]), Path(sys.argv[2])
    sys.path.insert(0, str(build))
    from k8s.io.kubelet.pkg.apis.deviceplugin.v1beta1 import (  # type: ignore[import-not-found]
        api_pb2,
        api_pb2_grpc,
    )

    state: dict[str, Any] = {"stub": None, "channel": None}

    def watch(stub: Any) -> None:
        try:
            for resp in stub.ListAndWatch(api_pb2.Empty()):
                say(event="list", devices=[[d.ID, d.health] for d in resp.devices])
        except grpc.RpcError as exc:
            say(event="list_ended", code=exc.code().name)  # type: ignore[attr-defined]

    class Registration(api_pb2_grpc.RegistrationServicer):  # type: ignore[misc]
        def Register(self, request: Any, context: Any) -> Any:
            say(
                event="register",
                version=request.version,
                endpoint=request.endpoint,
                resource=request.resource_name,
                preferred=request.options.get_preferred_allocation_available,
            )
            channel = grpc.insecure_channel(f"unix:{kubelet_dir / request.endpoint}")
            stub = api_pb2_grpc.DevicePluginStub(channel)
            options = stub.GetDevicePluginOptions(api_pb2.Empty(), timeout=10)
            say(
                event="options",
                pre_start_required=options.pre_start_required,
                preferred=options.get_preferred_allocation_available,
            )
            state["stub"], state["channel"] = stub, channel
            threading.Thread(target=watch, args=(stub,), daemon=True).start()
            return api_pb2.Empty()

    def serve() -> grpc.Server:
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        api_pb2_grpc.add_RegistrationServicer_to_server(Registration(), server)
        server.add_insecure_port(f"unix:{kubelet_dir / 'kubelet.sock'}")
        server.start()
        return server

    server = serve()
    say(event="ready")
    for line in sys.stdin:
        cmd = json.loads(line)
        stub = state["stub"]
        if cmd["op"] == "allocate":
            req = api_pb2.AllocateRequest(
                container_requests=[api_pb2.ContainerAllocateRequest(devices_ids=cmd["ids"])]
            )
            try:
                (c,) = stub.Allocate(req, timeout=30).container_responses
            except grpc.RpcError as exc:
                say(event="allocate_error", code=exc.code().name, details=exc.details())  # type: ignore[attr-defined]
                continue
            say(
                event="allocate",
                envs=dict(c.envs),
                mounts=[[m.container_path, m.host_path, m.read_only] for m in c.mounts],
                devices=[[d.container_path, d.host_path] for d in c.devices],
                cdi=[d.name for d in c.cdi_devices],
            )
        elif cmd["op"] == "preferred":
            req = api_pb2.PreferredAllocationRequest(
                container_requests=[
                    api_pb2.ContainerPreferredAllocationRequest(
                        available_deviceIDs=cmd["available"],
                        must_include_deviceIDs=cmd.get("must", []),
                        allocation_size=cmd["size"],
                    )
                ]
            )
            (c,) = stub.GetPreferredAllocation(req, timeout=10).container_responses
            say(event="preferred", ids=list(c.deviceIDs))
        elif cmd["op"] == "restart":
            server.stop(grace=None).wait()
            if state["channel"] is not None:
                state["channel"].close()
            for entry in kubelet_dir.iterdir():
                if entry.is_socket():
                    os.unlink(entry)
            server = serve()
            say(event="restarted")
    server.stop(grace=None).wait()


if __name__ == "__main__":
    main()
