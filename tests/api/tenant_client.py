"""A client process driven line by line over stdin, for the tenant isolation tests.

Run as ``python -m tests.api.tenant_client SOCKET``; it connects with npud.client (joining the
tenant of ``$NPUD_TENANT_FILE`` when set) and answers each JSON command on stdin with one JSON
line on stdout:

* ``{"op": "whoami"}`` -> ``{"tenant": ..., "uid": ..., "admin": ...}``
* ``{"op": "create_context", "label": L}`` -> ``{"id": ...}`` or ``{"error": kind}``
* ``{"op": "contexts", "all": bool}`` -> ``{"ids": [...], "labels": [...]}``
* ``{"op": "alloc", "context": id, "bytes": n}`` -> ``{"id": ...}`` or ``{"error": kind}``
"""

from __future__ import annotations

import json
import sys

import npud.client
from npud.errors import NpudError


def main() -> None:
    with npud.client.connect(sys.argv[1]) as npu:
        print(json.dumps({"ready": True}), flush=True)
        for line in sys.stdin:
            cmd = json.loads(line)
            op = cmd["op"]
            try:
                if op == "whoami":
                    owner = npu.owner
                    assert owner is not None
                    out: dict[str, object] = {
                        "tenant": owner.tenant,
                        "uid": owner.uid,
                        "admin": owner.admin,
                    }
                elif op == "create_context":
                    out = {"id": npu.create_context(label=cmd["label"]).context_id}
                elif op == "contexts":
                    mine = npu.contexts(all_owners=cmd.get("all", False))
                    out = {"ids": [c.context_id for c in mine], "labels": [c.label for c in mine]}
                elif op == "alloc":
                    out = {"id": npu.create_buffer(cmd["context"], cmd["bytes"]).buffer_id}
                else:
                    out = {"error": f"unknown op {op}"}
            except NpudError as exc:
                out = {"error": type(exc).__name__, "message": str(exc)}
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
